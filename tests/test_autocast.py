"""Autocast: groupconv's ops follow torch's rules (a conv casts its operands to the region's dtype, float64 aside;
batch norm takes what it is given and computes in float32), so a model gives outputs of the dtype its torch twin
gives, and close values."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import groupconv
from groupconv.benchmarks.twins import to_torch_layers
from groupconv.cli import main as cli_main
from groupconv.models import create_model

from .test_data import write_image_folder

# bfloat16 keeps 8 bits of mantissa: activations after a dozen layers differ from the twin's by rounding
TOLERANCE = dict(rtol=0.1, atol=0.1)


def assert_like_twin(out: torch.Tensor, expected: torch.Tensor) -> None:
    assert out.dtype == expected.dtype
    torch.testing.assert_close(out.float(), expected.float(), **TOLERANCE)


@pytest.mark.parametrize("shuffle_groups", [1, 2])
def test_conv_casts_its_operands_as_torchs_does(shuffle_groups):
    x, w, b = torch.randn(2, 4, 6, 6), torch.randn(6, 2, 3, 3), torch.randn(6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for inputs in ((x, w, b), (x.bfloat16(), w, b), (x, w.bfloat16(), None), (x.double(), w.double(), None)):
            out = groupconv.conv2d(*inputs, groups=2, shuffle_groups=shuffle_groups)
            shuffled = torch.channel_shuffle(inputs[0], shuffle_groups) if shuffle_groups > 1 else inputs[0]
            assert_like_twin(out, F.conv2d(shuffled, *inputs[1:], groups=2))


def test_batch_norm_follows_torchs():
    x = torch.randn(2, 4, 5, 5)
    running = (torch.zeros(4), torch.ones(4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for input in (x, x.bfloat16()):
            out = groupconv.ops.batch_norm(input, *map(torch.clone, running), torch.ones(4), torch.zeros(4),
                                           training=True, residual=input, relu=True)
            expected = F.relu(F.batch_norm(input, *map(torch.clone, running), torch.ones(4), torch.zeros(4),
                                           training=True) + input)
            assert_like_twin(out, expected)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("training", [False, True])
def test_zoo_shufflenet_under_autocast_is_like_its_torch_twin(channels_last, training):
    torch.manual_seed(0)
    model = create_model("shufflenet_g3_wd4", num_classes=10, small_input=True).train(training)
    twin = to_torch_layers(model)
    x = torch.randn(4, 3, 16, 16)
    if channels_last:
        model, twin, x = (t.to(memory_format=torch.channels_last) for t in (model, twin, x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, expected = model(x), twin(x)
    assert_like_twin(out, expected)
    out.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == p.dtype for p in model.parameters() if p.requires_grad)


def test_accelerated_torch_model_under_autocast_is_like_the_original():
    torch.manual_seed(0)
    original = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1, groups=4), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 5)).eval()
    accelerated = groupconv.accelerate(copy.deepcopy(original))
    x = torch.randn(2, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert_like_twin(accelerated(x), original(x))


def test_train_bf16_runs_an_epoch(tmp_path, capsys):
    data = write_image_folder(tmp_path / "bars", train_per_class=8, test_per_class=4)
    model = ["--model", "shufflenet_compact", "--model-kwargs",
             '{"channels": [32, 64, 128], "units": [1, 1, 1], "groups": 2}']
    code = cli_main(["train", "--dataset", "folder", "--data-dir", str(data), "--epochs", "1", "--output",
                     str(tmp_path / "run"), *model, "--batch-size", "8", "--threads", "1", "--no-progress", "--bf16"])
    _, err = capsys.readouterr()
    assert code == 0, err
    assert (tmp_path / "run" / "last.safetensors").exists()
