"""`groupconv train` and `eval` under concurrency, signals, bad options and crafted checkpoint files.

Each test drives the real command (in this process, or as real subprocesses where processes
race or receive signals) on a tiny image folder and a tiny compact ShuffleNet.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from groupconv.cli import main as cli_main
from groupconv.train import evaluate_checkpoint, resolve_config, train
from groupconv.train.checkpoint import load_checkpoint
from groupconv.train.metrics import read_metrics
from groupconv.train.run_directory import LOCK_FILE, claim_run_directory

from .test_data import write_image_folder

REPO = Path(__file__).resolve().parents[1]
TINY_KWARGS = {"channels": [32, 64, 128], "units": [1, 1, 1], "groups": 2}
FAST = ["--model", "shufflenet_compact", "--model-kwargs", json.dumps(TINY_KWARGS), "--batch-size", "8",
        "--threads", "1", "--no-progress", "--lr", "0.05"]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """3 classes of 8x8 images, 8 train and 4 test each."""
    return write_image_folder(tmp_path_factory.mktemp("data") / "bars", train_per_class=8, test_per_class=4)


@pytest.fixture(scope="module")
def stopped_run(tiny_folder, tmp_path_factory):
    """A run of 2 epochs stopped after the first: its last.safetensors holds momentum buffers and a history."""
    run = tmp_path_factory.mktemp("stopped") / "run"
    config = resolve_config({"dataset": "folder", "data_dir": str(tiny_folder), "model": "shufflenet_compact",
                             "model_kwargs": TINY_KWARGS, "batch_size": 8, "epochs": 2, "threads": 1,
                             "progress": False, "lr": 0.05, "output": str(run)})
    train(config, stop_after_epoch=1, verbose=False)
    return run


def options(data_dir, output, epochs=1, seed=0) -> list[str]:
    return ["--dataset", "folder", "--data-dir", str(data_dir), "--epochs", str(epochs), "--seed", str(seed),
            "--output", str(output), *FAST]


def run_cli(argv, capsys) -> tuple[int, str, str]:
    code = cli_main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, command: str, *fragments: str) -> None:
    assert err.startswith(f"groupconv {command}: error: ") and len(err.strip().splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err


def subprocess_env() -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")


def temporary_files(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir() if ".tmp" in p.name)


def copy_run(run: Path, destination: Path) -> Path:
    destination.mkdir(parents=True)
    for name in ("config.json", "last.safetensors", "best.safetensors"):
        shutil.copy(run / name, destination / name)
    return destination


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


HOLDER = textwrap.dedent("""
    import sys, time
    from groupconv.train.config import TrainConfig
    from groupconv.train.run_directory import claim_run_directory
    with claim_run_directory(TrainConfig(output=sys.argv[1], overwrite=True), resuming=sys.argv[2] == "resume"):
        print("holding", flush=True)
        time.sleep(120)
""")


def hold_directory(run: Path, resuming: bool = False) -> subprocess.Popen:
    """A real process that claims `run` the way `train` does and keeps it."""
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(run), "resume" if resuming else "new"],
                               stdout=subprocess.PIPE, text=True, env=subprocess_env())
    assert process.stdout.readline().strip() == "holding"
    return process


# ---------------------------------------------------------------- one run per directory

def test_two_runs_started_together_on_one_directory(tiny_folder, tmp_path):
    run = tmp_path / "run"
    commands = [[sys.executable, "-m", "groupconv", "train", *options(tiny_folder, run, epochs=2, seed=seed)]
                for seed in (1, 2)]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=subprocess_env(), cwd=tmp_path) for command in commands]
    errors = [process.communicate(timeout=120)[1] for process in processes]
    assert sorted(process.returncode for process in processes) == [0, 2], errors
    winner_index = 0 if processes[0].returncode == 0 else 1
    winner, seed, err = processes[winner_index], (1, 2)[winner_index], errors[1 - winner_index]
    assert_one_line_error(err, "train", str(run))
    assert f"pid {winner.pid}" in err or "already exists" in err  # refused while it runs, or after it finished
    # The directory is the winner's alone: its config, its metrics, its checkpoints; no lock, no temporary file.
    assert json.loads((run / "config.json").read_text())["seed"] == seed
    assert [row["epoch"] for row in read_metrics(run)] == [1, 2]
    for name in ("last.safetensors", "best.safetensors"):
        _, _, info = load_checkpoint(run / name)
        assert info["config"]["seed"] == seed
    assert not (run / LOCK_FILE).exists() and temporary_files(run) == []


def test_a_held_directory_is_refused_naming_the_process(tiny_folder, stopped_run, tmp_path, capsys):
    run = copy_run(stopped_run, tmp_path / "run")
    holder = hold_directory(run, resuming=True)
    try:
        before = {p.name: p.read_bytes() for p in run.iterdir()}
        for extra in ([], ["--overwrite"]):
            code, _, err = run_cli(["train", *options(tiny_folder, run), *extra], capsys)
            assert code == 2
            assert_one_line_error(err, "train", str(run), f"in use by another process (pid {holder.pid})")
        code, _, err = run_cli(["train", "--resume", run], capsys)
        assert code == 2
        assert_one_line_error(err, "train", str(run), f"pid {holder.pid}", "cannot be resumed while")
        assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # the holder's files, untouched
    finally:
        holder.kill()  # SIGKILL: its lock stays behind, held by a process that no longer runs
        holder.wait()

    code, _, err = run_cli(["train", "--resume", run], capsys)
    assert code == 2
    assert_one_line_error(err, "train", f"locked by process {holder.pid}, which is no longer running",
                          f"delete {run / LOCK_FILE}", f"--resume {run}")
    assert (run / LOCK_FILE).exists()  # reported, not taken over
    (run / LOCK_FILE).unlink()
    code, out, err = run_cli(["train", "--resume", run], capsys)
    assert code == 0, err
    assert len(read_metrics(run)) == 2 and not (run / LOCK_FILE).exists()


def test_default_run_directories_are_unique_within_one_second(monkeypatch, tmp_path):
    import groupconv.train.run_directory as run_directory

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(run_directory.time, "strftime", lambda pattern: "20260101-000000")
    config = resolve_config({"model": "shufflenet_compact", "dataset": "digits"})
    with claim_run_directory(config, resuming=False) as first, claim_run_directory(config, resuming=False) as second:
        assert first == Path("runs/shufflenet_compact-digits-20260101-000000")
        assert second == Path("runs/shufflenet_compact-digits-20260101-000000-2")
        lock = (second / LOCK_FILE).read_text().split()
        assert lock == [str(os.getpid()), socket.gethostname()]
    assert not (first / LOCK_FILE).exists() and not (second / LOCK_FILE).exists()


# ---------------------------------------------------------------- distributed evaluation

def test_ddp_reports_the_metrics_of_the_saved_model(tiny_folder, tmp_path):
    run = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "groupconv", "train", *options(tiny_folder, run, epochs=2)]
    result = subprocess.run(command, capture_output=True, text=True, env=subprocess_env(), timeout=150, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    history = read_metrics(run)
    best_row = max(history, key=lambda row: row["test_accuracy"])  # the first of the best, as the loop keeps it
    for which, row in (("last", history[-1]), ("best", best_row)):
        # One process, the whole test set, the saved weights and running statistics.
        scored = evaluate_checkpoint(run, which, device="cpu", output=tmp_path / f"eval-{which}")
        assert scored["test_loss"] == pytest.approx(row["test_loss"], rel=1e-5, abs=1e-7), which
        assert scored["test_accuracy"] == row["test_accuracy"], which


# ---------------------------------------------------------------- options: one line, exit 2, no directory

@pytest.mark.parametrize("given, message", [
    (["--lr", "nan"], "--lr=nan must be a finite number"),
    (["--lr", "inf"], "--lr=inf must be a finite number"),
    (["--lr", "0"], "--lr=0.0 must be positive"),
    (["--momentum", "nan"], "--momentum=nan must be a finite number"),
    (["--momentum", "1.5"], "--momentum=1.5 must be below 1"),
    (["--weight-decay", "inf"], "--weight-decay=inf must be a finite number"),
    (["--weight-decay", "-0.1"], "--weight-decay=-0.1 must not be negative"),
    (["--warmup-epochs=-inf"], "--warmup-epochs=-inf must be a finite number"),
    (["--step-gamma", "nan"], "--step-gamma=nan must be a finite number"),
    (["--step-epochs", "0"], "--step-epochs=0 must be at least 1"),
    (["--label-smoothing", "nan"], "--label-smoothing=nan must be a finite number"),
    (["--clip-grad", "inf"], "--clip-grad=inf must be a finite number"),
    (["--epochs", "-3"], "--epochs=-3 must be a positive integer"),
    (["--batch-size", "0"], "--batch-size=0 must be a positive integer"),
    (["--seed", "-5"], "--seed=-5 must be an integer from 0 to 4294967295"),
    (["--seed", "4294967296"], "--seed=4294967296 must be an integer from 0"),
    (["--workers", "-1"], "--workers=-1 must not be negative"),
    (["--threads", "-2"], "--threads=-2 must not be negative"),
    (["--image-size", "-8"], "--image-size=-8 must be a positive integer"),
])
def test_every_numeric_option_is_checked(tiny_folder, tmp_path, capsys, given, message):
    code, _, err = run_cli(["train", *options(tiny_folder, tmp_path / "run"), *given], capsys)
    assert code == 2
    assert_one_line_error(err, "train", message)
    assert list(tmp_path.iterdir()) == []


def test_non_finite_values_in_a_config_file(tmp_path, capsys):
    (tmp_path / "config.json").write_text('{"lr": NaN, "momentum": Infinity}')  # Python's JSON reads these
    code, _, err = run_cli(["train", "--config", tmp_path / "config.json", "--output", tmp_path / "run"], capsys)
    assert code == 2
    assert_one_line_error(err, "train", "--lr=nan must be a finite number")
    assert not (tmp_path / "run").exists()


def test_a_mistake_found_after_the_directory_is_claimed_leaves_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default run directory: runs/<model>-folder-<time>
    code, _, err = run_cli(["train", "--dataset", "folder", "--data-dir", tmp_path / "missing", *FAST], capsys)
    assert code == 2
    assert_one_line_error(err, "train", "does not exist")
    assert list(tmp_path.iterdir()) == []
    code, _, err = run_cli(["train", "--dataset", "folder", "--data-dir", tmp_path / "missing", "--output",
                            tmp_path / "a" / "b" / "run", *FAST], capsys)
    assert code == 2 and list(tmp_path.iterdir()) == []


def test_an_unwritable_run_directory(tiny_folder, capsys):
    # An existing run directory this user may not write into; root may write anywhere, so as root the command runs
    # with an unprivileged effective user id (everything it needs is imported already).
    base = Path(tempfile.mkdtemp(prefix="groupconv-unwritable-"))
    root = os.geteuid() == 0
    try:
        base.chmod(0o755)
        run = base / "run"
        run.mkdir()
        run.chmod(0o555)
        if root:
            os.seteuid(65534)
        try:
            code, _, err = run_cli(["train", *options(tiny_folder, run)], capsys)
        finally:
            if root:
                os.seteuid(0)
        assert code == 2
        assert_one_line_error(err, "train", f"cannot write into run directory {run}", "ermission denied")
        assert list(run.iterdir()) == []
    finally:
        (base / "run").chmod(0o755)
        shutil.rmtree(base)


def test_eval_batch_size_and_unwritable_output(stopped_run, tmp_path, capsys):
    code, _, err = run_cli(["eval", stopped_run, "--batch-size", "0"], capsys)
    assert code == 2
    assert_one_line_error(err, "eval", "--batch-size=0 must be a positive integer")
    (tmp_path / "file").write_text("")
    code, _, err = run_cli(["eval", stopped_run, "--which", "last", "--output", tmp_path / "file" / "eval"], capsys)
    assert code == 2
    assert_one_line_error(err, "eval", f"cannot write the results into {tmp_path / 'file' / 'eval'}")


# ---------------------------------------------------------------- crafted checkpoints

def read_parts(path: Path) -> tuple[dict, dict]:
    """(tensors, metadata) of a checkpoint file."""
    data = path.read_bytes()
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    return load_safetensors(data), header["__metadata__"]


def nested(depth: int) -> str:
    """JSON text of a list nested `depth` deep (written directly: json.dumps itself stops at about 1000)."""
    return "[" * depth + "0" + "]" * depth


def first_momentum_key(metadata: dict) -> str:
    """The tensor key of the first SGD momentum buffer in the packed training state."""
    tree = dict(json.loads(metadata["state"])["__dict__"])
    optimizer = dict(tree["optimizer"]["__dict__"])
    per_parameter = dict(optimizer["state"]["__dict__"])
    return dict(per_parameter[0]["__dict__"])["momentum_buffer"]["__tensor__"]


def edit_state(metadata: dict, field: str, value) -> dict:
    """Metadata whose packed training state has `field` replaced by the JSON `value` (or removed: None)."""
    tree = json.loads(metadata["state"])
    items = [[k, v] for k, v in tree["__dict__"] if k != field]
    if value is not None:
        items.append([field, value])
    return {**metadata, "state": json.dumps({"__dict__": items})}


def edit_packed(metadata: dict, path: list[str], value) -> dict:
    """Replace the packed value at `path` (keys of nested __dict__ entries) by the JSON `value`."""
    tree = json.loads(metadata["state"])
    node = tree
    for key in path[:-1]:
        node = next(v for k, v in node["__dict__"] if k == key)
    for item in node["__dict__"]:
        if item[0] == path[-1]:
            item[1] = value
    return {**metadata, "state": json.dumps(tree)}


def crafted_files(source: Path) -> dict[str, bytes]:
    """Valid safetensors files that are not usable checkpoints, and files that are not safetensors at all."""
    tensors, metadata = read_parts(source)
    info = json.loads(metadata["info"])
    weight = next(k for k in tensors if k.startswith("model.") and tensors[k].dim() == 4)
    momentum = first_momentum_key(metadata)
    group = json.loads(metadata["state"])

    def file(new_tensors=None, new_metadata=None) -> bytes:
        return save_safetensors(tensors if new_tensors is None else new_tensors,
                                metadata=metadata if new_metadata is None else new_metadata)

    def without(key):
        return {k: v for k, v in tensors.items() if k != key}

    def replaced(key, value):
        return {**tensors, key: value}

    def with_info(**changes):
        return {**metadata, "info": json.dumps({**info, **changes})}

    original = source.read_bytes()
    rng = random.Random(0)
    cases = {
        "missing weight": file(without(weight)),
        "missing state tensor": file(without(momentum)),
        "weight of another shape": file(replaced(weight, torch.zeros(3, 1, 1, 1))),
        "weight as integers": file(replaced(weight, tensors[weight].to(torch.int64))),
        "momentum of another shape": file(replaced(momentum, torch.zeros(7))),
        "momentum as integers": file(replaced(momentum, tensors[momentum].to(torch.int32))),  # usable: converted
        "no metadata": save_safetensors(tensors),
        "another format": file(new_metadata={**metadata, "format": "9"}),
        "info not JSON": file(new_metadata={**metadata, "info": "{"}),
        "info a list": file(new_metadata={**metadata, "info": "[1, 2]"}),
        "num_classes a string": file(new_metadata=with_info(num_classes="3")),
        "input_shape a string": file(new_metadata=with_info(input_shape="abc")),
        "input_shape negative": file(new_metadata=with_info(input_shape=[1, -8, 8])),
        "config a list": file(new_metadata=with_info(config=[1])),
        "config with unknown option": file(new_metadata=with_info(config={**info["config"], "color": 1})),
        "config with a bad seed": file(new_metadata=with_info(config={**info["config"], "seed": -5})),
        "config with a string lr": file(new_metadata=with_info(config={**info["config"], "lr": "fast"})),
        "deep info": file(new_metadata={**metadata, "info": nested(100_000)}),
        "deep state": file(new_metadata={**metadata, "state": nested(100_000)}),
        "state nested past the limit": file(new_metadata={**metadata, "state": nested(40)}),
        "a list as the training state": file(new_metadata={**metadata, "state": "[1, 2, 3]"}),
        "state an untagged object": file(new_metadata={**metadata, "state": '{"epoch": 1}'}),
        "tensor reference to nowhere": file(new_metadata={**metadata, "state": '{"__tensor__": "state.999999"}'}),
        "tensor reference not a string": file(new_metadata={**metadata, "state": '{"__tensor__": [1]}'}),
        "array of objects": file(new_metadata={**metadata, "state": json.dumps(
            {"__ndarray__": momentum, "dtype": "object"})}),
        "dictionary with a list key": file(new_metadata={**metadata, "state": '{"__dict__": [[[1], 2]]}'}),
        "dictionary of triples": file(new_metadata={**metadata, "state": '{"__dict__": [[1, 2, 3]]}'}),
        "no epoch": file(new_metadata=edit_state(metadata, "epoch", None)),
        "epoch a string": file(new_metadata=edit_state(metadata, "epoch", "1")),
        "epoch negative": file(new_metadata=edit_state(metadata, "epoch", -1)),
        "step a float": file(new_metadata=edit_state(metadata, "step", 1.5)),
        "totals a list": file(new_metadata=edit_state(metadata, "totals", [1, 2])),
        "totals with a string": file(new_metadata=edit_state(metadata, "totals", {"__dict__": [
            ["loss_sum", "x"], ["correct", 1], ["count", 2]]})),
        "history of strings": file(new_metadata=edit_state(metadata, "history", ["row"])),
        "best accuracy a string": file(new_metadata=edit_state(metadata, "best_accuracy", "high")),
        "optimizer a number": file(new_metadata=edit_state(metadata, "optimizer", 5)),
        "scheduler a string": file(new_metadata=edit_state(metadata, "scheduler", "cosine")),
        "scheduler negative position": file(new_metadata=edit_packed(metadata, ["scheduler", "last_epoch"], -50)),
        "scheduler base_lrs strings": file(new_metadata=edit_packed(metadata, ["scheduler", "base_lrs"], ["a", "b"])),
        "optimizer groups missing": file(new_metadata=edit_packed(metadata, ["optimizer", "param_groups"], [])),
        "rng a number": file(new_metadata=edit_state(metadata, "rng", 3)),
        "rng python state garbage": file(new_metadata=edit_packed(metadata, ["rng", "python"],
                                                                  {"__tuple__": [3, [2 ** 80] * 625, None]})),
        "empty file": b"",
        "header length only": original[:8],
        "truncated header": original[:len(original) // 100],
        "truncated tensors": original[:-1000],
        "huge header length": (2 ** 62).to_bytes(8, "little") + original[8:],
        "random bytes": bytes(rng.randrange(256) for _ in range(4096)),
    }
    assert group  # the packed state parsed: the edits above act on a real training state
    header_end = 8 + int.from_bytes(original[:8], "little")
    for index in range(3):  # a few random byte flips in the JSON header
        flipped = bytearray(original)
        for _ in range(3):
            flipped[rng.randrange(8, header_end)] = rng.randrange(256)
        cases[f"header with flipped bytes {index}"] = bytes(flipped)
    return cases


def test_crafted_checkpoints_are_one_line_errors(stopped_run, tmp_path, capsys):
    """Every crafted file, resumed and evaluated: exit 0 if it happens to be usable, else one line and exit 2."""
    cases = crafted_files(stopped_run / "last.safetensors")
    # The resumed run's config.json is beside its checkpoint, so the header's info is not what a resume reads.
    must_refuse_resume = [name for name in cases if not name.startswith(("config ", "info ", "num_classes",
                                                                         "input_shape", "deep info",
                                                                         "momentum as integers"))]
    refused = {"train": [], "eval": []}
    for index, (name, data) in enumerate(cases.items()):
        run = tmp_path / f"resume{index}"
        run.mkdir()
        shutil.copy(stopped_run / "config.json", run / "config.json")
        (run / "last.safetensors").write_bytes(data)
        code, _, err = run_cli(["train", "--resume", run], capsys)
        assert code in (0, 2), name
        if code == 2:
            assert_one_line_error(err, "train")
            refused["train"].append(name)
        assert not (run / LOCK_FILE).exists() and temporary_files(run) == [], name

        single = tmp_path / f"eval{index}" / "crafted.safetensors"  # no config.json beside it: the header's is used
        single.parent.mkdir()
        single.write_bytes(data)
        code, _, err = run_cli(["eval", single, "--device", "cpu", "--output", tmp_path / "scores"], capsys)
        assert code in (0, 2), name
        if code == 2:
            assert_one_line_error(err, "eval")
            refused["eval"].append(name)
    assert sorted(set(must_refuse_resume) - set(refused["train"])) == []
    # eval reads the weights and the header, not the optimizer: those must be refused by it too.
    header_cases = [name for name in cases if name.startswith(("missing weight", "weight ", "info ", "num_classes",
                                                               "input_shape", "config ", "deep ", "no metadata",
                                                               "another format", "empty", "truncated", "huge",
                                                               "random", "state ", "tensor ", "array", "dictionary"))]
    assert sorted(set(header_cases) - set(refused["eval"])) == []


EXPLOIT = textwrap.dedent("""
    import pathlib, sys, torch

    class Payload:
        def __reduce__(self):
            return (pathlib.Path.touch, (pathlib.Path(sys.argv[2]),))

    torch.save({"model": Payload()}, sys.argv[1])
""")


def test_a_pickle_is_never_loaded(stopped_run, tmp_path, capsys):
    run = copy_run(stopped_run, tmp_path / "run")
    marker = tmp_path / "code-ran"
    subprocess.run([sys.executable, "-c", EXPLOIT, str(run / "last.safetensors"), str(marker)], check=True,
                   env=subprocess_env(), timeout=60)
    code, _, err = run_cli(["train", "--resume", run], capsys)
    assert code == 2 and "is not a groupconv checkpoint" in err
    code, _, err = run_cli(["eval", run, "--which", "last"], capsys)
    assert code == 2 and "is not a groupconv checkpoint" in err
    assert not marker.exists()


# ---------------------------------------------------------------- temporary files and signals

WRITER = textwrap.dedent("""
    import sys
    from groupconv.train.checkpoint import write_atomically
    from groupconv.train.config import TrainConfig
    from groupconv.train.run_directory import claim_run_directory
    with claim_run_directory(TrainConfig(output=sys.argv[1]), resuming=False) as run_dir:
        data = bytes(64 << 20)
        print("writing", flush=True)
        while True:
            write_atomically(run_dir / "best.safetensors", data)
""")


def test_sigterm_while_writing_removes_the_temporary_file_and_the_lock(tmp_path):
    run = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(run)], stdout=subprocess.PIPE, env=subprocess_env())
    assert process.stdout.readline().strip() == b"writing"
    time.sleep(0.5)  # a temporary file exists nearly all the time: 64 MB written, then renamed, again and again
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 128 + signal.SIGTERM
    assert temporary_files(run) == [] and not (run / LOCK_FILE).exists()


def test_sigterm_stops_a_real_training_run_with_a_checkpoint(tiny_folder, tmp_path):
    run = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "groupconv", "train", *options(tiny_folder, run, epochs=500)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env(),
                               cwd=tmp_path)
    deadline = time.monotonic() + 60
    while not (run / "metrics.json").is_file() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)  # as a job scheduler ends a job: like Ctrl-C, stop and save
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Traceback" not in err and "Continue with: groupconv train --resume" in out
    assert temporary_files(run) == [] and not (run / LOCK_FILE).exists()
    _, state, _ = load_checkpoint(run / "last.safetensors")
    assert 1 <= state["epoch"] < 500


def test_stale_temporary_files_are_removed_when_the_directory_is_claimed(stopped_run, tmp_path, capsys):
    run = copy_run(stopped_run, tmp_path / "run")
    stale = run / f".best.safetensors.tmp{dead_pid()}"
    stale.write_bytes(b"half a checkpoint")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        alive = run / f".last.safetensors.tmp{sleeper.pid}"  # a live process's file is not ours to delete
        alive.write_bytes(b"being written")
        code, _, err = run_cli(["train", "--resume", run, "--epochs", "1"], capsys)  # claims, nothing to train
        assert code == 0, err
        assert not stale.exists() and alive.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
