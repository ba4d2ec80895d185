"""groupconv.train and its commands (train, eval, experiment): end to end on tiny data, seconds each."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from groupconv.cli import build_parser
from groupconv.cli import main as cli_main
from groupconv.models.shufflenet import ShuffleUnit
from groupconv.train import CheckpointError, load_run, resolve_config, train
from groupconv.train.builders import build_model
from groupconv.train.checkpoint import load_checkpoint
from groupconv.train.metrics import COLUMNS, TIMING_COLUMNS, read_metrics

from .test_data import write_cifar10, write_image_folder

REPO = Path(__file__).resolve().parents[1]
TINY_KWARGS = '{"channels": [32, 64, 128], "units": [1, 1, 1], "groups": 2}'
TINY_MODEL = ["--model", "shufflenet_compact", "--model-kwargs", TINY_KWARGS]
FAST = [*TINY_MODEL, "--batch-size", "8", "--threads", "1", "--no-progress", "--lr", "0.05"]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """An ImageFolder tree of 3 classes, 8 train and 4 test 8x8 PNGs each (a bright bar marks the class)."""
    return write_image_folder(tmp_path_factory.mktemp("data") / "bars", train_per_class=8, test_per_class=4)


def tiny_options(data_dir, output, epochs=2) -> list[str]:
    return ["--dataset", "folder", "--data-dir", str(data_dir), "--epochs", str(epochs), "--output", str(output), *FAST]


def run_cli(argv, capsys) -> tuple[int, str, str]:
    code = cli_main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def comparable(history: list[dict]) -> list[dict]:
    """Metric rows without the wall-clock columns, which differ between identical runs."""
    return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in history]


def subprocess_env() -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")
    return env


# ---------------------------------------------------------------- help

@pytest.mark.parametrize("command", ["train", "eval", "predict", "experiment"])
def test_help_explains_every_option(command, capsys):
    parser = build_parser()
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert f"usage: groupconv {command}" in text
    subparser = parser._subparsers._group_actions[0].choices[command]
    for action in subparser._actions:
        assert action.help, f"{command} {action.option_strings or action.dest} has no help"


def test_top_level_command_has_the_training_commands():
    choices = build_parser()._subparsers._group_actions[0].choices
    assert {"train", "eval", "predict", "experiment"} <= set(choices)


# ---------------------------------------------------------------- a run end to end, replay, eval, load_run

def test_train_writes_the_run_directory_and_the_config_replays(tiny_folder, tmp_path, capsys):
    code, out, _ = run_cli(["train", *tiny_options(tiny_folder, tmp_path / "run")], capsys)
    assert code == 0, out
    run = tmp_path / "run"
    for name in ("config.json", "metrics.csv", "metrics.json", "loss.png", "accuracy.png", "last.safetensors",
                 "best.safetensors"):
        assert (run / name).is_file(), name
    history = read_metrics(run)
    assert len(history) == 2 and list(history[0]) == list(COLUMNS)
    assert (run / "metrics.csv").read_text().splitlines()[0] == ",".join(COLUMNS)
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == "shufflenet_compact" and config["image_size"] == 8 and config["num_classes"] == 3
    assert "test accuracy" in out and "parameters" in out

    # The saved config.json replays the run exactly (a fixed seed; only the output changes).
    code, _, _ = run_cli(["train", "--config", run / "config.json", "--output", tmp_path / "replay"], capsys)
    assert code == 0
    assert comparable(read_metrics(tmp_path / "replay")) == comparable(history)

    # eval of the best checkpoint reproduces the best epoch's test accuracy; confusion matrix printed and drawn.
    code, out, _ = run_cli(["eval", run, "--output", tmp_path / "eval"], capsys)
    assert code == 0
    result = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert result["test_accuracy"] == pytest.approx(max(row["test_accuracy"] for row in history))
    assert f"accuracy {result['test_accuracy']:.2%}" in out and "predicted" in out
    assert (tmp_path / "eval" / "confusion.png").stat().st_size > 1000
    assert sum(map(sum, result["confusion_matrix"])) == 12

    # load_run: the trained model in eval mode, with the checkpoint's weights.
    model, loaded_config = load_run(run, which="last")
    assert not model.training and loaded_config.model == "shufflenet_compact"
    weights, _, _ = load_checkpoint(run / "last.safetensors")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())


def test_optimizer_schedule_and_speed_options(tiny_folder, tmp_path, capsys):
    options = ["--optimizer", "adamw", "--lr", "0.01", "--schedule", "step", "--step-epochs", "1", "--step-gamma", "0.5",
               "--warmup-epochs", "0", "--weight-decay", "0.05", "--label-smoothing", "0.2", "--clip-grad", "1",
               "--channels-last", "--deterministic", "--augment", "flip", "--no-zero-init-residual"]
    code, out, err = run_cli(["train", *tiny_options(tiny_folder, tmp_path / "run", epochs=3), *options], capsys)
    assert code == 0, err
    lrs = [row["lr"] for row in read_metrics(tmp_path / "run")]
    assert lrs == pytest.approx([0.005, 0.0025, 0.00125])  # halved at every epoch boundary
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["optimizer"] == "adamw" and config["channels_last"] and config["deterministic"]
    torch.use_deterministic_algorithms(False)


def test_bf16_autocast_runs_or_says_why_not(tiny_folder, tmp_path, capsys):
    code, _, err = run_cli(["train", *tiny_options(tiny_folder, tmp_path / "run", epochs=1), "--bf16"], capsys)
    if code == 2:  # groupconv's ops must cast under autocast for this to run; until then a one-line error
        assert err.startswith("groupconv train: error: --bf16: CompactShuffleNet does not run under bfloat16 autocast")
        assert not (tmp_path / "run" / "last.safetensors").exists()
    else:
        assert code == 0 and len(read_metrics(tmp_path / "run")) == 1


def test_resume_equals_an_uninterrupted_run(tiny_folder, tmp_path, capsys, monkeypatch):
    base = {"dataset": "folder", "data_dir": str(tiny_folder), "model": "shufflenet_compact", "batch_size": 8,
            "model_kwargs": {"channels": [32, 64, 128], "units": [1, 1, 1], "groups": 2}, "epochs": 3,
            "threads": 1, "progress": False, "lr": 0.05, "seed": 3}
    straight = train(resolve_config(base, {"output": str(tmp_path / "straight")}), verbose=False)

    # Stopped after epoch 1, resumed from the command line.
    stopped = train(resolve_config(base, {"output": str(tmp_path / "stopped")}), stop_after_epoch=1, verbose=False)
    assert stopped["epochs_done"] == 1
    code, _, err = run_cli(["train", "--resume", tmp_path / "stopped", "--optimizer", "adamw"], capsys)
    assert code == 2 and "its training state does not fit" in err, err
    code, out, _ = run_cli(["train", "--resume", tmp_path / "stopped"], capsys)
    assert code == 0, out
    assert comparable(read_metrics(tmp_path / "stopped")) == comparable(straight["history"])

    # Stopped in the middle of epoch 2 by Ctrl-C (SIGINT during the 2nd of its 3 batches), then resumed.
    import groupconv.train.loop as loop

    calls, real_augment = [0], loop.augment

    def augment_then_interrupt(*args):
        calls[0] += 1
        if calls[0] == 3 + 2:
            os.kill(os.getpid(), signal.SIGINT)
        return real_augment(*args)

    monkeypatch.setattr(loop, "augment", augment_then_interrupt)
    code, out, _ = run_cli(["train", "--config", tmp_path / "straight" / "config.json", "--output",
                            tmp_path / "interrupted"], capsys)
    assert code == 130 and "Continue with: groupconv train --resume" in out
    _, state, _ = load_checkpoint(tmp_path / "interrupted" / "last.safetensors")
    assert (state["epoch"], state["step"]) == (1, 2)
    monkeypatch.setattr(loop, "augment", real_augment)
    code, out, _ = run_cli(["train", "--resume", tmp_path / "interrupted"], capsys)
    assert code == 0, out
    assert comparable(read_metrics(tmp_path / "interrupted")) == comparable(straight["history"])
    final, _, _ = load_checkpoint(tmp_path / "interrupted" / "last.safetensors")
    expected, _, _ = load_checkpoint(tmp_path / "straight" / "last.safetensors")
    assert final.keys() == expected.keys() and all(torch.equal(final[k], expected[k]) for k in final)


def test_ctrl_c_in_a_real_process_saves_a_checkpoint_and_exits_cleanly(tiny_folder, tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "groupconv", "train", *tiny_options(tiny_folder, run, epochs=500)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=subprocess_env(), cwd=tmp_path)
    deadline = time.monotonic() + 60
    while not (run / "metrics.json").is_file() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Traceback" not in err and "Continue with: groupconv train --resume" in out
    _, state, info = load_checkpoint(run / "last.safetensors")
    assert 1 <= state["epoch"] < 500 and info["model"] == "shufflenet_compact"


# ---------------------------------------------------------------- checkpoints

KILLED_WRITER = textwrap.dedent("""
    import sys, torch
    from groupconv.train.checkpoint import save_checkpoint
    path, step = sys.argv[1], 0
    big = torch.arange(4_000_000, dtype=torch.float32)
    print("writing", flush=True)
    while True:
        step += 1
        save_checkpoint(path, {"weight": big + step}, {"step": step}, {"model": "test"})
""")


def test_a_process_killed_while_writing_leaves_a_loadable_checkpoint(tmp_path):
    path = tmp_path / "last.safetensors"
    for delay in (0.4, 1.0):
        process = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path)], stdout=subprocess.PIPE,
                                   env=subprocess_env())
        assert process.stdout.readline().strip() == b"writing"
        time.sleep(delay)
        process.kill()  # SIGKILL: no handler, no cleanup, whatever write was under way is cut short
        process.wait()
        weights, state, info = load_checkpoint(path)
        assert info == {"model": "test"} and state["step"] >= 1
        # Weights and state come from the same complete write: the weights of exactly that step.
        assert torch.equal(weights["weight"], torch.arange(4_000_000, dtype=torch.float32) + state["step"])


def test_training_state_round_trips_without_pickle(tmp_path):
    from groupconv.train.checkpoint import save_checkpoint

    import numpy as np

    optimizer = {"state": {0: {"momentum_buffer": torch.ones(3)}}, "param_groups": [{"lr": 0.1, "params": [0]}]}
    state = {"optimizer": optimizer,
             "rng": {"numpy": np.random.get_state(), "torch": torch.get_rng_state()}, "pair": (1, 2.5, None, "x")}
    save_checkpoint(tmp_path / "c.safetensors", {"w": torch.zeros(2)}, state, {"model": "m"})
    _, loaded, _ = load_checkpoint(tmp_path / "c.safetensors")
    assert loaded["optimizer"]["state"][0]["momentum_buffer"].tolist() == [1, 1, 1]
    assert loaded["pair"] == (1, 2.5, None, "x") and loaded["optimizer"]["param_groups"][0]["params"] == [0]
    assert np.array_equal(loaded["rng"]["numpy"][1], state["rng"]["numpy"][1])
    assert torch.equal(loaded["rng"]["torch"], state["rng"]["torch"])


# ---------------------------------------------------------------- bad input: exit 2, one line, nothing destroyed

def test_existing_run_directory_is_refused_and_left_intact(tiny_folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert run_cli(["train", *tiny_options(tiny_folder, run, epochs=1)], capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    code, _, err = run_cli(["train", *tiny_options(tiny_folder, run, epochs=1)], capsys)
    assert code == 2 and f"run directory {run} already exists" in err and "--resume" in err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    code, _, _ = run_cli(["train", *tiny_options(tiny_folder, run, epochs=1), "--overwrite"], capsys)
    assert code == 0


@pytest.mark.parametrize("options, message", [
    (["--epochs", "0"], "--epochs=0 must be a positive integer"),
    (["--lr", "-1"], "--lr=-1.0 must be positive"),
    (["--label-smoothing", "1.5"], "--label-smoothing=1.5"),
    (["--image-size", "0"], "--image-size=0 must be a positive integer"),
    (["--model", "shufflenet_g3_wd3"], "--model=shufflenet_g3_wd3: unknown model"),
    (["--model", "grouped_cnn1d_mnist1d"], "takes 1-D signals but --dataset=folder holds images"),
    (["--model-kwargs", '{"groups": 5}'], "cannot build --model=shufflenet_compact"),
    (["--data-dir", "/no/such/dir"], "image folder /no/such/dir does not exist"),
    (["--resume", "/no/such/run"], "--resume=/no/such/run"),
    (["--config", "/no/such/config.json"], "cannot read config file /no/such/config.json"),
    (["--device", "tpu"], "--device='tpu' is not a device"),
    (["--clip-grad", "-1"], "--clip-grad=-1.0 must not be negative"),
])
def test_bad_options_are_one_line_errors(tiny_folder, tmp_path, capsys, options, message):
    argv = [*tiny_options(tiny_folder, tmp_path / "run", epochs=1), *options]
    code, _, err = run_cli(["train", *argv], capsys)
    assert code == 2
    assert err.startswith("groupconv train: error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "last.safetensors").exists()


def test_bad_config_files(tmp_path, capsys):
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "typo.json").write_text('{"epoch": 3}')
    (tmp_path / "types.json").write_text('{"epochs": "three"}')
    for name, message in (("broken.json", "is not valid JSON"), ("typo.json", "unknown options ['epoch']"),
                          ("types.json", "--epochs='three' must be an integer")):
        code, _, err = run_cli(["train", "--config", tmp_path / name, "--output", tmp_path / "run"], capsys)
        assert code == 2 and message in err, err


def test_bad_data_files(tiny_folder, tmp_path, capsys):
    archive = write_cifar10(tmp_path / "cifar")
    archive.write_bytes(archive.read_bytes()[:200])
    code, _, err = run_cli(["train", "--dataset", "cifar10", "--data-dir", tmp_path / "cifar", "--output",
                            tmp_path / "run"], capsys)
    assert code == 2 and "cifar-10-python.tar.gz" in err
    code, _, err = run_cli(["train", "--dataset", "cifar10", "--data-dir", tmp_path / "none", "--output",
                            tmp_path / "run"], capsys)
    assert code == 2 and "download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz and put it there" in err


def test_eval_refuses_a_checkpoint_of_another_model_or_class_count(tiny_folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert run_cli(["train", *tiny_options(tiny_folder, run, epochs=1)], capsys)[0] == 0
    code, _, err = run_cli(["eval", run, "--model", "shufflenet_g1_wd4"], capsys)
    assert code == 2 and "was made for model 'shufflenet_compact' with 3 classes" in err, err
    four = write_image_folder(tmp_path / "four", classes=("a", "b", "c", "d"))
    code, _, err = run_cli(["eval", run, "--data-dir", four], capsys)
    assert code == 2 and "was made for 3 classes but --dataset=folder has 4" in err, err
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00" * 64)
    code, _, err = run_cli(["eval", tmp_path / "garbage.safetensors"], capsys)
    assert code == 2 and "is not a groupconv checkpoint" in err
    code, _, err = run_cli(["eval", tmp_path / "nothing"], capsys)
    assert code == 2 and "does not exist" in err
    with pytest.raises(CheckpointError):
        load_run(tmp_path / "nothing")


def test_the_real_entry_point_prints_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "groupconv", "train", "--dataset", "folder", "--data-dir",
                             str(tmp_path / "missing"), "--output", str(tmp_path / "run")],
                            capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert result.returncode == 2
    expected = f"groupconv train: error: image folder {tmp_path / 'missing'} does not exist or is not a directory"
    assert result.stderr.strip() == expected


# ---------------------------------------------------------------- many processes

def test_two_process_ddp_on_cpu(tiny_folder, tmp_path):
    run = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "groupconv", "train", *tiny_options(tiny_folder, run, epochs=2)]
    result = subprocess.run(command, capture_output=True, text=True, env=subprocess_env(), timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("training shufflenet_compact") == 1  # rank 0 logs alone
    assert "2 process(es)" in result.stdout
    history = read_metrics(run)
    assert [row["epoch"] for row in history] == [1, 2]
    _, state, _ = load_checkpoint(run / "last.safetensors")
    assert state["epoch"] == 2
    # Each epoch saw every training image once across the two processes: 24 images, 3 batches of 8.
    assert history[-1]["images_per_second"] > 0 and len(list(tmp_path.glob("ddp*"))) == 1


@pytest.mark.parametrize("zero_init", [True, False])
def test_build_model_asks_the_model_to_zero_its_residual_branches(zero_init):
    config = resolve_config({"model": "shufflenet_compact", "zero_init_residual": zero_init})
    model = build_model(config, num_classes=10, in_chans=1, input_shape=(1, 16, 16))
    residual = [m for m in model.modules() if isinstance(m, ShuffleUnit) and not m.downsample]
    assert residual
    assert all((torch.count_nonzero(unit.expand_bn3.weight) == 0) == zero_init for unit in residual)
