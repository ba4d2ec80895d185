"""`groupconv train --group-parallel P`: AlexNet split over two torchrun processes (Krizhevsky et al. 2012) against
one process, on a tiny image folder (4 training images, one step); and the option's errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from groupconv.cli import main as cli_main
from groupconv.models import create_model
from groupconv.train import resolve_config, train
from groupconv.train.builders import build_model, seed_everything
from groupconv.train.checkpoint import load_checkpoint
from groupconv.train.config import ConfigError
from groupconv.train.distributed import Distributed
from groupconv.train.group_parallel import check_group_parallel, nothing_to_shard
from groupconv.train.metrics import read_metrics

from .test_data import write_image_folder
from .test_train import subprocess_env

# Dropout off: each process draws its own mask, so only then does the split run compute what one process does.
# No augmentation and one step (4 images, batch 4) of SGD with momentum: weights, momentum and loss comparable.
OPTIONS = ["--model", "alexnet", "--model-kwargs", '{"dropout": 0.0}', "--dataset", "folder", "--epochs", "1",
           "--batch-size", "4", "--augment", "none", "--lr", "0.001", "--warmup-epochs", "0", "--threads", "1",
           "--no-progress"]
TOLERANCE = 1e-4  # float32, sums in another order on each side


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """2 classes, 2 train and 1 test 16x16 image each: the smallest AlexNet's small-input variant takes."""
    return write_image_folder(tmp_path_factory.mktemp("data") / "bars", classes=("a", "b"), train_per_class=2,
                              test_per_class=1, size=16)


def options(data_dir, output) -> list[str]:
    return [*OPTIONS, "--data-dir", str(data_dir), "--output", str(output)]


def test_alexnet_over_two_processes_trains_like_one(tiny_folder, tmp_path, capsys):
    split = tmp_path / "split"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "groupconv", "train", *options(tiny_folder, split), "--group-parallel", "2"]
    result = subprocess.run(command, capture_output=True, text=True, env=subprocess_env(), timeout=180, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 processes (1 data parallel x 2 group parallel)" in result.stdout
    assert result.stdout.count("group parallelism over 2 ranks") == 1  # the plan, printed by rank 0 alone
    assert json.loads((split / "config.json").read_text())["group_parallel"] == 2

    whole = tmp_path / "whole"
    config = resolve_config({"model": "alexnet", "model_kwargs": {"dropout": 0.0}, "dataset": "folder",
                             "data_dir": str(tiny_folder), "epochs": 1, "batch_size": 4, "augment": "none",
                             "lr": 0.001, "warmup_epochs": 0.0, "threads": 1, "progress": False,
                             "output": str(whole)})
    train(config, verbose=False)
    split_weights, split_state, _ = load_checkpoint(split / "last.safetensors")
    whole_weights, whole_state, _ = load_checkpoint(whole / "last.safetensors")
    # The checkpoint is the single-process model's: same keys and shapes, and after the step the same values.
    assert sorted(split_weights) == sorted(whole_weights)
    seed_everything(config.seed, deterministic=False)
    initial = build_model(config, 2, 1, (1, 16, 16)).state_dict()
    moved = max((whole_weights[key] - initial[key]).abs().max().item() for key in whole_weights)
    assert moved > 1e-5  # (the step changed the weights, so equal weights mean something)
    for key, value in whole_weights.items():
        assert split_weights[key].shape == value.shape, key
        assert torch.allclose(split_weights[key], value, atol=TOLERANCE, rtol=0), key
    # The optimizer's momentum is saved whole too, so --resume (in any number of processes) continues it.
    for index, buffers in whole_state["optimizer"]["state"].items():
        saved = split_state["optimizer"]["state"][index]["momentum_buffer"]
        assert saved.shape == buffers["momentum_buffer"].shape
        assert torch.allclose(saved, buffers["momentum_buffer"], atol=TOLERANCE, rtol=0)
    split_row, whole_row = read_metrics(split)[0], read_metrics(whole)[0]
    assert split_row["train_loss"] == pytest.approx(whole_row["train_loss"], abs=TOLERANCE)  # the one step's loss
    assert split_row["test_accuracy"] == whole_row["test_accuracy"]

    # `groupconv eval` reads the run in one process and reports what the training reported for the saved model.
    assert cli_main(["eval", str(split), "--which", "last", "--device", "cpu", "--output", str(tmp_path / "eval")]) == 0
    capsys.readouterr()
    evaluated = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert evaluated["test_accuracy"] == pytest.approx(split_row["test_accuracy"])
    assert evaluated["test_loss"] == pytest.approx(split_row["test_loss"], abs=TOLERANCE)


def test_group_parallel_needs_processes_it_divides():
    cpu = torch.device("cpu")
    config = resolve_config({"group_parallel": 2})
    with pytest.raises(ConfigError, match=r"--group-parallel=2 .* single process: start it with torchrun "
                                          r"--nproc-per-node 2"):
        check_group_parallel(config, Distributed(0, 1, 0, cpu))
    with pytest.raises(ConfigError, match=r"--group-parallel=2 does not divide the number of processes \(3\)"):
        check_group_parallel(config, Distributed(0, 3, 0, cpu))
    check_group_parallel(config, Distributed(0, 4, 0, cpu))  # 2 data parallel x 2 group parallel
    with pytest.raises(ConfigError, match="--group-parallel=0 must be a positive integer"):
        resolve_config({"group_parallel": 0})


def test_group_parallel_in_one_process_is_a_one_line_error(tiny_folder, tmp_path, capsys):
    code = cli_main(["train", *options(tiny_folder, tmp_path / "run"), "--group-parallel", "2"])
    _, err = capsys.readouterr()
    assert code == 2
    assert err.strip().count("\n") == 0 and "groupconv train: error: --group-parallel=2" in err
    assert not (tmp_path / "run").exists()


def test_a_model_with_nothing_to_split_is_recognised():
    assert not nothing_to_shard(create_model("alexnet", num_classes=2, small_input=True), 2)
    # Odd channel counts: no layer divides over 2 processes, every one would run whole.
    odd = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(180, 3))
    assert nothing_to_shard(odd, 2)
