"""optimize_for_inference against the eval-mode model: zoo models at small sizes, an accelerated torch model, a
model torch.fx cannot trace, other batch sizes; the folding really removes the batch norms; bad arguments name
themselves. And `groupconv benchmark inference` at tiny sizes."""

import csv
import sys

import pytest
import torch
from torch import nn

import groupconv
import groupconv.nn as gnn
from groupconv import models
from groupconv.cli import main
from groupconv.inference import (ConvEpilogue, InferenceModel, PlannedConv, PlannedLinear, PlannedPool,
                                 optimize_for_inference)
from groupconv.inference.layers import LINEAR_MAX_BATCH
from groupconv.benchmarks.inference import InferenceResult, summary
from groupconv.inference.folding import fold_into_conv
from groupconv.ops.backends import native
from groupconv.models.resnext_cifar import CifarResNeXt

# Folding reorders float32 arithmetic: outputs agree to rounding, relative to their magnitude.
TOLERANCE = dict(rtol=1e-4, atol=1e-4)


def with_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """`model` in eval mode with BN statistics and affine parameters far from their initial 0/1, so that a wrong fold
    shows (initial statistics make BN nearly the identity)."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            for tensor, low, high in ((module.running_mean, -0.5, 0.5), (module.running_var, 0.5, 2.0),
                                      (module.weight, 0.5, 1.5), (module.bias, -0.3, 0.3)):
                tensor.data.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)
    return model.eval()


def assert_same_as_eval(model: nn.Module, optimized: InferenceModel, *inputs: torch.Tensor) -> None:
    with torch.no_grad():
        expected = model(*inputs)
    actual = optimized(*inputs)
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual / scale, expected / scale, **TOLERANCE)


def batch_norms(module: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


@pytest.mark.parametrize("name, size, folded", [
    ("shufflenet_g8_wd4", 16, 49), ("mobilenet_wd4", 16, 27), ("resnext29_8x2d", 16, 30),
    ("shufflenet_v2_x0_5", 16, 56), ("alexnet_g4", 16, 0)])
def test_zoo_models_match_eval_mode_and_lose_their_batch_norms(name, size, folded):
    torch.manual_seed(0)
    if name == "resnext29_8x2d":  # ResNeXt-29 (Xie et al. 2017) at a small width
        model = with_statistics(CifarResNeXt(cardinality=8, base_width=2, widen_factor=1, num_classes=10))
    else:
        options = {"small_input": True} if models.model_entry(name).has_small_input else {}
        model = with_statistics(models.create_model(name, num_classes=10, **options))
    x = torch.randn(2, 3, size, size)
    optimized = optimize_for_inference(model, x)
    assert optimized.traced and optimized.folded_batch_norms == folded
    assert batch_norms(optimized) == batch_norms(model) - folded
    assert_same_as_eval(model, optimized, x)


class UserBlock(nn.Module):
    """A user's residual block in torch's layers: grouped 1x1, shuffle, depthwise 3x3, BN, residual, ReLU."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, channels, 1, groups=groups, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.shuffle = nn.ChannelShuffle(groups)
        self.depthwise = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=True)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        y = torch.relu(self.bn1(self.reduce(x)))
        return torch.relu(self.bn2(self.depthwise(self.shuffle(y))) + x)


def user_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         UserBlock(16, 4), UserBlock(16, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))


def test_accelerated_user_model_matches_eval_mode():
    torch.manual_seed(0)
    model = with_statistics(groupconv.accelerate(user_model()))
    x = torch.randn(4, 3, 20, 20)
    optimized = optimize_for_inference(model, x)
    assert optimized.folded_batch_norms == 5 and batch_norms(optimized) == 0
    assert sum(isinstance(m, PlannedConv) for m in optimized.modules()) == 5
    assert_same_as_eval(model, optimized, x)
    assert_same_as_eval(model, optimized, torch.randn(1, 3, 24, 24))


class ReadTwice(nn.Module):
    """A conv's output read by its BN and by something else: folding would change the other reader's input."""

    def __init__(self, as_residual: bool):
        super().__init__()
        self.conv, self.bn = gnn.Conv2d(4, 4, 3, padding=1), gnn.BatchNormAct2d(4)
        self.as_residual = as_residual

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y, residual=y) if self.as_residual else self.bn(y) + y


@pytest.mark.parametrize("as_residual", [False, True])
def test_a_batch_norm_whose_conv_output_is_read_twice_stays(as_residual):
    torch.manual_seed(0)
    model = with_statistics(ReadTwice(as_residual))
    x = torch.randn(2, 4, 8, 8)
    optimized = optimize_for_inference(model, x)
    assert optimized.folded_batch_norms == 0 and batch_norms(optimized) == 1
    assert_same_as_eval(model, optimized, x)


class DataDependent(nn.Module):
    """Branches on a tensor's value in its own forward: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = gnn.Conv2d(3, 8, 3, padding=1, groups=1), gnn.BatchNormAct2d(8)

    def forward(self, x):
        y = self.bn(self.conv(x))
        return y * 2 if y.sum() > 0 else y - 1


def test_untraceable_parts_run_as_they_were():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    alone = with_statistics(DataDependent())
    optimized = optimize_for_inference(alone, x)
    assert not optimized.traced and optimized.folded_batch_norms == 0
    assert_same_as_eval(alone, optimized, x)
    assert_same_as_eval(alone, optimized, -x)  # the other branch

    inside = with_statistics(nn.Sequential(gnn.Conv2d(3, 3, 1), gnn.BatchNormAct2d(3), DataDependent()))
    optimized = optimize_for_inference(inside, x)
    assert optimized.traced and optimized.opaque_modules == ("2",) and optimized.folded_batch_norms == 1
    assert_same_as_eval(inside, optimized, x)
    assert_same_as_eval(inside, optimized, -x)


def test_each_step_can_be_turned_off_and_outputs_stay_the_same():
    torch.manual_seed(0)
    model = with_statistics(groupconv.accelerate(user_model()))
    x = torch.randn(2, 3, 16, 16)
    for option in ("channels_last", "fold_batch_norm", "plan_convs"):
        optimized = optimize_for_inference(model, x, **{option: False})
        assert_same_as_eval(model, optimized, x)
    assert optimize_for_inference(model, x, fold_batch_norm=False).folded_batch_norms == 0
    unplanned = optimize_for_inference(model, x, plan_convs=False)
    assert not any(isinstance(m, PlannedConv) for m in unplanned.modules()) and batch_norms(unplanned) == 0


class FusedEpilogues(nn.Module):
    """BatchNormAct2d's residual add, ReLU and concatenation after convs, as ShuffleNet's units use them."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = gnn.Conv2d(4, 4, 3, padding=1), gnn.BatchNormAct2d(4)
        self.conv2, self.bn2 = gnn.Conv2d(4, 4, 1, groups=2, bias=False), gnn.BatchNormAct2d(4, apply_act=False)
        self.conv3, self.bn3 = gnn.Conv2d(4, 6, 1, groups=2), gnn.BatchNormAct2d(6)

    def forward(self, x):
        y = self.bn1(self.conv1(x), x)  # relu(bn(conv(x)) + x)
        z = self.bn2(self.conv2(y), residual=y)  # bn(conv(y)) + y, no ReLU
        return self.bn3(self.conv3(z), concat=-z)  # cat(relu(bn(conv(z))), -z)


@pytest.mark.parametrize("plan_convs", [True, False])
def test_folded_batch_norms_keep_their_residual_relu_and_concat(plan_convs):
    torch.manual_seed(0)
    model = with_statistics(FusedEpilogues())
    x = torch.randn(2, 4, 6, 6)
    optimized = optimize_for_inference(model, x, plan_convs=plan_convs)
    assert optimized.folded_batch_norms == 3 and batch_norms(optimized) == 0
    epilogues = sum(isinstance(m, ConvEpilogue) for m in optimized.modules())
    assert epilogues == (0 if plan_convs else 3)  # (a planned conv runs its epilogue itself)
    assert_same_as_eval(model, optimized, x)
    assert_same_as_eval(model, optimized, torch.randn(1, 4, 5, 5))


# (in channels, out channels, groups, shuffle groups, kernel, stride, padding, dilation, batch, height, width):
# odd sizes, strides, channel counts off the vector width, batch 1, depthwise, shuffled inputs
CONV_CASES = [(12, 20, 4, 1, 1, 1, 0, 1, 1, 7, 9), (24, 24, 24, 1, 3, 2, 1, 1, 3, 11, 10),
              (18, 9, 3, 3, 1, 1, 0, 1, 2, 5, 5), (16, 32, 8, 2, 3, 1, 2, 2, 1, 9, 13),
              (5, 7, 1, 1, 5, 2, 2, 1, 2, 12, 7), (40, 40, 40, 8, 3, 1, 1, 1, 1, 6, 6),
              (32, 32, 32, 1, 3, 2, 1, 1, 1, 7, 9), (72, 72, 72, 1, 3, 1, 1, 1, 2, 6, 5),
              (36, 36, 36, 1, 3, 2, 1, 1, 1, 9, 8), (64, 64, 16, 1, 3, 1, 1, 1, 1, 5, 7),
              (3, 24, 1, 1, 3, 2, 1, 1, 1, 15, 12), (2, 9, 1, 1, 5, 1, 2, 1, 2, 7, 8)]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("relu, with_residual", [(False, False), (True, False), (False, True), (True, True)])
def test_every_way_a_planned_conv_can_run_equals_the_reference(case, relu, with_residual):
    """Each candidate PlannedConv times (whichever wins on this machine) against torch's conv, ReLU and add."""
    cin, cout, groups, shuffle, k, stride, padding, dilation, n, h, w = case
    torch.manual_seed(0)
    conv = gnn.ShuffledGroupedConv2d(cin, cout, k, stride=stride, padding=padding, dilation=dilation, groups=groups,
                                     shuffle_groups=shuffle)
    conv = conv.eval().requires_grad_(False).to(memory_format=torch.channels_last)
    x = torch.randn(n, cin, h, w).contiguous(memory_format=torch.channels_last)
    shuffled = torch.channel_shuffle(x, shuffle) if shuffle > 1 else x
    expected = torch.nn.functional.conv2d(shuffled, conv.weight, conv.bias, stride, padding, dilation, groups)
    residual = torch.randn_like(expected) if with_residual else None
    expected = expected + residual if with_residual else expected
    expected = expected.relu() if relu else expected
    planned = PlannedConv(conv, relu)
    with torch.inference_mode():
        candidates = planned.candidates(x, residual)
        if torch.backends.mkldnn.is_available():
            assert {"dispatcher", "onednn", "onednn prepacked"} <= set(candidates)
        if k == 1 and stride == 1 and padding == 0 and native.unavailable_reason() is None:
            assert "groupconv 1x1 fused" in candidates
        if (k == 3 and shuffle == 1 and dilation == 1 and cin == cout and cin // groups in (1, 4)
                and (groups == cin or cin % 16 == 0) and native.unavailable_reason() is None):
            assert "groupconv narrow groups" in candidates
        if cin <= 4 and groups == 1 and dilation == 1 and native.unavailable_reason() is None:
            assert "groupconv first-layer conv" in candidates
        for name, run in candidates.items():
            torch.testing.assert_close(run(x, residual), expected, rtol=1e-4, atol=1e-4, msg=name)
        torch.testing.assert_close(planned(x, residual), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layer, shape", [
    (torch.nn.MaxPool2d(3, 2, 1), (1, 24, 15, 14)), (torch.nn.MaxPool2d((3, 2), (2, 1), ceil_mode=True), (3, 40, 9, 8)),
    (torch.nn.MaxPool2d(2), (2, 5, 7, 7)), (torch.nn.AvgPool2d(3, 2, 1), (1, 24, 15, 14)),
    (torch.nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False), (3, 40, 10, 9)),
    (torch.nn.AvgPool2d((2, 3), 1, (1, 1)), (2, 19, 6, 7)), (torch.nn.Linear(37, 11), (1, 37)), (torch.nn.Linear(16, 1000), (4, 16)),
    (torch.nn.Linear(8, 3, bias=False), (12, 8))])
def test_every_way_a_planned_pool_or_linear_can_run_equals_torchs(layer, shape):
    torch.manual_seed(0)
    x = torch.randn(shape)
    if x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    planned = PlannedLinear(layer) if isinstance(layer, torch.nn.Linear) else PlannedPool(layer)
    with torch.inference_mode():
        expected = layer(x)
        ways = planned.candidates(x)
        # groupconv's linear kernel only for a small batch
        assert ("groupconv" in ways) == (native.unavailable_reason() is None
                                         and (x.dim() == 4 or shape[0] <= LINEAR_MAX_BATCH))
        for name, run in ways.items():
            torch.testing.assert_close(run(x), expected, rtol=1e-5, atol=1e-5, msg=name)
        torch.testing.assert_close(planned(x), expected, rtol=1e-5, atol=1e-5)


def test_optimized_models_plan_their_pools_and_classifier():
    model = with_statistics(models.create_model("shufflenet_g3_wd4", num_classes=10))
    optimized = optimize_for_inference(model, torch.randn(1, 3, 64, 64))
    planned = [type(m.pool if isinstance(m, PlannedPool) else m.linear).__name__ for m in optimized.modules()
               if isinstance(m, PlannedPool | PlannedLinear)]
    # (the first pool, each downsampling unit's average pool, the classifier)
    assert sorted(planned) == ["AvgPool2d"] * 3 + ["Linear", "MaxPool2d"]


def test_a_planned_first_conv_reads_an_image_as_it_comes_and_writes_channels_last():
    torch.manual_seed(0)
    conv = gnn.Conv2d(3, 24, 3, stride=2, padding=1).eval().requires_grad_(False).to(
        memory_format=torch.channels_last)
    image = torch.randn(2, 3, 17, 20)  # NCHW, as images come
    expected = torch.nn.functional.conv2d(image, conv.weight, conv.bias, 2, 1).relu()
    planned = PlannedConv(conv, relu=True)
    with torch.inference_mode():
        for name, run in planned.candidates(image, None).items():
            out = run(image, None)
            assert out.is_contiguous(memory_format=torch.channels_last), name
            torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4, msg=name)


def test_an_input_only_planned_convs_read_is_not_converted():
    model = with_statistics(models.create_model("shufflenet_g3_wd4", num_classes=10))
    x = torch.randn(2, 3, 64, 64)
    optimized = optimize_for_inference(model, x)
    assert optimized.input_names == ("x",) and optimized.inputs_as_they_come == {"x"}
    assert_same_as_eval(model, optimized, x)
    assert_same_as_eval(model, optimized, x.contiguous(memory_format=torch.channels_last))


def test_a_residual_onednn_cannot_add_is_added_after_the_conv():
    conv = gnn.Conv2d(8, 8, 1, groups=2).eval().requires_grad_(False).to(memory_format=torch.channels_last)
    x = torch.randn(2, 8, 5, 5).contiguous(memory_format=torch.channels_last)
    broadcast = torch.randn(1, 8, 1, 1)  # the plain add broadcasts it; oneDNN's fused add would not
    planned = PlannedConv(conv, relu=True)
    with torch.inference_mode():
        assert set(planned.candidates(x, broadcast)) == {"dispatcher"}
        torch.testing.assert_close(planned(x, broadcast), (conv(x) + broadcast).relu())


def shuffled_depthwise_convs(model: nn.Module) -> int:
    return sum(isinstance(m, gnn.base.GroupedConvMixin) and m.shuffle_groups > 1 and m.groups == m.in_channels
               for m in model.modules())


@pytest.mark.parametrize("name", ["shufflenet_g3_wd4", "shufflenet_g8_wd4"])
def test_shuffles_move_from_depthwise_convs_to_the_1x1_convs_after_them(name):
    torch.manual_seed(0)
    model = with_statistics(models.create_model(name, num_classes=10, small_input=True))
    x = torch.randn(3, 3, 16, 16)
    optimized = optimize_for_inference(model, x)
    units = shuffled_depthwise_convs(model)
    assert units > 0 and optimized.moved_shuffles == units and shuffled_depthwise_convs(optimized) == 0
    pointwise_reading_shuffled = [m for m in optimized.modules() if isinstance(m, PlannedConv)
                                  and m.conv.shuffle_groups > 1 and m.conv.kernel_size == (1, 1)]
    assert len(pointwise_reading_shuffled) == units
    assert_same_as_eval(model, optimized, x)
    assert_same_as_eval(model, optimized, torch.randn(1, 3, 20, 20))


class ShuffleReadTwice(nn.Module):
    """A depthwise conv with an input shuffle whose output is also read by something other than the 1x1 conv."""

    def __init__(self):
        super().__init__()
        self.depthwise = gnn.ShuffledGroupedConv2d(8, 8, 3, padding=1, groups=8, shuffle_groups=4)
        self.pointwise = gnn.Conv2d(8, 8, 1, groups=2)

    def forward(self, x):
        y = self.depthwise(x)
        return self.pointwise(y) + y


def test_a_shuffle_whose_depthwise_output_is_read_twice_stays():
    torch.manual_seed(0)
    model = ShuffleReadTwice().eval()
    x = torch.randn(2, 8, 6, 6)
    optimized = optimize_for_inference(model, x)
    assert optimized.moved_shuffles == 0 and shuffled_depthwise_convs(optimized) == 1
    assert_same_as_eval(model, optimized, x)


def test_one_and_two_threads_give_the_same_results_and_the_choice_is_reported():
    torch.manual_seed(0)
    model = with_statistics(models.create_model("shufflenet_g3_wd4", num_classes=10, small_input=True))
    x = torch.randn(2, 3, 16, 16)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        optimized = optimize_for_inference(model, x)
        on_two = optimized(x)
        assert list(optimized.threads_chosen.values())[0] in (1, 2)
        torch.set_num_threads(1)
        on_one = optimized(x)
        assert len(optimized.threads_chosen) == 1  # (one thread available: nothing to choose)
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        fixed = optimize_for_inference(model, x, choose_threads=False)
        fixed(x)
        assert fixed.threads_chosen == {} and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)
    torch.testing.assert_close(on_one, on_two, rtol=1e-5, atol=1e-5)
    assert_same_as_eval(model, optimized, x)


def planned_layer_calls(program: torch.nn.Module) -> int:
    return sum(node.op == "call_module" and isinstance(program.get_submodule(node.target), PlannedConv | PlannedPool)
               for node in program.graph.nodes)


def test_each_input_signature_runs_a_straight_line_program():
    """After an input signature's first forward, its forwards call each planned layer's kernel directly."""
    torch.manual_seed(0)
    model = with_statistics(models.create_model("shufflenet_g3_wd4", num_classes=10, small_input=True))
    optimized = optimize_for_inference(model, torch.randn(2, 3, 16, 16))
    for x in (torch.randn(2, 3, 16, 16), torch.randn(1, 3, 20, 20)):
        assert_same_as_eval(model, optimized, x)
        assert_same_as_eval(model, optimized, x * 3)  # the program's run
    assert len(optimized._programs) == 2
    for threads, program in optimized._programs.values():
        assert planned_layer_calls(optimized.model) > 0 and planned_layer_calls(program) == 0


class CropByValue(nn.Module):
    """Crops its input's rows by an amount read from its values: torch.fx cannot trace it, so the layers after it
    see shapes that the model's input signature does not fix."""

    def forward(self, x):
        return x[:, :, :-1] if x[0, 0, 0, 0] > 0 else x


def test_a_program_step_given_another_shape_plans_for_it():
    torch.manual_seed(0)
    model = with_statistics(nn.Sequential(CropByValue(), gnn.Conv2d(3, 16, 1), gnn.BatchNormAct2d(16),
                                          gnn.Conv2d(16, 16, 3, padding=1, groups=16), gnn.BatchNormAct2d(16),
                                          nn.MaxPool2d(2)))
    x = torch.randn(1, 3, 9, 8)
    x[0, 0, 0, 0] = 1.0  # cropped to 8 rows; -x is not
    optimized = optimize_for_inference(model, x)
    assert optimized.opaque_modules == ("0",)
    for sample in (x, -x, x, -x):
        assert_same_as_eval(model, optimized, sample)
    planned_shapes = [{key[0] for key in optimized.model.get_submodule(name)._plans} for name in ("1", "3", "5")]
    assert [len(shapes) for shapes in planned_shapes] == [2, 2, 2]  # each layer planned for both


def test_outputs_are_inference_tensors_and_the_model_is_untouched():
    torch.manual_seed(0)
    model = with_statistics(groupconv.accelerate(user_model())).train()
    x = torch.randn(1, 3, 16, 16)
    optimized = optimize_for_inference(model, x)
    assert model.training and batch_norms(model) == 5  # optimised a copy
    assert optimized(x).is_inference()


def test_fold_into_conv_equals_conv_then_batch_norm():
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 4, 3, groups=2, bias=False)
    bn = with_statistics(nn.BatchNorm2d(4))
    x = torch.randn(2, 6, 7, 7)
    with torch.no_grad():
        expected = bn(conv(x))
        fold_into_conv(conv, bn)
        torch.testing.assert_close(conv(x), expected, rtol=1e-5, atol=1e-5)


def test_bad_arguments_name_themselves():
    model, x = nn.Conv2d(3, 3, 1), torch.randn(1, 3, 4, 4)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        optimize_for_inference(lambda t: t, x)
    with pytest.raises(TypeError, match="example_inputs must be a tensor"):
        optimize_for_inference(model, [1, 2])
    with pytest.raises(TypeError, match="example_inputs must be a tensor"):
        optimize_for_inference(model, ())
    with pytest.raises(TypeError, match="channels_last=1 must be a bool"):
        optimize_for_inference(model, x, channels_last=1)


def test_inference_benchmark_prints_each_way_and_writes_csv(tmp_path, capsys):
    assert main(["benchmark", "inference", "--models", "shufflenet_compact", "--batch-sizes", "1",
                 "--image-size", "16", "--repeats", "1", "--peak-gflops", "100", "--bandwidth-gbs", "10",
                 "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    for way in ("groupconv optimized", "groupconv eager", "torch eager CL", "ONNX Runtime"):
        assert way in printed
    rows = list(csv.DictReader(open(tmp_path / "inference.csv")))
    assert {row["way"] for row in rows} >= {"groupconv optimized", "ONNX Runtime"}
    onnx_runtime = next(row for row in rows if row["way"] == "ONNX Runtime")
    assert float(onnx_runtime["ratio_to_onnx_runtime"]) == 1.0 and float(onnx_runtime["fraction_of_peak"]) > 0
    assert "groupconv optimized vs ONNX Runtime: speed-up" in printed


def test_inference_summary_takes_geometric_means_and_the_grouped_pair():
    def result(model, batch, optimized, onnx_runtime):
        return InferenceResult(model, batch, 224, 1, {"groupconv optimized": optimized, "ONNX Runtime": onnx_runtime})

    text = summary([result("shufflenet_g8_w1", 1, 2.0, 4.0), result("shufflenet_g1_w1", 1, 1.0, 0.5),
                    result("shufflenet_g8_w1", 32, 10.0, 10.0)])
    assert "vs ONNX Runtime: speed-up 1.00x (geometric mean of 3), slower on 1: shufflenet_g1_w1 batch 1 (0.50x)" in text
    assert ("1/G at batch 1: shufflenet_g8_w1 time over shufflenet_g1_w1's: groupconv optimized 2.00x, "
            "ONNX Runtime 8.00x") in text
    assert "1/G at batch 32" not in text and "OpenVINO" not in text


def test_inference_benchmark_rejects_bad_batch_sizes_and_models(capsys):
    with pytest.raises(SystemExit):
        main(["benchmark", "inference", "--batch-sizes", "1,x"])
    assert "--batch-sizes='1,x' must be positive integers" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["benchmark", "inference", "--models", "shufflenet_g8_w1,vgg16"])  # (commas separate names too)
    assert "--models: unknown model(s) vgg16;" in capsys.readouterr().err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the peak resident memory is read from /proc")
def test_inference_memory_benchmark_measures_each_way_in_a_process_of_its_own(tmp_path, capsys):
    assert main(["benchmark", "inference-memory", "--models", "shufflenet_compact", "--batch-sizes", "2",
                 "--image-size", "16", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    rows = list(csv.DictReader(open(tmp_path / "inference_memory.csv")))
    assert {row["way"] for row in rows} >= {"groupconv optimized", "ONNX Runtime"}
    for row in rows:  # (each way loads weights and runs forwards: some memory, far from a GiB on this tiny model)
        assert 0 < float(row["steady_mib"]) <= float(row["peak_mib"]) < 1024, row
        assert row["way"] in printed
    onnx_runtime = next(row for row in rows if row["way"] == "ONNX Runtime")
    assert float(onnx_runtime["peak_ratio_to_onnx_runtime"]) == float(onnx_runtime["steady_ratio_to_onnx_runtime"]) == 1


def test_a_way_process_reports_its_childs_error_and_times_forwards_there():
    from groupconv.benchmarks.inference_ways import WayProcess

    with pytest.raises(RuntimeError, match="way='no such way' is not one of"):
        WayProcess("no such way", "shufflenet_compact", 1, 16, None)
    with WayProcess("torch eager", "shufflenet_compact", 1, 16, None, warmup=0) as way:
        seconds = [way() for _ in range(3)]
    assert all(0 < s < 10 for s in seconds), seconds
