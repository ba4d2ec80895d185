"""The model zoo: every registered model by the same tests, plus each family's own claims.

Cost rules that keep this file fast on 2 CPU cores:
  - counts and shapes at the papers' input sizes run on the meta device (no computation);
  - real forward/backward runs use the small-input variant at 16x16 (the smallest size every
    variant accepts), batch 2, and each model is built once (`built_model`);
  - the expensive checks (torch.compile, block forms, the shuffle ablation) use one small model
    per family at its 32x32 design size.
"""

from __future__ import annotations

import contextlib
import functools
import re

import pytest
import torch
import torch.nn.functional as F

import groupconv
import groupconv.nn as gnn
from groupconv.analysis import count_multiply_adds, count_parameters
from groupconv.models import create_model, list_models, model_entry, register_model
from groupconv.models.resnext import Bottleneck
from groupconv.models.resnext_cifar import CifarResNeXt, ResNeXtBlock, convert_block_form
from groupconv.models.common import width_suffix
from groupconv.models.shufflenet import STAGE_CHANNELS, WIDTHS, ShuffleNet, ShuffleUnit, channel_plan, shufflenet

from .conftest import assert_close_scaled

ALL_MODELS = list_models()
# Image models run for real on 16x16 images; a "1d" model (its tag) on its own (channels, length) signals.
REAL_IMAGE_INPUT = (2, 3, 16, 16)
# Run for real only through the meta-device tests: each costs 5-12 s of forward/backward even at 16x16, and
# every module class they use runs for real in resnext50_32x4d and resnext29_32x4d (the RegNets, ConvNeXts and
# ShuffleNet V2 listed: in their family's smaller models, and against their twins in tests/test_models_modern.py).
HEAVY_MODELS = {"resnext101_32x4d", "resnext101_32x8d", "resnext101_64x4d", "resnext29_8x64d", "resnext29_16x64d",
                "regnetx_016", "regnetx_032", "regnety_016", "regnety_032", "convnext_nano", "convnext_tiny",
                "shufflenet_v2_x2_0"}
REAL_RUN_MODELS = [name for name in ALL_MODELS if name not in HEAVY_MODELS]
FAMILY_REPRESENTATIVES = {  # the smallest model of each family
    "alexnet": "alexnet_g4",
    "mobilenet": "mobilenet_wd4",
    "nin": "nin_root4",
    "resnext": "resnext50_32x4d",
    "resnext_cifar": "resnext29_32x4d",
    "shufflenet": "shufflenet_g3_wd4",
    "shufflenet_compact": "shufflenet_compact",
    "cnn1d": "grouped_cnn1d_mnist1d",
    "shufflenet_v2": "shufflenet_v2_x0_5",
    "mobilenet_v2": "mobilenet_v2_050",
    "regnet": "regnetx_002",
    "convnext": "convnext_atto",
}

# Exact parameter counts. models.md unless marked; [pytorchcv] = the count asserted in pytorchcv's own
# model file, [torchvision] = torchvision's documented num_params; formulas derive from a listed count.
NIN_CONV2_WEIGHTS, NIN_CONV3_WEIGHTS = 96 * 192 * 25, 192 * 192 * 9
ALEXNET_GROUPABLE_WEIGHTS = 96 * 256 * 25 + 384 * 384 * 9 + 384 * 256 * 9  # conv2, conv4, conv5 ungrouped
REFERENCE_PARAMETERS = {
    "alexnet": 60_965_224,
    "alexnet_g1": 62_378_344,
    "alexnet_g4": 62_378_344 - ALEXNET_GROUPABLE_WEIGHTS * 3 // 4,
    "mobilenet_w1": 4_231_976,
    "mobilenet_w3d4": 2_585_560,  # [pytorchcv]
    "mobilenet_wd2": 1_331_592,  # [pytorchcv]
    "mobilenet_wd4": 470_072,  # [pytorchcv]
    "nin_cifar": 966_986,
    "nin_root2": 966_986 - NIN_CONV2_WEIGHTS // 2,
    "nin_root4": 455_498,
    "nin_root8": 966_986 - NIN_CONV2_WEIGHTS * 7 // 8 - NIN_CONV3_WEIGHTS * 3 // 4,
    "nin_root16": 966_986 - NIN_CONV2_WEIGHTS * 15 // 16 - NIN_CONV3_WEIGHTS * 7 // 8,
    "resnext50_32x4d": 25_028_904,
    "resnext101_32x4d": 44_177_704,
    "resnext101_32x8d": 88_791_336,
    "resnext101_64x4d": 83_455_272,  # [torchvision]
    "resnext29_8x64d": 34_426_698,
    "resnext29_16x64d": 68_155_210,
    "resnext29_32x4d": 4_775_754,
    "shufflenet_g1_w1": 1_531_936,
    "shufflenet_g2_w1": 1_733_848,  # [pytorchcv]
    "shufflenet_g3_w1": 1_865_728,
    "shufflenet_g4_w1": 1_968_344,  # [pytorchcv]
    "shufflenet_g8_w1": 2_434_768,
    "shufflenet_g1_w3d4": 975_214,  # [pytorchcv]
    "shufflenet_g3_w3d4": 1_238_266,  # [pytorchcv]
    "shufflenet_g1_wd2": 534_484,  # [pytorchcv]
    "shufflenet_g3_wd2": 718_324,  # [pytorchcv]
    "shufflenet_g1_wd4": 209_746,  # [pytorchcv]
    "shufflenet_g3_wd4": 305_902,
}

# Multiply-adds at the paper's input size: (what is counted, expected value, rounding unit of the source).
# ShuffleNet: paper Table 2 "complexity (MFLOPs)", which are multiply-adds of the conv layers, FC excluded.
# ResNeXt: torchvision's documented "GFLOPS" (multiply-adds, FC included). MobileNet: models.md, FC included
# (the paper's Table 2 count of 569 M includes the FC layer). AlexNet: the ShuffleNet paper's 720 MFLOPs.
REFERENCE_MULTIPLY_ADDS = {
    "shufflenet_g1_w1": ("convs", 143e6, 1e6),
    "shufflenet_g2_w1": ("convs", 140e6, 1e6),
    "shufflenet_g3_w1": ("convs", 137e6, 1e6),
    "shufflenet_g4_w1": ("convs", 133e6, 1e6),
    "shufflenet_g8_w1": ("convs", 137e6, 1e6),
    "resnext50_32x4d": ("all", 4.23e9, 1e7),
    "resnext101_32x8d": ("all", 16.41e9, 1e7),
    "resnext101_64x4d": ("all", 15.46e9, 1e7),
    "mobilenet_w1": ("all", 568.7e6, 1e5),
    "alexnet": ("all", 720e6, 1e7),
}


def small_input_options(name: str) -> dict:
    return {"small_input": True} if model_entry(name).has_small_input else {}


def meta_model(name: str, **kwargs) -> torch.nn.Module:
    """The model on the meta device (shapes only, built in milliseconds), in eval mode; shared, do not modify."""
    return _meta_model(name, tuple(sorted(kwargs.items())))


@functools.lru_cache(maxsize=None)
def _meta_model(name: str, options: tuple) -> torch.nn.Module:
    with torch.device("meta"):
        return create_model(name, **dict(options)).eval()


def meta_input(name: str, batch: int = 1, in_chans: int | None = None) -> torch.Tensor:
    channels, *spatial = model_entry(name).input_size
    return torch.empty(batch, in_chans or channels, *spatial, device="meta")


def real_input_shape(name: str) -> tuple[int, ...]:
    entry = model_entry(name)
    return (2, *entry.input_size) if "1d" in entry.tags else REAL_IMAGE_INPUT


@contextlib.contextmanager
def built_model(name: str):
    """The small-input variant with real weights (seed 0, 10 classes), built once per test module.

    Restored on exit to the state it was built in (train mode, original BN statistics, no gradients),
    so the tests that share it cannot see each other.
    """
    model = _built_model(name)
    buffers = {key: value.clone() for key, value in model.named_buffers()}
    try:
        yield model
    finally:
        model.train()
        model.zero_grad(set_to_none=True)
        with torch.no_grad():
            for key, value in model.named_buffers():
                value.copy_(buffers[key])


@functools.lru_cache(maxsize=None)
def _built_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(name, num_classes=10, **small_input_options(name))


@pytest.fixture(scope="module", autouse=True)
def _free_cached_models():
    yield
    _built_model.cache_clear()
    _meta_model.cache_clear()


def linear_multiply_adds(model: torch.nn.Module) -> int:
    return sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear))


# ---------------------------------------------------------------- the registry


def test_registry_holds_exactly_the_zoo_and_the_tagged_study_models():
    shufflenets = [f"shufflenet_g{g}_{w}" for g in (1, 2, 3, 4, 8) for w in ("wd4", "wd2", "w3d4", "w1", "w3d2", "w2")]
    expected = {
        "alexnet", "alexnet_g1", "alexnet_g4",
        "resnext50_32x4d", "resnext101_32x4d", "resnext101_32x8d", "resnext101_64x4d",
        "resnext29_8x64d", "resnext29_16x64d", "resnext29_32x4d",
        "mobilenet_w1", "mobilenet_w3d4", "mobilenet_wd2", "mobilenet_wd4",
        "nin_cifar", "nin_root2", "nin_root4", "nin_root8", "nin_root16", *shufflenets,
        "cnn1d_mnist1d",
        "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0",
        "mobilenet_v2_100", "mobilenet_v2_075", "mobilenet_v2_050",
        *(f"regnet{kind}_{size}" for kind in "xy" for size in ("002", "004", "008", "016", "032")),
        "convnext_atto", "convnext_nano", "convnext_tiny",
    }
    studies = {"shufflenet_compact", "grouped_cnn1d_mnist1d"}
    assert set(ALL_MODELS) == expected | studies
    assert ALL_MODELS == sorted(ALL_MODELS)
    assert set(list_models(tag="study")) == studies
    assert set(list_models(exclude_tag="study")) == expected
    assert list_models(tag="1d") == ["cnn1d_mnist1d", "grouped_cnn1d_mnist1d"]
    assert all(len(model_entry(name).input_size) == 2 for name in list_models(tag="1d"))
    assert all(len(model_entry(name).input_size) == 3 for name in list_models(exclude_tag="1d"))


def test_list_models_filters_with_fnmatch_patterns_and_families():
    assert list_models("shufflenet_g3_*") == [
        "shufflenet_g3_w1", "shufflenet_g3_w2", "shufflenet_g3_w3d2", "shufflenet_g3_w3d4", "shufflenet_g3_wd2",
        "shufflenet_g3_wd4",
    ]
    assert list_models("nin_root?") == ["nin_root2", "nin_root4", "nin_root8"]
    assert list_models("*32x4d") == ["resnext101_32x4d", "resnext29_32x4d", "resnext50_32x4d"]
    assert list_models(family="resnext_cifar") == ["resnext29_16x64d", "resnext29_32x4d", "resnext29_8x64d"]
    assert list_models("no_such_*") == []
    assert list_models("shufflenet_*", tag="study") == ["shufflenet_compact"]
    with pytest.raises(ValueError, match="tag='2d' is not a model tag"):
        list_models(tag="2d")
    with pytest.raises(ValueError, match=r"unknown tag\(s\) \['paper'\]"):
        register_model(lambda **kwargs: torch.nn.Identity(), name="tagged_typo", tags=("paper",))


def test_every_model_is_registered_by_its_own_family_file():
    for name in ALL_MODELS:
        entry = model_entry(name)
        family_file = getattr(groupconv.models, entry.family)
        assert entry.builder.__module__ == family_file.__name__, name


def test_every_convolution_is_a_groupconv_layer():
    """No model builds a torch.nn convolution directly, so that every model runs on groupconv's dispatcher."""
    torch_convs, groupconv_convs = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d), (gnn.Conv1d, gnn.Conv2d, gnn.Conv3d)
    for name in ALL_MODELS:
        model = meta_model(name)
        convs = [m for m in model.modules() if isinstance(m, torch_convs)]
        assert convs, name
        assert all(isinstance(m, groupconv_convs) for m in convs), name


# ---------------------------------------------------------------- counts (meta device)


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMETERS))
def test_parameter_count_equals_reference(name):
    assert count_parameters(meta_model(name)) == REFERENCE_PARAMETERS[name]


@pytest.mark.parametrize("name", [n for n in ALL_MODELS if model_entry(n).has_small_input])
def test_small_input_variant_has_the_same_parameters(name):
    full, small = meta_model(name), meta_model(name, small_input=True)
    assert {k: v.shape for k, v in full.state_dict().items()} == {k: v.shape for k, v in small.state_dict().items()}


@pytest.mark.parametrize("name", sorted(REFERENCE_MULTIPLY_ADDS))
def test_multiply_adds_match_the_paper_to_its_rounding(name):
    counted, expected, unit = REFERENCE_MULTIPLY_ADDS[name]
    model = meta_model(name)
    macs = count_multiply_adds(model, meta_input(name))
    if counted == "convs":
        macs -= linear_multiply_adds(model)
    assert round(macs / unit) * unit == pytest.approx(expected), f"{name}: {macs:,} multiply-adds"


def test_grouping_divides_the_grouped_layers_cost():
    """AlexNet's conv2/4/5 cost 1/G of the dense ones; the rest of the network is unchanged."""
    costs = {g: count_multiply_adds(meta_model(f"alexnet_g{g}" if g != 2 else "alexnet"), meta_input("alexnet"))
             for g in (1, 2, 4)}
    grouped_layers_dense = (costs[1] - costs[2]) * 2  # G=2 removes half of them
    assert costs[1] - costs[4] == grouped_layers_dense * 3 // 4


# ---------------------------------------------------------------- every model, shapes and real runs


@pytest.mark.parametrize("name", ALL_MODELS)
def test_output_shape_at_the_paper_input_size(name):
    model = meta_model(name, num_classes=7, in_chans=4)
    assert model(meta_input(name, batch=2, in_chans=4)).shape == (2, 7)


@pytest.mark.parametrize("name", REAL_RUN_MODELS)
def test_forward_and_backward(name):
    x = torch.randn(real_input_shape(name), requires_grad=True)
    with built_model(name) as model:
        out = model(x)
        assert out.shape == (2, 10)
        assert torch.isfinite(out).all()
        out.square().mean().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
        missing = [k for k, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
        assert not missing, f"no or non-finite gradient for {missing[:5]}"


@pytest.mark.parametrize("name", [name for name in REAL_RUN_MODELS if name not in list_models(tag="1d")])
def test_channels_last_input_gives_the_same_output(name):  # (channels_last is a layout of 4-D image batches)
    x = torch.randn(REAL_IMAGE_INPUT)
    with built_model(name) as model, torch.no_grad():
        model.eval()
        expected = model(x)
        actual = model(x.contiguous(memory_format=torch.channels_last))
    assert_close_scaled(actual, expected, torch.float32, name)


@pytest.mark.parametrize("name", REAL_RUN_MODELS)
def test_a_fixed_seed_gives_the_same_model_and_output(name):
    torch.manual_seed(0)
    second = create_model(name, num_classes=10, **small_input_options(name)).eval()
    x = torch.randn(real_input_shape(name))
    with built_model(name) as first, torch.no_grad():
        first_state, second_state = first.state_dict(), second.state_dict()
        assert all(torch.equal(first_state[k], second_state[k]) for k in first_state)
        first.eval()
        assert torch.equal(first(x), second(x))


@pytest.mark.parametrize("family", sorted(FAMILY_REPRESENTATIVES))
def test_compile_fullgraph_matches_eager(family):
    # aot_eager traces the whole model through dynamo and AOTAutograd (a graph break fails fullgraph=True)
    # without inductor's C++ code generation, which costs 20-70 s per model on 2 cores. Inference only:
    # tracing a training graph doubles the cost, and one family does it below.
    name = FAMILY_REPRESENTATIVES[family]
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, **small_input_options(name)).eval()
    x = torch.randn(2, *model_entry(name).small_input_size)
    with torch.no_grad():
        expected = model(x)
        out = torch.compile(model, fullgraph=True, backend="aot_eager")(x)
    assert_close_scaled(out, expected, torch.float32, name)


def test_compiled_training_step_matches_eager():
    torch.manual_seed(0)
    model = create_model("nin_root4")
    x = torch.randn(2, 3, 32, 32)
    torch.manual_seed(1)  # the same dropout masks in both runs
    expected = model(x)
    expected_grads = torch.autograd.grad(expected.square().sum(), list(model.parameters()))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    torch.manual_seed(1)
    out = compiled(x)
    grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
    assert_close_scaled(out, expected, torch.float32, "output")
    for (name, _), grad, expected_grad in zip(model.named_parameters(), grads, expected_grads):
        assert_close_scaled(grad, expected_grad, torch.float32, name)


# ---------------------------------------------------------------- ResNeXt (ImageNet): torchvision's layout


def torchvision_resnext_state_shapes(layers, groups, width_per_group, num_classes=1000):
    """The state_dict of torchvision.models.ResNet(Bottleneck, layers, groups=..., width_per_group=...),
    key by key in torchvision's order, written out from its source's rules (torchvision is not installed)."""
    shapes = {}

    def conv(key, out_channels, in_channels, kernel):
        shapes[f"{key}.weight"] = (out_channels, in_channels, kernel, kernel)

    def bn(key, channels):
        for buffer in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{key}.{buffer}"] = (channels,)
        shapes[f"{key}.num_batches_tracked"] = ()

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    inplanes = 64
    for layer_index, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
        for block in range(blocks):
            prefix = f"layer{layer_index + 1}.{block}"
            width = int(planes * (width_per_group / 64.0)) * groups
            conv(f"{prefix}.conv1", width, inplanes, 1)
            bn(f"{prefix}.bn1", width)
            conv(f"{prefix}.conv2", width, width // groups, 3)
            bn(f"{prefix}.bn2", width)
            conv(f"{prefix}.conv3", planes * 4, width, 1)
            bn(f"{prefix}.bn3", planes * 4)
            if block == 0:  # stride 2 or inplanes != planes * 4: true for the first block of every layer
                conv(f"{prefix}.downsample.0", planes * 4, inplanes, 1)
                bn(f"{prefix}.downsample.1", planes * 4)
            inplanes = planes * 4
    shapes["fc.weight"] = (num_classes, 2048)
    shapes["fc.bias"] = (num_classes,)
    return shapes


@pytest.mark.parametrize("name, layers, groups, width_per_group", [
    ("resnext50_32x4d", (3, 4, 6, 3), 32, 4),
    ("resnext101_32x4d", (3, 4, 23, 3), 32, 4),
    ("resnext101_32x8d", (3, 4, 23, 3), 32, 8),
    ("resnext101_64x4d", (3, 4, 23, 3), 64, 4),
])
def test_resnext_state_dict_is_torchvisions(name, layers, groups, width_per_group):
    state = meta_model(name).state_dict()
    expected = torchvision_resnext_state_shapes(layers, groups, width_per_group)
    assert list(state) == list(expected)
    assert {k: tuple(v.shape) for k, v in state.items()} == expected


def test_resnext_loads_a_torchvision_layout_state_dict_strictly():
    torch.manual_seed(0)
    shapes = torchvision_resnext_state_shapes((3, 4, 6, 3), 32, 4, num_classes=10)
    state = {k: torch.randn(s) if s else torch.tensor(3) for k, s in shapes.items()}
    model = create_model("resnext50_32x4d", num_classes=10, small_input=True)
    model.load_state_dict(state, strict=True)
    assert torch.equal(model.layer3[5].conv2.weight, state["layer3.5.conv2.weight"])


def test_resnext_stride_is_on_the_3x3_conv():
    model = meta_model("resnext50_32x4d")
    for layer in (model.layer2, model.layer3, model.layer4):
        assert layer[0].conv1.stride == (1, 1) and layer[0].conv2.stride == (2, 2)
        assert layer[0].downsample[0].stride == (2, 2)
    assert model.layer1[0].conv2.stride == (1, 1) and model.layer1[0].conv2.groups == 32


# ---------------------------------------------------------------- ResNeXt (CIFAR): block forms


def test_resnext_cifar_form_c_has_prlz77s_state_dict_names():
    state = meta_model("resnext29_32x4d").state_dict()
    assert "conv_1_3x3.weight" in state and "classifier.weight" in state
    prefix = "stage_2.stage_2_bottleneck_0."
    assert tuple(state[prefix + "conv_conv.weight"].shape) == (256, 8, 3, 3)  # D = 32 * int(4 * 512 / 256)
    assert tuple(state[prefix + "shortcut.shortcut_conv.weight"].shape) == (512, 256, 1, 1)
    assert "stage_2.stage_2_bottleneck_1.shortcut.shortcut_conv.weight" not in state


@pytest.mark.parametrize("block_form", ["a", "b"])
def test_resnext_block_forms_have_the_same_parameter_count(block_form):
    assert count_parameters(meta_model("resnext29_32x4d", block_form=block_form)) == 4_775_754


@pytest.fixture(scope="module")
def resnext_in_three_forms():
    """resnext29_32x4d in form (c) with non-trivial BN statistics, and forms (a), (b) made from its weights.

    float64, so that the only difference between the forms, the order of the sums over the paths,
    stays far below the tolerance even through training-mode BN.
    """
    torch.manual_seed(0)
    grouped = create_model("resnext29_32x4d").double()
    with torch.no_grad():  # a few training-mode batches so BN running statistics are not the identity
        for _ in range(2):
            grouped(torch.randn(4, 3, 8, 8, dtype=torch.float64))
    return {"c": grouped, "b": convert_block_form(grouped, "b"), "a": convert_block_form(grouped, "a")}


@pytest.mark.parametrize("block_form", ["a", "b"])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_resnext_block_forms_compute_the_same_function(resnext_in_three_forms, block_form, mode):
    # 8x8 inputs: the (a) and (b) forms run 288 small path modules, whose cost is per call, not per pixel.
    grouped, other = resnext_in_three_forms["c"], resnext_in_three_forms[block_form]
    assert isinstance(other, CifarResNeXt) and other.block_form == block_form
    assert not any(m.groups > 1 for m in other.modules() if isinstance(m, torch.nn.Conv2d))
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    outputs, grads = [], []
    for model in (grouped, other):
        model.train(mode == "train")
        # Train mode updates BN running statistics: keep the shared model's buffers as they were.
        buffers = {k: v.clone() for k, v in model.state_dict().items()}
        out = model(x)
        (grad,) = torch.autograd.grad(out.square().sum(), x)
        model.load_state_dict(buffers)
        outputs.append(out.detach())
        grads.append(grad)
    assert_close_scaled(outputs[1], outputs[0], torch.float64, f"form ({block_form}) output")
    assert_close_scaled(grads[1], grads[0], torch.float64, f"form ({block_form}) input gradient")
    assert outputs[0].abs().max() > 0


@pytest.mark.parametrize("block_form", ["a", "b"])
def test_resnext_block_form_conversion_round_trips_exactly(resnext_in_three_forms, block_form):
    original = resnext_in_three_forms["c"].state_dict()
    round_trip = resnext_in_three_forms[block_form].grouped_state_dict()
    assert set(round_trip) == set(original)
    assert all(torch.equal(round_trip[k], original[k]) for k in original)


def test_resnext_form_a_splits_the_expand_conv_by_columns(resnext_in_three_forms):
    grouped = resnext_in_three_forms["c"].stage_1.stage_1_bottleneck_0
    aggregated = resnext_in_three_forms["a"].stage_1.stage_1_bottleneck_0
    path = aggregated.paths[5]
    width = grouped.conv_conv.in_channels // 32
    assert torch.equal(path.conv_expand.weight, grouped.conv_expand.weight[:, 5 * width:6 * width])
    assert torch.equal(path.conv_conv.weight, grouped.conv_conv.weight[5 * width:6 * width])


# ---------------------------------------------------------------- ShuffleNet: fused shuffle and the ablation


def shufflenet_reference_forward(model: ShuffleNet, x: torch.Tensor, shuffle: bool, training: bool = False,
                                 small_input: bool = True) -> torch.Tensor:
    """ShuffleNet v1 (Zhang et al. 2018) as pytorchcv's unit, written with torch.nn.functional on the model's
    parameters: an independent twin of the model, sharing none of its code. Init block: 3x3 conv (stride 1 for 32x32
    inputs, else stride 2 and a 3x3 stride-2 max-pool), BN, ReLU. Unit: 1x1 group conv, BN, ReLU, explicit channel
    shuffle (view / transpose / reshape), 3x3 depthwise conv, BN, 1x1 group conv, BN, shortcut (a downsampling unit
    concatenates the 3x3 stride-2 average-pooled input), ReLU. Global average pool, FC. training: BN normalises by the
    batch's statistics (and leaves the running ones alone)."""

    def bn(layer, t):
        if training:
            return F.batch_norm(t, None, None, layer.weight, layer.bias, True, 0.0, layer.eps)
        return F.batch_norm(t, layer.running_mean, layer.running_var, layer.weight, layer.bias, False, 0.0, layer.eps)

    def channel_shuffle(t, groups):
        n, c, h, w = t.shape
        return t.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)

    init = model.features.init_block
    x = F.relu(bn(init.bn, F.conv2d(x, init.conv.weight, stride=1 if small_input else 2, padding=1)))
    if not small_input:
        x = F.max_pool2d(x, 3, 2, 1)
    for stage in (model.features.stage1, model.features.stage2, model.features.stage3):
        for index, unit in enumerate(stage):
            downsample = index == 0  # each stage starts with a stride-2 unit
            conv1, dw, conv3 = unit.compress_conv1, unit.dw_conv2, unit.expand_conv3
            branch = F.relu(bn(unit.compress_bn1, F.conv2d(x, conv1.weight, groups=conv1.groups)))
            if shuffle:
                branch = channel_shuffle(branch, model.groups)
            branch = F.conv2d(branch, dw.weight, stride=2 if downsample else 1, padding=1, groups=branch.shape[1])
            branch = bn(unit.dw_bn2, branch)
            branch = bn(unit.expand_bn3, F.conv2d(branch, conv3.weight, groups=model.groups))
            if downsample:
                x = F.relu(torch.cat((branch, F.avg_pool2d(x, 3, 2, 1)), dim=1))
            else:
                x = F.relu(branch + x)
    return F.linear(x.mean(dim=(2, 3)), model.output.weight, model.output.bias)


@pytest.fixture(scope="module")
def shufflenet_g3_pair():
    """shufflenet_g3_wd4 (32x32 variant) with and without the shuffle, sharing one set of weights and BN statistics."""
    torch.manual_seed(0)
    shuffled = create_model("shufflenet_g3_wd4", num_classes=10, small_input=True)
    with torch.no_grad():
        shuffled(torch.randn(8, 3, 32, 32))  # non-trivial BN running statistics
    plain = create_model("shufflenet_g3_wd4", num_classes=10, small_input=True, shuffle=False)
    plain.load_state_dict(shuffled.state_dict(), strict=True)
    return shuffled.eval(), plain.eval()


@pytest.mark.parametrize("shuffle", [True, False])
def test_shufflenet_equals_pytorchcvs_unfused_unit(shufflenet_g3_pair, shuffle):
    model = shufflenet_g3_pair[0 if shuffle else 1]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert_close_scaled(model(x), shufflenet_reference_forward(model, x, shuffle), torch.float32)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_shufflenet_training_gradients_equal_its_stock_torch_twin(monkeypatch, channels_last):
    """Every fused path of a ShuffleNet training step (the shuffle read through; BN with its residual, ReLU and the
    downsampling units' concatenation; BN reading its gradient strided; the shortcut's gradient summed in the first
    conv's kernel) against the same model in plain torch.nn layers: the loss, the input's and every parameter's
    gradient, in float64. The twin is written from the paper with torch.nn.functional (shufflenet_reference_forward),
    so a bug in the model (a shuffle left out, say) is not copied into it."""
    from groupconv.ops.backends.native import batch_norm as normalization

    monkeypatch.setattr(normalization, "NATIVE_MIN_VALUES", 0)  # the fused BN at these small sizes too
    layout = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    model = create_model("shufflenet_g8_wd4", num_classes=10, small_input=True).double().to(memory_format=layout)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64).contiguous(memory_format=layout)
    results = []
    for network in (model, lambda t: shufflenet_reference_forward(model, t, shuffle=True, training=True)):
        leaf = x.clone().requires_grad_()
        loss = network(leaf).square().mean()
        results.append((loss, torch.autograd.grad(loss, [leaf, *model.parameters()])))
    (loss, grads), (expected_loss, expected_grads) = results
    assert_close_scaled(loss, expected_loss, torch.float64, "loss")
    names = ["input"] + [name for name, _ in model.named_parameters()]
    for name, actual, expected in zip(names, grads, expected_grads, strict=True):
        assert_close_scaled(actual, expected, torch.float64, f"grad {name}")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a CUDA device")
def test_shufflenet_downsampling_gradients_on_cuda_channels_last():
    """torch's CUDA avg_pool2d backward is wrong for channels_last inputs with padding (pytorch/pytorch#188344): the
    downsampling unit pools those in NCHW, and its gradients equal the NCHW unit's."""
    from groupconv.models.shufflenet import ShuffleUnit

    torch.manual_seed(0)
    unit = ShuffleUnit(24, 96, 8, downsample=True, ignore_group=False).cuda().double()
    x = torch.randn(2, 24, 16, 16, device="cuda", dtype=torch.float64)
    grads = []
    for layout in (torch.contiguous_format, torch.channels_last):
        leaf = x.contiguous(memory_format=layout).requires_grad_()
        grads.append(torch.autograd.grad(unit(leaf).square().sum(), leaf)[0])
    assert_close_scaled(grads[1], grads[0], torch.float64, "input gradient")


def test_shufflenet_without_shuffle_differs_for_the_same_weights(shufflenet_g3_pair):
    shuffled, plain = shufflenet_g3_pair
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        difference = (shuffled(x) - plain(x)).abs().max()
        assert difference > 1e-3 * shuffled(x).abs().max()


def test_shufflenet_g1_shuffle_is_the_identity():
    torch.manual_seed(0)
    shuffled = create_model("shufflenet_g1_wd4", num_classes=10, small_input=True).eval()
    plain = create_model("shufflenet_g1_wd4", num_classes=10, small_input=True, shuffle=False).eval()
    plain.load_state_dict(shuffled.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(shuffled(x), plain(x))


@pytest.mark.parametrize("groups", [1, 2, 3, 4, 8])
def test_shuffle_false_removes_only_the_shuffle(groups):
    shuffled, plain = meta_model(f"shufflenet_g{groups}_w1"), meta_model(f"shufflenet_g{groups}_w1", shuffle=False)
    assert {k: v.shape for k, v in shuffled.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
    shuffled_layers = [m for m in shuffled.modules() if isinstance(m, gnn.ShuffledGroupedConv2d)]
    plain_layers = [m for m in plain.modules() if isinstance(m, gnn.ShuffledGroupedConv2d)]
    assert len(shuffled_layers) == len(plain_layers) == 16  # one per unit, the depthwise conv
    assert all(m.shuffle_groups == groups and m.groups == m.in_channels for m in shuffled_layers)
    assert all(m.shuffle_groups == 1 for m in plain_layers)
    for a, b in zip(shuffled.modules(), plain.modules()):  # everything else identical
        assert type(a) is type(b)
        if isinstance(a, torch.nn.Conv2d):
            assert (a.groups, a.stride, a.padding, a.kernel_size) == (b.groups, b.stride, b.padding, b.kernel_size)


def test_shufflenet_structure_follows_the_paper():
    model = meta_model("shufflenet_g3_w1")
    first, second = model.features.stage1.unit1, model.features.stage1.unit2
    assert first.compress_conv1.groups == 1 and second.compress_conv1.groups == 3  # stage 2 starts ungrouped
    assert (first.compress_conv1.in_channels, first.compress_conv1.out_channels) == (24, 60)  # 240 // 4
    assert first.expand_conv3.out_channels == 240 - 24 and first.dw_conv2.stride == (2, 2)
    assert second.expand_conv3.out_channels == 240 and second.dw_conv2.stride == (1, 1)
    assert [len(s) for s in (model.features.stage1, model.features.stage2, model.features.stage3)] == [4, 8, 4]
    # pytorchcv's names, so its checkpoints load
    assert "features.stage2.unit8.dw_conv2.weight" in model.state_dict()
    assert tuple(model.state_dict()["features.stage1.unit2.dw_conv2.weight"].shape) == (60, 1, 3, 3)


@pytest.mark.parametrize("groups", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("width", WIDTHS)
def test_shufflenet_channels_are_the_scaled_table_and_groupable(groups, width):
    """pytorchcv's truncation where it builds; else each stage within 10% of width x Table 1, divisible by 4g."""
    stem, stages, rule = channel_plan(groups, width)
    nominal = [c * width for c in STAGE_CHANNELS[groups]]
    if rule == "pytorchcv":
        assert list(stages) == [int(c) for c in nominal] and stem == int(24 * width)
    else:
        assert all(c % (4 * groups) == 0 and abs(c - n) <= 0.1 * n for c, n in zip(stages, nominal))
        assert stem % groups == 0
    model = meta_model(f"shufflenet_g{groups}_{width_suffix(width)}")
    assert model.stage_channels == stages and model.output.in_features == stages[-1]
    assert all(m.in_channels % m.groups == 0 and m.out_channels % m.groups == 0 for m in model.modules()
               if isinstance(m, gnn.Conv2d))


def test_shufflenet_rounds_only_widths_pytorchcv_cannot_build():
    rounded = {(g, w) for g in STAGE_CHANNELS for w in WIDTHS if channel_plan(g, w)[2] == "divisible"}
    assert rounded == {(g, w) for g in (2, 4, 8) for w in (0.25, 0.5, 0.75, 1.5)}
    assert channel_plan(8, 0.5) == (16, (192, 384, 768), "divisible")


def test_shufflenet_g3_wd4_uses_pytorchcvs_truncated_widths():
    model = meta_model("shufflenet_g3_wd4")
    assert model.features.init_block.conv.out_channels == 6  # int(24 * 0.25)
    assert model.output.in_features == 240  # int(960 * 0.25)


# ---------------------------------------------------------------- the other families' structure


def test_alexnet_feature_maps_follow_the_paper():
    model = meta_model("alexnet")
    sizes = {}
    hooks = [getattr(model.features, name).register_forward_hook(
        lambda m, i, o, name=name: sizes.__setitem__(name, tuple(o.shape[1:])))
        for name in ("conv1", "pool1", "pool2", "conv5", "pool5")]
    model(meta_input("alexnet"))
    for hook in hooks:
        hook.remove()
    assert sizes == {"conv1": (96, 55, 55), "pool1": (96, 27, 27), "pool2": (256, 13, 13),
                     "conv5": (256, 13, 13), "pool5": (256, 6, 6)}
    assert [getattr(model.features, f"conv{i}").groups for i in range(1, 6)] == [1, 2, 1, 2, 2]


def test_mnist1d_models_grouped_has_fewer_parameters_than_the_published_baseline():
    baseline = create_model("cnn1d_mnist1d", num_classes=10, in_chans=1)
    grouped = create_model("grouped_cnn1d_mnist1d", num_classes=10, in_chans=1)
    assert count_parameters(baseline) == 5210  # Conv1d(1->25,k5,s2,p1), Conv1d(25->25,k3,s2,p1) x2, Linear(125->10)
    assert count_parameters(grouped) < 5210
    grouped_convs = [m for m in grouped.modules() if isinstance(m, torch.nn.Conv1d) and m.groups > 1]
    assert grouped_convs and all(m.groups == 4 for m in grouped_convs)
    x = torch.randn(3, 1, 40)
    assert baseline(x).shape == grouped(x).shape == (3, 10)


@pytest.mark.parametrize("name", ["shufflenet_g3_wd4", "shufflenet_compact"])
def test_zero_init_last_starts_every_residual_unit_as_the_identity(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10)
    units = [m for m in model.modules() if isinstance(m, ShuffleUnit)]
    before = {id(unit): unit.expand_bn3.weight.detach().clone() for unit in units}
    model.zero_init_last()
    residual = [unit for unit in units if not unit.downsample]
    assert residual and all(torch.count_nonzero(unit.expand_bn3.weight) == 0 for unit in residual)
    assert all(torch.equal(unit.expand_bn3.weight, before[id(unit)]) for unit in units if unit.downsample)
    unit = residual[0].eval()  # its branch now adds zero (BN shift is zero at initialisation): out = relu(x)
    x = torch.randn(2, unit.expand_bn3.num_features, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(unit(x), torch.relu(x))


@pytest.mark.parametrize("build", [
    pytest.param(lambda: create_model("resnext50_32x4d", num_classes=10, small_input=True), id="resnext50_32x4d"),
    *[pytest.param(lambda form=form: CifarResNeXt(cardinality=4, base_width=4, widen_factor=1, block_form=form),
                   id=f"resnext29_form_{form}") for form in "abc"]])
def test_zero_init_last_starts_every_resnext_block_as_its_shortcut(build):
    torch.manual_seed(0)
    model = build().eval()
    model.zero_init_last()
    blocks = [m for m in model.modules() if isinstance(m, (Bottleneck, ResNeXtBlock))]
    assert blocks
    for block in (blocks[0], blocks[-1]):  # the first has a projection shortcut, the last the identity
        shortcut = block.downsample if isinstance(block, Bottleneck) else block.shortcut
        channels = next(m for m in block.modules() if isinstance(m, torch.nn.Conv2d)).in_channels
        x = torch.randn(2, channels, 8, 8)
        with torch.no_grad():
            expected = torch.relu(x if shortcut is None else shortcut(x))
            torch.testing.assert_close(block(x), expected)


def test_nin_root_groups_only_conv2_and_conv3():
    model = meta_model("nin_root8")
    groups = {name: m.groups for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert groups.pop("features.conv2") == 8 and groups.pop("features.conv3") == 4
    assert set(groups.values()) == {1}


def test_nin_keeps_caffes_map_sizes():
    model = meta_model("nin_cifar")
    sizes = {}
    hooks = [getattr(model.features, name).register_forward_hook(
        lambda m, i, o, name=name: sizes.__setitem__(name, tuple(o.shape[2:]))) for name in ("pool1", "pool2")]
    model(meta_input("nin_cifar"))
    for hook in hooks:
        hook.remove()
    assert sizes == {"pool1": (16, 16), "pool2": (8, 8)}


def test_mobilenet_blocks_are_depthwise_then_pointwise():
    model = meta_model("mobilenet_w1")
    blocks = [m for m in model.modules() if type(m).__name__ == "DepthwiseSeparableBlock"]
    assert len(blocks) == 13
    assert all(isinstance(b.dw_conv.conv, gnn.DepthwiseConv2d) and b.pw_conv.conv.kernel_size == (1, 1) for b in blocks)
    assert [b.dw_conv.conv.stride[0] for b in blocks].count(2) == 4


# ---------------------------------------------------------------- bad input


def test_unknown_model_name_lists_the_closest_names():
    with pytest.raises(ValueError, match=r"unknown model 'shufflenet_g3_w1x'.*did you mean shufflenet_g3_w1"):
        create_model("shufflenet_g3_w1x")
    with pytest.raises(ValueError, match=r"unknown model 'resnext50'.*resnext50_32x4d"):
        create_model("resnext50")
    with pytest.raises(ValueError, match=r"unknown model 'vgg16': see groupconv.models.list_models\(\)"):
        create_model("vgg16")


@pytest.mark.parametrize("name", sorted(FAMILY_REPRESENTATIVES.values()))
@pytest.mark.parametrize("option, value", [("num_classes", 0), ("num_classes", -3), ("in_chans", 0)])
def test_non_positive_classes_or_channels_are_rejected(name, option, value):
    with pytest.raises(ValueError, match=re.escape(f"{option}={value} must be a positive integer")):
        meta_model(name, **{option: value})


BAD_OPTIONS = [
    (lambda: ShuffleNet(groups=5), r"groups=5 is not one of ShuffleNet's \(1, 2, 3, 4, 8\)"),
    (lambda: shufflenet(groups=8, width=0.5, stage_channels=(192, 384, 768)),
     r"stage_channels=\(192, 384, 768\) cannot be built with groups=8: groups=8 does not divide the 180 channels "
     r"of expand_conv3 output"),
    (lambda: shufflenet(groups=2, stage_channels=(200, 400)), r"stage_channels=\(200, 400\) must be three positive"),
    (lambda: shufflenet(groups=3, width=0), r"width=0 must be a positive number"),
    (lambda: create_model("alexnet_g1", groups=2), r"got multiple values for keyword argument 'groups'"),
    (lambda: groupconv.models.alexnet.AlexNet(groups=5), r"groups=5 must divide AlexNet's channel counts"),
    (lambda: groupconv.models.nin.NiN(conv2_groups=5), r"conv2_groups=5 must divide the layer's 96 input"),
    (lambda: create_model("resnext29_32x4d", block_form="d"),
     r"block_form='d' is not one of ResNeXt's block forms \('a', 'b', 'c'\)"),
    (lambda: CifarResNeXt(8, 64, depth=30), r"depth=30 must be 9 n \+ 2"),
]


@pytest.mark.parametrize("make, message", BAD_OPTIONS)
def test_options_that_cannot_work_are_rejected_by_name(make, message):
    with torch.device("meta"), pytest.raises((ValueError, TypeError), match=message):
        make()


def test_registering_a_name_twice_is_an_error():
    with pytest.raises(ValueError, match=r"model name 'alexnet' is already registered"):
        register_model(lambda **kwargs: None, name="alexnet")
