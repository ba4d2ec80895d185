"""ShuffleNet V2, MobileNet V2, RegNet and ConvNeXt: counts against the papers and the published implementations,
state_dicts key by key against the implementations users load weights from, and outputs and gradients against
stock-torch twins written here from the papers' definitions.

The registry-wide tests (forward, backward, channels_last, seeds, compile) run these models from
tests/test_models.py; this file holds the families' own claims. Counts run on the meta device; real runs use the
small-input variants at 16x16, batch 2.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import groupconv.nn as gnn
from groupconv.analysis import count_multiply_adds, count_parameters
from groupconv.models import create_model, list_models
from groupconv.models.convnext import ConvNeXt, ConvNeXtBlock
from groupconv.models.mobilenet_v2 import InvertedResidual as MobileNetV2Block
from groupconv.models.regnet import DESIGNS, RegNet, RegNetParameters, ResBottleneckBlock
from groupconv.models.shufflenet_v2 import ShuffleNetV2, stage_out_channels

from .conftest import assert_close_scaled

# Exact parameter counts: [torchvision] its documentation's num_params, [timm] its model tables / pycls's model zoo.
REFERENCE_PARAMETERS = {
    "shufflenet_v2_x0_5": 1_366_792,  # [torchvision]
    "shufflenet_v2_x1_0": 2_278_604,  # [torchvision]
    "shufflenet_v2_x1_5": 3_503_624,  # [torchvision]
    "shufflenet_v2_x2_0": 7_393_996,  # [torchvision]
    "mobilenet_v2_100": 3_504_872,  # [torchvision]
    "regnetx_002": 2_684_792,  # [timm]
    "regnetx_004": 5_495_976,  # [torchvision] regnet_x_400mf (timm's regnetx_004, pycls rounding: 5,157,512)
    "regnetx_008": 7_259_656,  # [torchvision] regnet_x_800mf
    "regnetx_016": 9_190_136,  # [torchvision] regnet_x_1_6gf
    "regnetx_032": 15_296_552,  # [torchvision] regnet_x_3_2gf
    "regnety_002": 3_162_996,  # [timm]
    "regnety_004": 4_344_144,  # [torchvision] regnet_y_400mf
    "regnety_008": 6_432_512,  # [torchvision] regnet_y_800mf (timm's regnety_008, pycls rounding: 6,263,168)
    "regnety_016": 11_202_430,  # [torchvision] regnet_y_1_6gf
    "regnety_032": 19_436_338,  # [torchvision] regnet_y_3_2gf
    "convnext_tiny": 28_589_128,  # [timm]
}
# Published to a rounding only: (parameters in millions, digits).
ROUNDED_PARAMETERS = {
    "convnext_atto": (3.7, 1),  # [timm]
    "convnext_nano": (15.6, 1),  # [timm]
    "mobilenet_v2_050": (1.97, 2),  # [timm] mobilenetv2_050 (the paper's TensorFlow model: 1.95 M)
}
# Multiply-adds of one 224x224 image, convolutions and FC: (expected, rounding unit). torchvision's "GFLOPS" are
# multiply-adds; the MobileNet V2 paper's "MAdds" for widths 0.75 and 0.5 (its published checkpoints' table).
REFERENCE_MULTIPLY_ADDS = {
    "shufflenet_v2_x0_5": (0.04e9, 1e7),
    "shufflenet_v2_x1_0": (0.14e9, 1e7),
    "shufflenet_v2_x1_5": (0.30e9, 1e7),
    "shufflenet_v2_x2_0": (0.58e9, 1e7),
    "mobilenet_v2_100": (0.30e9, 1e7),  # torchvision; the paper says 300 M
    "mobilenet_v2_075": (209e6, 1e6),
    "mobilenet_v2_050": (97e6, 1e6),
    "regnetx_002": (0.2e9, 1e8),
    "regnetx_004": (0.41e9, 1e7),
    "regnetx_008": (0.80e9, 1e7),
    "regnetx_016": (1.60e9, 1e7),
    "regnetx_032": (3.18e9, 1e7),
    "regnety_002": (0.2e9, 1e8),
    "regnety_004": (0.40e9, 1e7),
    "regnety_008": (0.83e9, 1e7),
    "regnety_016": (1.61e9, 1e7),
    "regnety_032": (3.18e9, 1e7),
    "convnext_tiny": (4.5e9, 1e8),  # the paper's 4.5 G
}
# Counts that their sources make with a counter that also counts what ours leaves out: (expected, relative).
# The ShuffleNet V2 paper's Table 5 (41, 146, 299, 591 M) is 1.1-1.4% above the convolutions and FC, which
# torchvision's rounding above matches; timm's ConvNeXt GMACs count the normalisations and element-wise products.
APPROXIMATE_MULTIPLY_ADDS = {
    "shufflenet_v2_x0_5": (41e6, 0.015),
    "shufflenet_v2_x1_0": (146e6, 0.015),
    "shufflenet_v2_x1_5": (299e6, 0.015),
    "shufflenet_v2_x2_0": (591e6, 0.015),
    "convnext_atto": (0.55e9, 0.01),
    "convnext_nano": (2.46e9, 0.01),
    "convnext_tiny": (4.47e9, 0.01),
}
MODERN_FAMILIES = ("shufflenet_v2", "mobilenet_v2", "regnet", "convnext")


@functools.lru_cache(maxsize=None)
def meta_model(name: str) -> nn.Module:
    with torch.device("meta"):
        return create_model(name).eval()


def multiply_adds(name: str) -> int:
    with torch.device("meta"):
        return count_multiply_adds(meta_model(name), torch.empty(1, 3, 224, 224))


def test_the_families_register_their_names():
    assert list_models(family="shufflenet_v2") == [f"shufflenet_v2_x{w}" for w in ("0_5", "1_0", "1_5", "2_0")]
    assert list_models(family="mobilenet_v2") == ["mobilenet_v2_050", "mobilenet_v2_075", "mobilenet_v2_100"]
    assert list_models(family="regnet") == [f"regnet{k}_{f}" for k in "xy" for f in ("002", "004", "008", "016",
                                                                                       "032")]
    assert list_models(family="convnext") == ["convnext_atto", "convnext_nano", "convnext_tiny"]


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMETERS))
def test_parameter_count_equals_reference(name):
    assert count_parameters(meta_model(name)) == REFERENCE_PARAMETERS[name]


@pytest.mark.parametrize("name", sorted(ROUNDED_PARAMETERS))
def test_parameter_count_rounds_to_the_published_one(name):
    millions, digits = ROUNDED_PARAMETERS[name]
    assert round(count_parameters(meta_model(name)) / 1e6, digits) == millions


@pytest.mark.parametrize("name", sorted(REFERENCE_MULTIPLY_ADDS))
def test_multiply_adds_match_the_reference_to_its_rounding(name):
    expected, unit = REFERENCE_MULTIPLY_ADDS[name]
    macs = multiply_adds(name)
    assert round(macs / unit) * unit == pytest.approx(expected), f"{name}: {macs:,} multiply-adds"


@pytest.mark.parametrize("name", sorted(APPROXIMATE_MULTIPLY_ADDS))
def test_multiply_adds_are_within_the_published_counters_margin(name):
    expected, relative = APPROXIMATE_MULTIPLY_ADDS[name]
    macs = multiply_adds(name)
    assert macs <= expected and macs == pytest.approx(expected, rel=relative), f"{name}: {macs:,} multiply-adds"


# ---------------------------------------------------------------- the reference implementations' state_dicts
# Written out from torchvision's and timm's source rules (neither is installed), key by key in their order.


class StateShapes(dict):
    def conv(self, key: str, out_channels: int, in_channels: int, kernel: int, bias: bool = False) -> None:
        self[f"{key}.weight"] = (out_channels, in_channels, kernel, kernel)
        if bias:
            self[f"{key}.bias"] = (out_channels,)

    def bn(self, key: str, channels: int) -> None:
        for buffer in ("weight", "bias", "running_mean", "running_var"):
            self[f"{key}.{buffer}"] = (channels,)
        self[f"{key}.num_batches_tracked"] = ()

    def affine(self, key: str, out_features: int, in_features: int | None = None) -> None:
        """A Linear (in_features given) or a LayerNorm (weight and bias of out_features)."""
        self[f"{key}.weight"] = (out_features,) if in_features is None else (out_features, in_features)
        self[f"{key}.bias"] = (out_features,)


def torchvision_shufflenet_v2_shapes(stages_out_channels, num_classes=1000):
    """torchvision.models.ShuffleNetV2(stages_repeats=[4, 8, 4], stages_out_channels)."""
    s = StateShapes()
    s.conv("conv1.0", stages_out_channels[0], 3, 3)
    s.bn("conv1.1", stages_out_channels[0])
    inp = stages_out_channels[0]
    for stage, repeats, out in zip((2, 3, 4), (4, 8, 4), stages_out_channels[1:4]):
        half = out // 2
        for index in range(repeats):
            prefix = f"stage{stage}.{index}"
            if index == 0:  # stride 2: branch1 = dw 3x3, BN, 1x1, BN, ReLU
                s.conv(f"{prefix}.branch1.0", inp, 1, 3)
                s.bn(f"{prefix}.branch1.1", inp)
                s.conv(f"{prefix}.branch1.2", half, inp, 1)
                s.bn(f"{prefix}.branch1.3", half)
            # branch2 = 1x1, BN, ReLU, dw 3x3, BN, 1x1, BN, ReLU
            s.conv(f"{prefix}.branch2.0", half, inp if index == 0 else half, 1)
            s.bn(f"{prefix}.branch2.1", half)
            s.conv(f"{prefix}.branch2.3", half, 1, 3)
            s.bn(f"{prefix}.branch2.4", half)
            s.conv(f"{prefix}.branch2.5", half, half, 1)
            s.bn(f"{prefix}.branch2.6", half)
        inp = out
    s.conv("conv5.0", stages_out_channels[4], inp, 1)
    s.bn("conv5.1", stages_out_channels[4])
    s.affine("fc", num_classes, stages_out_channels[4])
    return dict(s)


def torchvision_mobilenet_v2_shapes(num_classes=1000):
    """torchvision.models.MobileNetV2() at width 1 (every channel count of Table 2 is already a multiple of 8)."""
    s = StateShapes()
    s.conv("features.0.0", 32, 3, 3)
    s.bn("features.0.1", 32)
    inp, index = 32, 1
    for t, c, n, _ in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                       (6, 320, 1, 1)):
        for _ in range(n):
            prefix, hidden = f"features.{index}.conv", inp * t
            layer = 0
            if t != 1:
                s.conv(f"{prefix}.0.0", hidden, inp, 1)
                s.bn(f"{prefix}.0.1", hidden)
                layer = 1
            s.conv(f"{prefix}.{layer}.0", hidden, 1, 3)
            s.bn(f"{prefix}.{layer}.1", hidden)
            s.conv(f"{prefix}.{layer + 1}", c, hidden, 1)
            s.bn(f"{prefix}.{layer + 2}", c)
            inp, index = c, index + 1
    s.conv("features.18.0", 1280, 320, 1)
    s.bn("features.18.1", 1280)
    s.affine("classifier.1", num_classes, 1280)
    return dict(s)


def torchvision_regnet_shapes(stage_widths, stage_depths, group_width, se_ratio, num_classes=1000):
    """torchvision.models.RegNet of BlockParams(depths, widths, group widths, bottleneck 1, se_ratio)."""
    s = StateShapes()
    s.conv("stem.0", 32, 3, 3)
    s.bn("stem.1", 32)
    inp = 32
    for stage, (width, depth) in enumerate(zip(stage_widths, stage_depths), start=1):
        for index in range(depth):
            prefix = f"trunk_output.block{stage}.block{stage}-{index}"
            if index == 0:
                s.conv(f"{prefix}.proj.0", width, inp, 1)
                s.bn(f"{prefix}.proj.1", width)
            s.conv(f"{prefix}.f.a.0", width, inp, 1)
            s.bn(f"{prefix}.f.a.1", width)
            s.conv(f"{prefix}.f.b.0", width, group_width, 3)
            s.bn(f"{prefix}.f.b.1", width)
            if se_ratio:
                squeeze = int(round(se_ratio * inp))
                s.conv(f"{prefix}.f.se.fc1", squeeze, width, 1, bias=True)
                s.conv(f"{prefix}.f.se.fc2", width, squeeze, 1, bias=True)
            s.conv(f"{prefix}.f.c.0", width, width, 1)
            s.bn(f"{prefix}.f.c.1", width)
            inp = width
    s.affine("fc", num_classes, inp)
    return dict(s)


def timm_convnext_shapes(depths, dims, conv_mlp, num_classes=1000):
    """timm.models.ConvNeXt(depths, dims, conv_mlp) with its defaults (patch stem, layer scale, conv biases)."""
    s = StateShapes()
    s.conv("stem.0", dims[0], 3, 4, bias=True)
    s.affine("stem.1", dims[0])
    for stage, (depth, dim) in enumerate(zip(depths, dims)):
        if stage > 0:
            s.affine(f"stages.{stage}.downsample.0", dims[stage - 1])
            s.conv(f"stages.{stage}.downsample.1", dim, dims[stage - 1], 2, bias=True)
        for index in range(depth):
            prefix = f"stages.{stage}.blocks.{index}"
            s[f"{prefix}.gamma"] = (dim,)
            s.conv(f"{prefix}.conv_dw", dim, 1, 7, bias=True)
            s.affine(f"{prefix}.norm", dim)
            if conv_mlp:
                s.conv(f"{prefix}.mlp.fc1", 4 * dim, dim, 1, bias=True)
                s.conv(f"{prefix}.mlp.fc2", dim, 4 * dim, 1, bias=True)
            else:
                s.affine(f"{prefix}.mlp.fc1", 4 * dim, dim)
                s.affine(f"{prefix}.mlp.fc2", dim, 4 * dim)
    s.affine("head.norm", dims[-1])
    s.affine("head.fc", num_classes, dims[-1])
    return dict(s)


# The paper's / pycls's stage widths and depths (torchvision computes the same from the design parameters).
REGNET_STAGES = {
    "regnetx_002": ((24, 56, 152, 368), (1, 1, 4, 7), 8),
    "regnety_002": ((24, 56, 152, 368), (1, 1, 4, 7), 8),
    "regnety_004": ((48, 104, 208, 440), (1, 3, 6, 6), 8),
    "regnetx_032": ((96, 192, 432, 1008), (2, 6, 15, 2), 48),
}

REFERENCE_STATE_SHAPES = {
    "shufflenet_v2_x0_5": lambda: torchvision_shufflenet_v2_shapes((24, 48, 96, 192, 1024)),
    "shufflenet_v2_x1_0": lambda: torchvision_shufflenet_v2_shapes((24, 116, 232, 464, 1024)),
    "shufflenet_v2_x2_0": lambda: torchvision_shufflenet_v2_shapes((24, 244, 488, 976, 2048)),
    "mobilenet_v2_100": torchvision_mobilenet_v2_shapes,
    **{name: functools.partial(torchvision_regnet_shapes, *REGNET_STAGES[name], 0.25 if "regnety" in name else None)
       for name in REGNET_STAGES},
    "convnext_atto": lambda: timm_convnext_shapes((2, 2, 6, 2), (40, 80, 160, 320), conv_mlp=True),
    "convnext_tiny": lambda: timm_convnext_shapes((3, 3, 9, 3), (96, 192, 384, 768), conv_mlp=False),
}


@pytest.mark.parametrize("name", sorted(REFERENCE_STATE_SHAPES))
def test_state_dict_is_the_reference_implementations(name):
    state = meta_model(name).state_dict()
    expected = REFERENCE_STATE_SHAPES[name]()
    assert list(state) == list(expected)
    assert {k: tuple(v.shape) for k, v in state.items()} == expected


@pytest.mark.parametrize("name", ["shufflenet_v2_x1_0", "mobilenet_v2_100", "regnety_004", "convnext_tiny"])
def test_a_reference_layout_state_dict_loads_strictly(name):
    torch.manual_seed(0)
    state = {k: torch.randn(s) if s else torch.tensor(7) for k, s in REFERENCE_STATE_SHAPES[name]().items()}
    model = create_model(name, small_input=True)
    model.load_state_dict(state, strict=True)
    assert all(torch.equal(value, state[key]) for key, value in model.state_dict().items())


@pytest.mark.parametrize("name", sorted(REGNET_STAGES))
def test_regnet_stages_are_the_papers(name):
    widths, depths, group_width = REGNET_STAGES[name]
    assert DESIGNS[name].stages() == [(w, d, group_width) for w, d in zip(widths, depths)]


# ---------------------------------------------------------------- stock-torch twins from the papers' definitions
# Plain torch.nn layers with the same state_dict keys, so weights copy across by name (strict=True).


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class TwinShuffleNetV2Unit(nn.Module):
    """Ma et al. 2018, Fig. 3 (c) and (d): channel split, branch, concat, shuffle with 2 groups."""

    def __init__(self, inp, out, stride):
        super().__init__()
        half, self.stride = out // 2, stride
        if stride == 2:
            self.branch1 = nn.Sequential(nn.Conv2d(inp, inp, 3, 2, 1, groups=inp, bias=False), nn.BatchNorm2d(inp),
                                         nn.Conv2d(inp, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU())
        self.branch2 = nn.Sequential(
            nn.Conv2d(inp if stride == 2 else half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(),
            nn.Conv2d(half, half, 3, stride, 1, groups=half, bias=False), nn.BatchNorm2d(half),
            nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU())

    def forward(self, x):
        if self.stride == 1:
            half = x.shape[1] // 2
            out = torch.cat((x[:, :half], self.branch2(x[:, half:])), 1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), 1)
        return channel_shuffle(out, 2)


class TwinShuffleNetV2(nn.Module):
    def __init__(self, channels, num_classes):  # small-input form: stride-1 stem, no max-pool
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, channels[0], 3, 1, 1, bias=False), nn.BatchNorm2d(channels[0]),
                                   nn.ReLU())
        inp = channels[0]
        for stage, repeats, out in zip((2, 3, 4), (4, 8, 4), channels[1:4]):
            setattr(self, f"stage{stage}", nn.Sequential(*[TwinShuffleNetV2Unit(inp if i == 0 else out, out,
                                                                                  2 if i == 0 else 1)
                                                            for i in range(repeats)]))
            inp = out
        self.conv5 = nn.Sequential(nn.Conv2d(inp, channels[4], 1, bias=False), nn.BatchNorm2d(channels[4]), nn.ReLU())
        self.fc = nn.Linear(channels[4], num_classes)

    def forward(self, x):
        x = self.conv5(self.stage4(self.stage3(self.stage2(self.conv1(x)))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class TwinMobileNetV2Block(nn.Module):
    """Sandler et al. 2018, Table 1: 1x1 expand + ReLU6, 3x3 depthwise + ReLU6, linear 1x1; residual if shapes match."""

    def __init__(self, inp, out, stride, t):
        super().__init__()
        hidden, self.residual = inp * t, stride == 1 and inp == out

        def conv_bn_relu6(i, o, k, s=1, g=1):
            return nn.Sequential(nn.Conv2d(i, o, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(o), nn.ReLU6())

        layers = [conv_bn_relu6(inp, hidden, 1)] if t != 1 else []
        self.conv = nn.Sequential(*layers, conv_bn_relu6(hidden, hidden, 3, stride, hidden),
                                  nn.Conv2d(hidden, out, 1, bias=False), nn.BatchNorm2d(out))

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class TwinMobileNetV2(nn.Module):
    def __init__(self, channels, last, num_classes):  # channels: stem then Table 2's c, already scaled
        super().__init__()
        layers = [nn.Sequential(nn.Conv2d(3, channels[0], 3, 1, 1, bias=False), nn.BatchNorm2d(channels[0]),
                                nn.ReLU6())]
        inp = channels[0]
        for (t, _, n, s), out in zip(((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                                      (6, 160, 3, 2), (6, 320, 1, 1)), channels[1:]):
            for i in range(n):
                layers.append(TwinMobileNetV2Block(inp, out, s if i == 0 else 1, t))
                inp = out
        layers.append(nn.Sequential(nn.Conv2d(inp, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6()))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.0), nn.Linear(last, num_classes))

    def forward(self, x):
        return self.classifier(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


class TwinSqueezeExcitation(nn.Module):
    def __init__(self, channels, squeeze):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(channels, squeeze, 1), nn.Conv2d(squeeze, channels, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))


class TwinRegNetBlock(nn.Module):
    """Radosavovic et al. 2020, Fig. 4 (X block; Y adds SE with squeeze width se_ratio x block input width)."""

    def __init__(self, inp, width, stride, group_width, se_ratio):
        super().__init__()

        def conv_bn(i, o, k, s=1, g=1):
            return nn.Sequential(nn.Conv2d(i, o, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(o))

        self.proj = conv_bn(inp, width, 1, stride) if stride != 1 or inp != width else None
        self.f = nn.Module()
        self.f.a = conv_bn(inp, width, 1)
        self.f.b = conv_bn(width, width, 3, stride, width // group_width)
        self.f.se = TwinSqueezeExcitation(width, round(se_ratio * inp)) if se_ratio else nn.Identity()
        self.f.c = conv_bn(width, width, 1)

    def forward(self, x):
        branch = self.f.c(self.f.se(F.relu(self.f.b(F.relu(self.f.a(x))))))
        return F.relu(branch + (x if self.proj is None else self.proj(x)))


class TwinRegNet(nn.Module):
    def __init__(self, widths, depths, group_width, se_ratio, num_classes):  # small-input form: stride-1 stem
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.trunk_output = nn.Sequential()
        inp = 32
        for stage, (width, depth) in enumerate(zip(widths, depths), start=1):
            blocks = nn.Sequential()
            for i in range(depth):
                blocks.add_module(f"block{stage}-{i}", TwinRegNetBlock(inp, width, 2 if i == 0 else 1, group_width,
                                                                       se_ratio))
                inp = width
            self.trunk_output.add_module(f"block{stage}", blocks)
        self.fc = nn.Linear(inp, num_classes)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.trunk_output(self.stem(x)), 1).flatten(1))


class TwinChannelNorm(nn.Module):
    """LayerNorm over the channels of (N, C, H, W), normalised along dim 1 directly (no permute)."""

    def __init__(self, channels):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(channels)), nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        mean = x.mean(1, keepdim=True)
        var = (x - mean).square().mean(1, keepdim=True)
        return (x - mean) / torch.sqrt(var + 1e-6) * self.weight[:, None, None] + self.bias[:, None, None]


class TwinConvNeXtBlock(nn.Module):
    """Liu et al. 2022, Fig. 4: dw 7x7, LayerNorm, 1x1 to 4C, GELU, 1x1 to C, layer scale gamma, plus the input."""

    def __init__(self, dim, conv_mlp):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))
        self.conv_dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = TwinChannelNorm(dim)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Conv2d(dim, 4 * dim, 1) if conv_mlp else nn.Linear(dim, 4 * dim)
        self.mlp.fc2 = nn.Conv2d(4 * dim, dim, 1) if conv_mlp else nn.Linear(4 * dim, dim)

    def forward(self, x):
        y = self.norm(self.conv_dw(x))
        if isinstance(self.mlp.fc1, nn.Linear):  # a pointwise Linear is a 1x1 conv: apply it over the channels
            y = torch.einsum("nchw,oc->nohw", y, self.mlp.fc1.weight) + self.mlp.fc1.bias[:, None, None]
            y = torch.einsum("nchw,oc->nohw", F.gelu(y), self.mlp.fc2.weight) + self.mlp.fc2.bias[:, None, None]
        else:
            y = self.mlp.fc2(F.gelu(self.mlp.fc1(y)))
        return x + self.gamma[:, None, None] * y


class TwinConvNeXt(nn.Module):
    def __init__(self, depths, dims, conv_mlp, num_classes):  # small-input form: 4x4 stem with stride 2, padding 1
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dims[0], 4, 2, 1), TwinChannelNorm(dims[0]))
        self.stages = nn.Sequential()
        for stage, (depth, dim) in enumerate(zip(depths, dims)):
            module = nn.Module()
            if stage > 0:
                module.downsample = nn.Sequential(TwinChannelNorm(dims[stage - 1]), nn.Conv2d(dims[stage - 1], dim, 2, 2))
            module.blocks = nn.Sequential(*[TwinConvNeXtBlock(dim, conv_mlp) for _ in range(depth)])
            self.stages.append(module)
        self.head = nn.Module()
        self.head.norm, self.head.fc = TwinChannelNorm(dims[-1]), nn.Linear(dims[-1], num_classes)

    def forward(self, x):
        x = self.stem(x)
        for stage in self.stages:
            x = stage.blocks(stage.downsample(x) if hasattr(stage, "downsample") else x)
        return self.head.fc(self.head.norm(x.mean((2, 3), keepdim=True)).flatten(1))


TWINS = {
    "shufflenet_v2_x0_5": lambda: TwinShuffleNetV2((24, 48, 96, 192, 1024), 10),
    # width 0.5: torchvision rounds 32, 16, 24, 32, 64, 96, 160, 320 x 0.5 to multiples of 8, at least 8
    "mobilenet_v2_050": lambda: TwinMobileNetV2((16, 8, 16, 16, 32, 48, 80, 160), 1280, 10),
    "regnetx_002": lambda: TwinRegNet(*REGNET_STAGES["regnetx_002"], None, 10),
    "regnety_002": lambda: TwinRegNet(*REGNET_STAGES["regnety_002"], 0.25, 10),
    "convnext_atto": lambda: TwinConvNeXt((2, 2, 6, 2), (40, 80, 160, 320), True, 10),
    # ConvNeXt-T's form (LayerNorm and Linear MLP channels-last) at a size that runs in a second: the same class.
    "convnext_channels_last_mlp": lambda: TwinConvNeXt((1, 1, 2, 1), (8, 16, 24, 32), False, 10),
}
MODELS_UNDER_TEST = {  # what the twins are compared with: a registered name, or a model of the same class
    "convnext_channels_last_mlp": lambda: ConvNeXt((1, 1, 2, 1), (8, 16, 24, 32), num_classes=10, small_input=True),
    "mobilenet_v2_050": lambda: create_model("mobilenet_v2_050", num_classes=10, small_input=True, dropout=0.0),
}


def randomize_affine_parameters(model: nn.Module) -> None:
    """Non-trivial BN / LayerNorm scales and shifts and layer scales, so that no branch is the identity or zero."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() == 1:
                parameter.copy_(torch.rand(parameter.shape, generator=generator, dtype=parameter.dtype) + 0.5
                                if name.endswith(("weight", "gamma")) else
                                torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype) * 0.1)


@pytest.mark.parametrize("name, channels_last", [(name, False) for name in sorted(TWINS)] + [
    ("shufflenet_v2_x0_5", True), ("regnety_002", True), ("convnext_channels_last_mlp", True)])
def test_training_step_equals_its_stock_torch_twin(monkeypatch, name, channels_last):
    """Loss, input gradient, every parameter's gradient and the BN statistics of a training step, then the eval-mode
    output, in float64 against the twin: every fused path (BN with its residual, ReLU or concatenation, the channel
    shuffle, the channels-last LayerNorm) against the paper's definition in plain torch."""
    from groupconv.ops.backends.native import batch_norm as normalization

    monkeypatch.setattr(normalization, "NATIVE_MIN_VALUES", 0)  # the fused BN at these small sizes too
    layout = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    build = MODELS_UNDER_TEST.get(name, functools.partial(create_model, name, num_classes=10, small_input=True))
    model = build().double()
    randomize_affine_parameters(model)
    twin = TWINS[name]().double()
    twin.load_state_dict(model.state_dict(), strict=True)
    model, twin = model.to(memory_format=layout), twin.to(memory_format=layout)
    # Batch 4 at 32x32: the last stage's training-mode BN then normalises 16 values per channel, not 2 (which would
    # amplify rounding differences past float64's tolerance).
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64).contiguous(memory_format=layout)
    weights = torch.randn(4, 10, dtype=torch.float64)
    results = []
    for network in (model, twin):
        leaf = x.clone().requires_grad_()
        loss = (network(leaf) * weights).square().mean()
        results.append((loss, torch.autograd.grad(loss, [leaf, *network.parameters()])))
    (loss, grads), (expected_loss, expected_grads) = results
    assert_close_scaled(loss, expected_loss, torch.float64, "loss")
    names = ["input"] + [key for key, _ in model.named_parameters()]
    assert names[1:] == [key for key, _ in twin.named_parameters()]
    for key, actual, expected in zip(names, grads, expected_grads, strict=True):
        assert_close_scaled(actual, expected, torch.float64, f"grad {key}")
    twin_buffers = dict(twin.named_buffers())
    for key, buffer in model.named_buffers():
        assert_close_scaled(buffer, twin_buffers[key], torch.float64, key)
    model.eval(), twin.eval()
    with torch.no_grad():
        assert_close_scaled(model(x), twin(x), torch.float64, "eval output")


# ---------------------------------------------------------------- structure


def test_shufflenet_v2_units_split_concatenate_and_shuffle_with_two_groups():
    model = meta_model("shufflenet_v2_x1_0")
    shuffles = [m for m in model.modules() if isinstance(m, gnn.ChannelShuffle)]
    assert len(shuffles) == 16 and all(m.groups == 2 for m in shuffles)
    first, second = model.stage2[0], model.stage2[1]
    assert first.branch2[3].stride == (2, 2) and first.branch2[3].groups == 58 and len(second.branch1) == 0
    assert second.branch2[0].in_channels == 58  # a stride-1 unit's branch reads half the channels


def test_mobilenet_v2_residuals_only_where_the_shape_is_kept():
    blocks = [m for m in meta_model("mobilenet_v2_100").modules() if isinstance(m, MobileNetV2Block)]
    assert len(blocks) == 17
    assert [b.use_res_connect for b in blocks].count(True) == 10  # 17 blocks, 7 change stride or width
    assert all(isinstance(b.conv[-3][0], gnn.Conv2d) and b.conv[-3][0].groups == b.conv[-3][0].in_channels
               for b in blocks)  # the depthwise 3x3


@pytest.mark.parametrize("name", list_models("regnet*"))
def test_regnet_3x3_convs_have_the_fixed_group_width_and_y_adds_squeeze_excitation(name):
    blocks = [m for m in meta_model(name).modules() if isinstance(m, ResBottleneckBlock)]
    group_width = DESIGNS[name].group_width
    assert all(b.f.b[0].in_channels // b.f.b[0].groups == min(group_width, b.f.b[0].in_channels) for b in blocks)
    has_se = [not isinstance(b.f.se, nn.Identity) for b in blocks]
    assert all(has_se) if name.startswith("regnety") else not any(has_se)


def test_convnext_blocks_are_depthwise_7x7_with_layer_scale():
    blocks = [m for m in meta_model("convnext_tiny").modules() if isinstance(m, ConvNeXtBlock)]
    assert len(blocks) == 18
    assert all(b.conv_dw.kernel_size == (7, 7) and b.conv_dw.groups == b.conv_dw.in_channels for b in blocks)
    assert all(isinstance(b.norm, nn.LayerNorm) and b.norm.eps == 1e-6 for b in blocks)
    with torch.no_grad():
        layer_scale = create_model("convnext_atto").stages[0].blocks[0].gamma
    assert torch.equal(layer_scale, torch.full((40,), 1e-6))


@pytest.mark.parametrize("name, block_class", [("mobilenet_v2_050", MobileNetV2Block), ("regnety_002", ResBottleneckBlock),
                                               ("convnext_atto", ConvNeXtBlock)])
def test_zero_init_last_starts_every_residual_block_as_its_shortcut(name, block_class):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, small_input=True).eval()
    model.zero_init_last()
    blocks = [m for m in model.modules() if isinstance(m, block_class)]
    if block_class is MobileNetV2Block:
        blocks = [b for b in blocks if b.use_res_connect]
    block = blocks[-1]
    channels = next(m for m in block.modules() if isinstance(m, nn.Conv2d)).in_channels
    x = torch.randn(2, channels, 4, 4)
    expected = x
    if block_class is ResBottleneckBlock:  # relu(0 + shortcut); the first block's shortcut is its projection
        expected = torch.relu(x if block.proj is None else block.proj(x))
    with torch.no_grad():
        torch.testing.assert_close(block(x), expected)


BAD_OPTIONS = [
    (lambda: ShuffleNetV2(width=0), r"width=0 must be a positive number"),
    (lambda: create_model("regnetx_002", width=-1.0), r"width=-1.0 must be a positive number"),
    (lambda: create_model("regnetx_002", width=0.1), r"width=0.1 leaves RegNet no channels in its first block"),
    (lambda: create_model("mobilenet_v2_100", width=0), r"got multiple values for keyword argument 'width'"),
    (lambda: RegNet("regnetx_002"), r"parameters='regnetx_002' must be a RegNetParameters"),
    (lambda: ConvNeXt((3, 3), (96, 192, 384)), r"depths=\(3, 3\) and dims=\(96, 192, 384\) must give one depth"),
    (lambda: create_model("convnext_atto", num_classes=0), r"num_classes=0 must be a positive integer"),
]


@pytest.mark.parametrize("make, message", BAD_OPTIONS)
def test_options_that_cannot_work_are_rejected_by_name(make, message):
    with torch.device("meta"), pytest.raises((ValueError, TypeError), match=message):
        make()


def test_regnet_design_parameters_are_a_frozen_record():
    design = RegNetParameters(13, 24, 36.44, 2.49, 8)
    assert design == DESIGNS["regnetx_002"]
    with pytest.raises(AttributeError):
        design.depth = 14


# ---------------------------------------------------------------- widths between and beyond the named models


def meta_state_shapes(name: str, **kwargs) -> dict:
    with torch.device("meta"):
        return {key: tuple(value.shape) for key, value in create_model(name, **kwargs).state_dict().items()}


@pytest.mark.parametrize("width, name, published", [
    (0.5, "shufflenet_v2_x0_5", (24, 48, 96, 192, 1024)), (1.0, "shufflenet_v2_x1_0", (24, 116, 232, 464, 1024)),
    (1.5, "shufflenet_v2_x1_5", (24, 176, 352, 704, 1024)), (2.0, "shufflenet_v2_x2_0", (24, 244, 488, 976, 2048))])
def test_shufflenet_v2_named_widths_keep_the_papers_channels(width, name, published):
    assert stage_out_channels(width) == published
    assert meta_state_shapes("shufflenet_v2_x1_0", width=width) == meta_state_shapes(name)


@pytest.mark.parametrize("width", [0.2, 0.75, 1.2, 2.5])
def test_shufflenet_v2_at_other_widths_scales_1x_in_even_halves(width):
    channels = stage_out_channels(width)
    stage2 = channels[1]
    assert stage2 % 4 == 0 and abs(stage2 - 116 * width) <= 2  # the multiple of 4 nearest to 1x's 116 scaled
    assert channels == (24, stage2, 2 * stage2, 4 * stage2, 2048 if width >= 2 else 1024)
    assert meta_state_shapes("shufflenet_v2_x0_5", width=width) == torchvision_shufflenet_v2_shapes(channels)
    torch.manual_seed(0)
    model = create_model("shufflenet_v2_x0_5", width=width, num_classes=10, in_chans=1, small_input=True).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 16, 16)).shape == (2, 10)


@pytest.mark.parametrize("width", [0.5, 0.8, 1.5])
def test_regnet_width_scales_every_stage_width_and_keeps_the_depths(width):
    design = DESIGNS["regnetx_002"]  # block widths 24 * 2.49^k for stages k = 0..3, rounded to multiples of 8
    scaled = design.scaled(width).stages()
    assert [depth for _, depth, _ in scaled] == [depth for _, depth, _ in design.stages()]
    assert [stage_width for stage_width, _, _ in scaled] == [8 * round(width * 24 * 2.49 ** k / 8) for k in range(4)]
    widths, depths, group_widths = zip(*scaled)
    assert set(group_widths) == {8}
    assert meta_state_shapes("regnetx_002", width=width) == torchvision_regnet_shapes(widths, depths, 8, None)


def test_regnet_at_width_1_is_the_design_itself():
    assert DESIGNS["regnetx_002"].scaled(1) is DESIGNS["regnetx_002"]
    assert meta_state_shapes("regnety_004", width=1.0) == meta_state_shapes("regnety_004")
