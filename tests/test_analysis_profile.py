"""Per-layer timing against the roofline (groupconv.analysis.profile) and `groupconv profile`."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import groupconv.nn as gnn
from groupconv.analysis import MachineCeilings, plot_profile, profile_layers
from groupconv.cli import main

CEILINGS = MachineCeilings(500.0, 50.0, "test ceilings")


@pytest.fixture
def one_thread():
    """Steady timings on a shared machine; the thread count is put back afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_model():
    return torch.nn.Sequential(
        gnn.Conv2d(16, 32, 3, padding=1, bias=False), torch.nn.BatchNorm2d(32), torch.nn.ReLU(inplace=True),
        gnn.Conv2d(32, 32, 3, padding=1, groups=8, bias=False), gnn.DepthwiseConv2d(32, 3, padding=1, bias=False),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 10))


def test_every_layer_is_timed_forward_and_backward_next_to_its_floor(one_thread):
    model = small_model()
    running_mean = model[1].running_mean.clone()
    table = profile_layers(model, torch.randn(4, 16, 12, 12), CEILINGS, repeats=2, warmup=1)
    assert [layer.cost.name for layer in table.layers] == [str(i) for i in range(8)]
    for layer in table.layers:
        assert layer.forward_seconds > 0 and layer.backward_seconds >= 0
        if layer.cost.kind in ("conv", "linear"):
            assert layer.backward_seconds > 0 and layer.roofline_seconds > 0
    first, grouped = table.layers[0], table.layers[3]
    # The first conv's input needs no gradient: its backward is the weight gradient only (one product).
    assert first.backward.multiply_adds == first.cost.multiply_adds
    # Later convs compute the input and the weight gradient: two products the size of the forward.
    assert grouped.backward.multiply_adds == 2 * grouped.cost.multiply_adds == 2 * 4 * 144 * 32 * 4 * 9
    assert grouped.backward_roofline_seconds == pytest.approx(
        CEILINGS.seconds(2 * grouped.backward.multiply_adds, grouped.backward.traffic_bytes))
    record = grouped.record()
    assert record["times_above_roofline"] == pytest.approx(grouped.seconds / grouped.roofline_seconds, rel=1e-3)
    shares = table.by_family()
    assert {s["family"] for s in shares} == {"dense", "grouped", "depthwise", "linear", "other layers"}
    assert sum(s["flops_share"] for s in shares) == pytest.approx(1)
    assert sum(s["measured_share"] for s in shares) == pytest.approx(1)
    # Profiling leaves the model as it was: BatchNorm statistics and gradients untouched.
    assert torch.equal(model[1].running_mean, running_mean)
    assert all(p.grad is None for p in model.parameters())
    text = table.format()
    assert "x floor" in text and "grouped" in text and "test ceilings" in text


def test_profile_plot_has_the_promised_size(tmp_path, one_thread):
    table = profile_layers(small_model(), torch.randn(2, 16, 8, 8), CEILINGS, repeats=1, warmup=0)
    plot_profile(table, tmp_path / "profile.png", width_pixels=1000, height_pixels=400)
    image = Image.open(tmp_path / "profile.png").convert("RGB")
    assert image.size == (1000, 400)
    pixels = np.asarray(image).reshape(-1, 3)
    assert pixels.var() > 0 and len({tuple(p) for p in pixels[::50]}) > 10


def test_bad_repeats_are_errors():
    with pytest.raises(ValueError, match="repeats=0 must be a positive integer"):
        profile_layers(small_model(), torch.randn(1, 16, 4, 4), CEILINGS, repeats=0)


def test_cli_profile_prints_ratios_and_writes_plot_and_json(tmp_path, capsys):
    threads = torch.get_num_threads()
    plot, document = tmp_path / "p.png", tmp_path / "p.json"
    try:
        code = main(["profile", "shufflenet_g3_wd4", "--batch-size", "2", "--repeats", "1", "--threads", "1",
                     "--peak-gflops", "500", "--bandwidth-gbs", "66.8", "--plot", str(plot), "--json", str(document)])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "shufflenet_g3_wd4, input 2x3x32x32, 1 threads" in out and "x floor" in out
    assert Image.open(plot).size == (1400, 560)
    data = json.loads(document.read_text())
    assert data["machine"]["peak_gflops"] == 500.0
    assert all(layer["forward_ms"] > 0 for layer in data["layers"] if layer["kind"] == "conv")


@pytest.mark.parametrize("argv, message", [
    (["profile", "shufflenet_g3_wd4", "--repeats", "0"], "repeats=0"),
    (["profile", "shufflenet_g3_wd4", "--threads", "0"], "--threads=0"),
    (["profile", "alexnet", "--input-size", "16", "--batch-size", "1"], "model alexnet cannot run on an input"),
])
def test_cli_profile_bad_input(argv, message, capsys):
    assert main(argv + ["--peak-gflops", "1", "--bandwidth-gbs", "1", "--plot", ""]) == 2
    err = capsys.readouterr().err
    assert err.startswith("groupconv profile: error: ") and message in err, err
