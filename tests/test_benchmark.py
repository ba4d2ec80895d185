"""The benchmarks' ingredients (zoo layer shapes, the torch.nn twin of a model) and the command, at tiny sizes."""

import csv

import pytest
import torch

import groupconv.nn as gnn
from groupconv import models
from groupconv.benchmarks.models import ModelResult
from groupconv.benchmarks import hidden_shapes as hidden
from groupconv.benchmarks.same_flops import same_flops_pair
from groupconv.benchmarks.shapes import LayerShape, zoo_layer_shapes
from groupconv.benchmarks.twins import to_torch_layers
from groupconv.ops.tuning import memory
from groupconv import ops
from groupconv.cli import main


def test_zoo_layer_shapes_come_from_the_models():
    shapes = zoo_layer_shapes(["shufflenet_g8_w1"])
    assert {s.kind for s in shapes} == {"depthwise", "pointwise-grouped"}
    assert all(s.groups > 1 for s in shapes)
    assert len({s.key() for s in shapes}) == len(shapes)  # distinct
    first_depthwise = next(s for s in shapes if s.kind == "depthwise")
    # stage 2, unit 1 of ShuffleNet 1x g=8: bottleneck 384 // 4 = 96 channels at 56x56, stride 2, shuffled by 8
    assert (first_depthwise.in_channels, first_depthwise.stride, first_depthwise.shuffle_groups) == (96, (2, 2), 8)
    assert (first_depthwise.height, first_depthwise.width) == (56, 56)
    resnext = zoo_layer_shapes(["resnext29_32x4d"])
    assert {s.kind for s in resnext} == {"grouped"} and all(s.groups == 32 for s in resnext)


def test_layer_shape_costs_agree_with_the_layers():
    for shape in zoo_layer_shapes(["shufflenet_g3_wd4", "resnext29_32x4d"]):
        layer = shape.groupconv_layer()
        assert shape.multiply_adds(batch=2) == 2 * layer.multiply_adds((shape.height, shape.width))
        with torch.no_grad():
            out = layer(torch.empty(1, shape.in_channels, shape.height, shape.width))
        assert shape.output_size() == tuple(out.shape[2:])


def test_torch_twin_computes_the_same_function_without_groupconv_layers():
    torch.manual_seed(0)
    model = models.create_model("shufflenet_g3_wd4", num_classes=10, small_input=True).eval()
    twin = to_torch_layers(model).eval()
    assert not any(isinstance(m, gnn.Conv2d) for m in twin.modules())
    assert sum(isinstance(m, torch.nn.ChannelShuffle) for m in twin.modules()) == 16  # one per unit
    assert any(isinstance(m, gnn.Conv2d) for m in model.modules())  # the original is untouched
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), model(x), rtol=1e-4, atol=1e-4)  # gemm vs oneDNN rounding


def test_benchmark_command_writes_tables_and_plot(tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["benchmark", "layers", "sweep", "shuffle", "models", "--models", "shufflenet_g8_wd4", "--batch", "2",
            "--repeats", "1", "--limit", "2", "--image-size", "32", "--peak-gflops", "500", "--bandwidth-gbs", "60",
            "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "geometric-mean speedup" in text and "shufflenet_g8_wd4" in text
    with (out / "layers.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {r["passes"] for r in rows} == {"forward", "forward+backward"}
    assert all(float(r["groupconv_ms"]) > 0 and float(r["floor_ms"]) > 0 for r in rows)
    if memory.can_measure():  # forward+backward's peak memory against torch's, in both layouts
        assert all((r["peak_memory_vs_torch"] == "") == (r["passes"] == "forward") for r in rows)
        assert all(float(r["peak_memory_vs_torch_channels_last"]) > 0 for r in rows if r["passes"] != "forward")
        assert "peak memory: forward+backward holds more than torch's in the same layout on" in text
    with (out / "sweep.csv").open() as f:
        assert [int(r["groups"]) for r in csv.DictReader(f)][:9] == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert (out / "sweep.png").stat().st_size > 10_000
    with (out / "models.csv").open() as f:
        (row,) = list(csv.DictReader(f))
    assert row["model"] == "shufflenet_g8_wd4" and all(
        float(row[f"{who}{layout}_{mode}_images_per_second"]) > 0
        for who in ("torch", "groupconv") for layout in ("", "_cl") for mode in ("train", "infer"))
    with (out / "shuffle.csv").open() as f:
        assert [r["unit"][:20] for r in csv.DictReader(f)] == ["ShuffleNet 1x g=3 un", "ShuffleNet 1x g=8 un"]


def test_benchmark_command_rejects_bad_options(capsys):
    for argv, message in ((["benchmark", "--batch", "0"], "--batch=0 must be at least 1"),
                          (["benchmark", "--models", "vgg16"], "--models: unknown model(s) vgg16"),
                          (["benchmark", "models", "--device", "tpu"], "--device=tpu: only cpu, or cuda"),
                          (["benchmark", "group-parallel", "--group-parallel", "0"],
                           "--group-parallel=0 must be at least 1"),
                          (["benchmark", "group-parallel", "--batch", "3"],
                           "group-parallel: --batch=3 must divide by --group-parallel=2"),
                          (["benchmark", "layers", "--hidden-shapes", "0"], "--hidden-shapes=0 must be at least 1"),
                          (["benchmark", "sweep", "--hidden-shapes", "2"],
                           "--hidden-shapes=2 draws layer shapes: name the layers section"),
                          (["benchmark", "layers", "--device", "cuda"],
                           "times whole models only" if torch.cuda.is_available() else "--device=cuda: only cpu")):
        try:
            main(argv)
        except SystemExit as exit:
            assert exit.code == 2
        assert message in capsys.readouterr().err


def test_model_speedups_take_groupconv_in_its_faster_layout():
    result = ModelResult("shufflenet_g8_w1", (3, 224, 224), 32, 30.0, 35.0, 33.0, 40.0, 1, 1, 1, 1)
    assert result.train_speedup == pytest.approx(40 / 30) and result.train_speedup_over_best_torch == pytest.approx(40 / 35)


def test_same_flops_benchmark_takes_the_ratio_round_by_round(tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["benchmark", "same-flops", "--models", "shufflenet_g8_wd4", "shufflenet_g1_wd4", "--batch", "2",
            "--rounds", "4", "--image-size", "32", "--out", str(out)]
    assert main(argv) == 0
    assert "groupconv g=8 (its faster layout) / stock g=1 NCHW:" in capsys.readouterr().out
    with (out / "same_flops.csv").open() as f:
        (row,) = list(csv.DictReader(f))
    assert (row["g1_model"], row["g8_model"], row["rounds"]) == ("shufflenet_g1_wd4", "shufflenet_g8_wd4", "4")
    speeds = {key: float(value) for key, value in row.items() if key.endswith("_images_per_second")}
    assert len(speeds) == 5 and all(value > 0 for value in speeds.values())
    assert float(row["speedup_low"]) <= float(row["speedup"]) <= float(row["speedup_high"])
    assert 0 <= int(row["rounds_at_least_even"]) <= 4


def test_group_parallel_section_compares_one_process_ddp_and_the_split(tmp_path, capsys):
    argv = ["benchmark", "group-parallel", "--models", "shufflenet_g8_wd4", "--batch", "4", "--repeats", "1",
            "--image-size", "16", "--out", str(tmp_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "groupconv benchmark:" not in out  # a named-only section
    assert "shufflenet_g8_wd4, global batch 4, median of 1 steps" in out
    assert all(mode in out for mode in ("one process", "DDP", "group parallel"))
    with (tmp_path / "group_parallel.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(row["mode"], row["rank"]) for row in rows] == [("one process", "0"), ("DDP", "0"), ("DDP", "1"),
                                                           ("group parallel", "0"), ("group parallel", "1")]
    by_mode = {row["mode"]: row for row in rows}
    # Half of every layer's filters on each rank; DDP keeps the whole model on each.
    assert int(by_mode["group parallel"]["parameter_bytes"]) < 0.6 * int(by_mode["one process"]["parameter_bytes"])
    assert by_mode["DDP"]["parameter_bytes"] == by_mode["one process"]["parameter_bytes"]
    assert int(by_mode["group parallel"]["collective_bytes"]) > 0


def test_same_flops_needs_a_g1_and_g8_of_one_width(capsys):
    assert same_flops_pair(["resnext29_32x4d", "shufflenet_g8_w1", "shufflenet_g1_w1"]) == (
        "shufflenet_g1_w1", "shufflenet_g8_w1")
    assert same_flops_pair(["shufflenet_g8_w1", "shufflenet_g1_wd4"]) is None
    try:
        main(["benchmark", "same-flops", "--models", "shufflenet_g8_w1"])
    except SystemExit as exit:
        assert exit.code == 2
    assert "same-flops needs a ShuffleNet g=8 and the g=1 of its width in --models" in capsys.readouterr().err


def test_named_only_sections_run_when_named(tmp_path, capsys):
    argv = ["benchmark", "dispatch", "batch-norm", "triton", "--models", "shufflenet_g8_wd4", "--batch", "1",
            "--repeats", "1", "--out", str(tmp_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "groupconv benchmark:" not in out  # the default sections' header: none of them ran
    assert "per-call overhead on a tiny conv" in out and "dispatch cost" in out
    assert "NCHW: forward+backward speedup over torch's BN/add/ReLU, geometric mean" in out
    if not torch.cuda.is_available():
        assert "the Triton backend runs on CUDA devices and this machine has none" in out
    with pytest.raises(SystemExit):
        main(["benchmark", "sweeps"])
    assert "'sweeps' is not a benchmark: choose from layers, sweep, shuffle, models, same-flops, dispatch" in (
        capsys.readouterr().err)


def test_hidden_shapes_are_seeded_real_network_like_and_not_the_zoos():
    zoo = {shape.key() for shape in zoo_layer_shapes()}
    shapes = hidden.hidden_shapes(12, seed=3, exclude=zoo)
    assert shapes == hidden.hidden_shapes(12, seed=3, exclude=zoo) != hidden.hidden_shapes(12, seed=4, exclude=zoo)
    assert len({(s.layer.key(), s.batch) for s in shapes}) == 12
    assert {s.layer.kind for s in shapes} == set(hidden.KINDS)
    for s in shapes:
        layer = s.layer
        assert layer.key() not in zoo and layer.groups > 1 and 1 <= s.batch <= 32
        assert layer.in_channels % layer.groups == 0 == layer.out_channels % layer.groups
        assert layer.kernel_size[0] in (1, 3, 5) and layer.stride[0] in (1, 2)
        assert s.batch * layer.in_channels * layer.height * layer.width <= hidden.MAX_INPUT_VALUES
    first = shapes[0].layer.key()
    assert all(s.layer.key() != first for s in hidden.hidden_shapes(12, seed=3, exclude=zoo | {first}))
    with pytest.raises(ValueError, match="count=0 must be at least 1"):
        hidden.hidden_shapes(0)


class Counted:
    """A function whose return values are kept."""

    def __init__(self, function):
        self.function, self.returned = function, []

    def __call__(self, *args, **kwargs):
        self.returned.append(self.function(*args, **kwargs))
        return self.returned[-1]


TINY_SHAPES = [hidden.HiddenShape(LayerShape("random", "grouped", 16, 16, (3, 3), (1, 1), (1, 1), 4, 1, 8, 8), 2),
               hidden.HiddenShape(LayerShape("random", "depthwise", 16, 16, (5, 5), (2, 2), (2, 2), 16, 1, 9, 9), 1)]


def test_hidden_shapes_benchmark_reports_ratios_of_measured_times(monkeypatch):
    """Two tiny shapes, tuned afresh in a temporary cache (the user's decisions are neither read nor changed), in
    both layouts and both passes; every ratio is torch's measured time over groupconv's, and the summary names the
    worst of them and lists every one below the threshold."""
    counted = Counted(hidden.time_layers)
    monkeypatch.setattr(hidden, "time_layers", counted)
    ops.set_tuning(True)
    try:
        before = ops.cache_path().read_text() if ops.cache_path().exists() else None
        results = hidden.hidden_shapes_benchmark(TINY_SHAPES, repeats=1, progress=None)
        assert (ops.cache_path().read_text() if ops.cache_path().exists() else None) == before
    finally:
        ops.set_tuning(None)
    assert [(r.shape, r.passes) for r in results] == [(s.label(), p) for s in TINY_SHAPES
                                                       for p in ("forward", "forward+backward")]
    assert [r.shape for r in results][::2] == ["grouped 3x3 16->16 g4 8x8 b2", "depthwise 5x5 16->16 g16 s2 9x9 b1"]
    for result, measured in zip(results, counted.returned):
        assert result.torch_nchw_ms == measured["torch_nchw_ms"] > 0
        assert result.ratio_nchw == measured["torch_nchw_ms"] / measured["groupconv_nchw_ms"]
        assert result.ratio_channels_last == (measured["torch_channels_last_ms"]
                                              / measured["groupconv_channels_last_ms"])
        assert result.ratio_best_layouts == (min(measured["torch_nchw_ms"], measured["torch_channels_last_ms"])
                                             / min(measured["groupconv_nchw_ms"],
                                                   measured["groupconv_channels_last_ms"]))
    summary = hidden.summarise(results)
    worst = min(min(r.ratio_nchw, r.ratio_channels_last) for r in results)
    assert f"worst same-layout ratio: {worst:.2f}x" in summary
    assert f"{hidden.geometric_mean(r.ratio_best_layouts for r in results):.2f}x over 4 measurements" in summary
    below = [ratio for r in results for ratio in (r.ratio_nchw, r.ratio_channels_last) if ratio < 0.95]
    assert f"below 0.95x torch in the same layout: {len(below)}" in summary
    assert len(summary.splitlines()) == 3 + len(below)


def test_hidden_shapes_summary_lists_the_losses():
    results = [hidden.HiddenShapeResult("a", "grouped", 2, "forward", 1.0, 2.0, 1.0, 0.5),
               hidden.HiddenShapeResult("b", "depthwise", 1, "forward+backward", 1.0, 1.0, 1.0, 1.0)]
    summary = hidden.summarise(results)
    assert "worst same-layout ratio: 0.50x (a, forward, NCHW)" in summary
    assert "  0.50x  a, forward, NCHW" in summary and "below 0.95x torch in the same layout: 1" in summary
    assert results[0].ratio_best_layouts == 2.0  # torch's faster layout (1 ms) over groupconv's (0.5 ms)


def test_benchmark_command_times_hidden_shapes(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["benchmark", "layers", "--hidden-shapes", "1", "--seed", "5", "--forward-only", "--repeats", "1",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "random grouped/depthwise/pointwise-grouped layers not in the zoo (seed 5)" in text
    assert "worst same-layout ratio" in text and "geometric mean" in text
    with (out / "hidden_shapes.csv").open() as f:
        (row,) = list(csv.DictReader(f))
    assert row["passes"] == "forward" and row["shape"] == hidden.hidden_shapes(1, seed=5)[0].label()
    assert float(row["ratio_nchw"]) == round(float(row["torch_nchw_ms"]) / float(row["groupconv_nchw_ms"]), 3)
