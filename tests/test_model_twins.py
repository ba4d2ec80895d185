"""Each zoo family against its twin written here from the paper with torch.nn.functional: forward, and the
gradients of a training step (batch statistics, float64).

A twin reads the model's parameters by their state_dict names and nothing else of it: the layer sequence,
channel counts, strides, paddings and groups are the paper's, written out below, so a bug in the model (a
layer left out, a wrong stride or group count) is not copied into its twin. ShuffleNet's twin is
tests/test_models.py's shufflenet_reference_forward, which its training-gradient test uses.
"""

import pytest
import torch
import torch.nn.functional as F

from groupconv.models import create_model
from groupconv.models.resnext import ResNeXt

from .conftest import assert_close_scaled


def batch_norm(state, name, x, training):
    running = (None, None) if training else (state[f"{name}.running_mean"], state[f"{name}.running_var"])
    return F.batch_norm(x, *running, state[f"{name}.weight"], state[f"{name}.bias"], training, 0.0, 1e-5)


def conv(state, name, x, **kwargs):
    return F.conv2d(x, state[f"{name}.weight"], state.get(f"{name}.bias"), **kwargs)


def linear(state, name, x):
    return F.linear(x, state[f"{name}.weight"], state[f"{name}.bias"])


def nin_twin(state, x, training, root):
    """Network in Network for CIFAR-10 (Lin et al. 2014), the Caffe model: three mlpconv blocks (a spatial conv and two
    1x1 convs, each with bias and ReLU), 3x3 stride-2 max-pool after the first, average pool after the second
    (ceil mode, as Caffe), global average pool after the last. Deep Roots' root-N (Ioannou et al. 2017): conv2 in N
    filter groups, conv3 in N/2. (Dropout is off: the models are built with dropout=0.)"""
    for block, (kernel, groups) in enumerate(((5, 1), (5, root), (3, max(root // 2, 1))), start=1):
        x = F.relu(conv(state, f"features.conv{block}", x, padding=kernel // 2, groups=groups))
        x = F.relu(conv(state, f"features.cccp{2 * block - 1}", x))
        x = F.relu(conv(state, f"features.cccp{2 * block}", x))
        if block == 1:
            x = F.max_pool2d(x, 3, 2, ceil_mode=True)
        elif block == 2:
            x = F.avg_pool2d(x, 3, 2, ceil_mode=True)
    return x.mean(dim=(2, 3))


def alexnet_twin(state, x, training, groups):
    """AlexNet (Krizhevsky et al. 2012) as Caffe's: conv1 11x11 96 (for 32x32 inputs stride 1 and padding 5), ReLU,
    LRN (5, 1e-4, 0.75, 2), 3x3 stride-2 max-pool; conv2 5x5 256 in `groups` groups, ReLU, LRN, pool; conv3 3x3 384;
    conv4 3x3 384 and conv5 3x3 256 in `groups` groups; pool; 6x6 average pool; three FC layers (4096, 4096,
    classes) with ReLUs between. (Dropout is off: the models are built with dropout=0.)"""
    def lrn(t):
        return F.local_response_norm(t, 5, alpha=1e-4, beta=0.75, k=2.0)

    x = F.max_pool2d(lrn(F.relu(conv(state, "features.conv1", x, padding=5))), 3, 2)
    x = F.max_pool2d(lrn(F.relu(conv(state, "features.conv2", x, padding=2, groups=groups))), 3, 2)
    x = F.relu(conv(state, "features.conv3", x, padding=1))
    x = F.relu(conv(state, "features.conv4", x, padding=1, groups=groups))
    x = F.max_pool2d(F.relu(conv(state, "features.conv5", x, padding=1, groups=groups)), 3, 2)
    x = torch.flatten(F.adaptive_avg_pool2d(x, 6), 1)
    x = F.relu(linear(state, "classifier.fc6", x))
    x = F.relu(linear(state, "classifier.fc7", x))
    return linear(state, "classifier.fc8", x)


def mobilenet_twin(state, x, training, width):
    """MobileNet v1 (Howard et al. 2017, Table 1) with width multiplier `width` (channels truncated, int(c * width)):
    a 3x3 conv of 32 channels (stride 1 for 32x32 inputs), then 13 depthwise separable blocks (3x3 depthwise conv, BN,
    ReLU, 1x1 conv, BN, ReLU) of 64, 128, 128, 256, 256, 512 x 6, 1024, 1024 channels, stride 2 at the first 128, 256,
    512 and 1024; global average pool, FC."""
    def conv_bn_relu(name, t, **kwargs):
        return F.relu(batch_norm(state, f"{name}.bn", conv(state, f"{name}.conv", t, **kwargs), training))

    def scaled(c):
        return c if width == 1.0 else int(c * width)

    x = conv_bn_relu("features.init_block", x, padding=1)
    stages = [(64,), (128, 128), (256, 256), (512,) * 6, (1024, 1024)]
    for stage, channels in enumerate(stages, start=1):
        for unit, _ in enumerate(channels, start=1):
            stride = 2 if unit == 1 and stage > 1 else 1
            name = f"features.stage{stage}.unit{unit}"
            x = conv_bn_relu(f"{name}.dw_conv", x, stride=stride, padding=1, groups=x.shape[1])
            x = conv_bn_relu(f"{name}.pw_conv", x)
            assert x.shape[1] == scaled(channels[unit - 1])
    return linear(state, "output", x.mean(dim=(2, 3)))


def resnext_twin(state, x, training, layers, cardinality, base_width):
    """ResNeXt (Xie et al. 2017) in torchvision's layout: 7x7 conv of 64 channels (stride 1 and no max-pool for 32x32
    inputs), BN, ReLU; four stages of bottleneck blocks (planes 64, 128, 256, 512; stride 2 at the first block of
    stages 2-4): 1x1 conv to int(planes * base_width / 64) * cardinality channels, BN, ReLU, 3x3 conv in
    `cardinality` groups (with the stride), BN, ReLU, 1x1 conv to 4 x planes, BN, plus the shortcut (a 1x1 conv with
    the stride and BN where the shape changes), ReLU; global average pool, FC."""
    def bn(name, t):
        return batch_norm(state, name, t, training)

    x = F.relu(bn("bn1", conv(state, "conv1", x, padding=3)))
    in_channels = 64
    for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers), start=1):
        for block in range(blocks):
            name, stride = f"layer{stage}.{block}", 2 if block == 0 and stage > 1 else 1
            out = F.relu(bn(f"{name}.bn1", conv(state, f"{name}.conv1", x)))
            assert out.shape[1] == int(planes * base_width / 64) * cardinality
            out = F.relu(bn(f"{name}.bn2", conv(state, f"{name}.conv2", out, stride=stride, padding=1,
                                                groups=cardinality)))
            out = bn(f"{name}.bn3", conv(state, f"{name}.conv3", out))
            shortcut = x
            if stride != 1 or in_channels != 4 * planes:
                shortcut = bn(f"{name}.downsample.1", conv(state, f"{name}.downsample.0", x, stride=stride))
            x = F.relu(out + shortcut)
            in_channels = 4 * planes
    return linear(state, "fc", x.mean(dim=(2, 3)))


# name: (builder, twin, input size); small members of each family, 32x32 inputs (16x16 for ResNeXt).
FAMILIES = {
    "nin": (lambda: create_model("nin_cifar", dropout=0.0), lambda s, x, t: nin_twin(s, x, t, root=1), 32),
    "nin_root4": (lambda: create_model("nin_root4", dropout=0.0), lambda s, x, t: nin_twin(s, x, t, root=4), 32),
    "alexnet": (lambda: create_model("alexnet", num_classes=10, small_input=True, dropout=0.0),
                lambda s, x, t: alexnet_twin(s, x, t, groups=2), 32),
    "mobilenet_wd4": (lambda: create_model("mobilenet_wd4", num_classes=10, small_input=True),
                      lambda s, x, t: mobilenet_twin(s, x, t, width=0.25), 32),
    "resnext": (lambda: ResNeXt((1, 2, 1, 1), cardinality=4, base_width=4, num_classes=10, small_input=True),
                lambda s, x, t: resnext_twin(s, x, t, (1, 2, 1, 1), 4, 4), 16),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    build, twin, size = FAMILIES[request.param]
    torch.manual_seed(0)
    return build().double(), twin, size


def test_forward_equals_the_papers_twin(family):
    model, twin, size = family
    model.eval()
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    with torch.no_grad():
        assert_close_scaled(model(x), twin(model.state_dict(), x, False), torch.float64, "eval forward")


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_training_gradients_equal_the_papers_twin(family, channels_last):
    """The loss and the gradients of the input and of every parameter, with batch statistics in the BNs. (channels_last
    where its kernels differ from NCHW's: the families with batch norm and narrow groups.)"""
    model, twin, size = family
    if channels_last and not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()):
        pytest.skip("no batch norm: the NCHW case covers this family")
    model.train()
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    x = torch.randn(2, 3, size, size, dtype=torch.float64).contiguous(memory_format=layout)
    parameters = dict(model.named_parameters())
    results = []
    for network in (model, lambda t: twin(model.state_dict(keep_vars=True), t, True)):
        leaf = x.clone().requires_grad_()
        loss = network(leaf).square().mean()
        results.append((loss, torch.autograd.grad(loss, [leaf, *parameters.values()])))
    (loss, grads), (expected_loss, expected_grads) = results
    assert_close_scaled(loss, expected_loss, torch.float64, "loss")
    for name, actual, expected in zip(["input", *parameters], grads, expected_grads, strict=True):
        assert_close_scaled(actual, expected, torch.float64, f"grad {name}")
