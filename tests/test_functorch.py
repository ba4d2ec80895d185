"""torch.func transforms (vmap, grad, jacrev, jacfwd, hessian, jvp, per-sample vmap(grad)) of groupconv's ops equal
the same transforms of torch's twin of each op, in float64: the grouped and the shuffled conv, the channel shuffle
and the fused batch norm."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import grad, hessian, jacfwd, jacrev, jvp, vmap

import groupconv
from groupconv.ops import batch_norm

DTYPE = torch.float64


def torch_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle written with torch's views (Zhang et al. 2018)."""
    n, c, *spatial = x.shape
    return x.reshape(n, groups, c // groups, *spatial).transpose(1, 2).reshape(x.shape)


def assert_same(actual, expected, what: str) -> None:
    if isinstance(expected, (tuple, list)):
        assert len(actual) == len(expected), what
        for index, (a, e) in enumerate(zip(actual, expected)):
            assert_same(a, e, f"{what}[{index}]")
        return
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-9, msg=lambda m: f"{what}: {m}")
    assert expected.abs().max() > 0 or actual.abs().max() == 0, what


def check_transforms(ours, theirs, primals: tuple[torch.Tensor, ...], per_sample: bool = True) -> None:
    """Every transform of `ours` equals the same transform of `theirs` at `primals` (the first one is the input,
    a batch whose first dimension vmap may split)."""
    generator = torch.Generator().manual_seed(0)
    tangents = tuple(torch.randn(p.shape, dtype=DTYPE, generator=generator) for p in primals)
    cotangent = torch.randn(theirs(*primals).shape, dtype=DTYPE, generator=generator)
    arguments = tuple(range(len(primals)))

    def scalar(fn):
        return lambda *args: (fn(*args) * cotangent).sum()

    def cubed(fn):  # a scalar with a non-zero second derivative, even through a ReLU
        return lambda *args: fn(*args).pow(3).sum()

    out, tangent = jvp(ours, primals, tangents)
    expected_out, expected_tangent = jvp(theirs, primals, tangents)
    assert_same(out, expected_out, "jvp primal")
    assert_same(tangent, expected_tangent, "jvp tangent")
    assert_same(grad(scalar(ours), argnums=arguments)(*primals), grad(scalar(theirs), argnums=arguments)(*primals),
                "grad")
    assert_same(jacrev(ours, argnums=arguments)(*primals), jacrev(theirs, argnums=arguments)(*primals), "jacrev")
    assert_same(jacfwd(ours, argnums=arguments)(*primals), jacfwd(theirs, argnums=arguments)(*primals), "jacfwd")
    assert_same(hessian(cubed(ours))(*primals), hessian(cubed(theirs))(*primals), "hessian")
    stacked = torch.stack([primals[0], torch.randn(primals[0].shape, dtype=DTYPE, generator=generator)])
    assert_same(vmap(ours, in_dims=(0, *[None] * (len(primals) - 1)))(stacked, *primals[1:]),
                vmap(theirs, in_dims=(0, *[None] * (len(primals) - 1)))(stacked, *primals[1:]), "vmap")
    if per_sample and len(primals) > 1:  # per-sample gradients of the other operands: vmap over the batch of grad
        def per_sample_grads(fn):
            def one(sample, *rest):
                return grad(lambda *r: fn(sample.unsqueeze(0), *r).pow(2).sum(), argnums=tuple(range(len(rest))))(
                    *rest)
            return vmap(one, in_dims=(0, *[None] * (len(primals) - 1)))(*primals)
        assert_same(per_sample_grads(ours), per_sample_grads(theirs), "vmap(grad)")


@st.composite
def conv_cases(draw):
    groups = draw(st.integers(1, 3))
    in_per_group = draw(st.integers(1, 2))
    out_per_group = draw(st.integers(1, 2))
    in_channels = groups * in_per_group
    shuffle_groups = draw(st.sampled_from([s for s in (1, 2, 3) if in_channels % s == 0]))
    kernel = draw(st.sampled_from([1, 3]))
    return dict(batch=draw(st.integers(1, 2)), in_channels=in_channels, out_channels=groups * out_per_group,
                groups=groups, shuffle_groups=shuffle_groups, kernel=kernel, stride=draw(st.integers(1, 2)),
                padding=draw(st.integers(0, kernel // 2)), size=draw(st.integers(kernel, 4)),
                bias=draw(st.booleans()))


@settings(max_examples=8)
@given(conv_cases())
def test_conv_transforms_equal_torchs(case):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(case["batch"], case["in_channels"], case["size"], case["size"], dtype=DTYPE, generator=generator)
    w = torch.randn(case["out_channels"], case["in_channels"] // case["groups"], case["kernel"], case["kernel"],
                    dtype=DTYPE, generator=generator)
    b = torch.randn(case["out_channels"], dtype=DTYPE, generator=generator)
    conv_arguments = dict(stride=case["stride"], padding=case["padding"], groups=case["groups"])
    shuffle_groups = case["shuffle_groups"]

    def ours(x, w, *bias):
        return groupconv.conv2d(x, w, *bias, **conv_arguments, shuffle_groups=shuffle_groups)

    def theirs(x, w, *bias):
        return F.conv2d(torch_shuffle(x, shuffle_groups), w, *bias, **conv_arguments)

    check_transforms(ours, theirs, (x, w, b) if case["bias"] else (x, w))


def test_the_conv_layer_and_a_forward_mode_jacobian_of_its_weight():
    """The failure as users met it: jvp's tangent and jacfwd's Jacobian were all zeros, for the layer too."""
    torch.manual_seed(0)
    layer = groupconv.nn.Conv2d(4, 6, 3, groups=2, padding=1).double()
    twin = torch.nn.Conv2d(4, 6, 3, groups=2, padding=1).double()
    twin.load_state_dict(layer.state_dict())
    x = torch.randn(2, 4, 5, 5, dtype=DTYPE)
    params = dict(layer.named_parameters())

    def ours(weight):
        return torch.func.functional_call(layer, {**params, "weight": weight}, (x,))

    def theirs(weight):
        return torch.func.functional_call(twin, {**params, "weight": weight}, (x,))

    tangent = torch.randn_like(layer.weight)
    assert_same(jvp(ours, (layer.weight.detach(),), (tangent,)), jvp(theirs, (layer.weight.detach(),), (tangent,)),
                "jvp")
    assert_same(jacfwd(ours)(layer.weight.detach()), jacfwd(theirs)(layer.weight.detach()), "jacfwd")


@settings(max_examples=6)
@given(channels=st.sampled_from([2, 4, 6]), groups=st.sampled_from([1, 2]), batch=st.integers(1, 3),
       rank=st.integers(3, 5))
def test_channel_shuffle_transforms_equal_torchs(channels, groups, batch, rank):
    x = torch.randn(batch, channels, *[3] * (rank - 2), dtype=DTYPE)
    check_transforms(lambda x: groupconv.channel_shuffle(x, groups), lambda x: torch_shuffle(x, groups), (x,))



@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("fused", ["none", "residual_relu", "concat"])
def test_fused_batch_norm_transforms_equal_torchs(training, fused, fused_kernel_on_small_inputs):
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(3, 4, 3, 3, dtype=DTYPE, generator=generator)
    weight = torch.rand(4, dtype=DTYPE, generator=generator) + 0.5
    bias = torch.randn(4, dtype=DTYPE, generator=generator)
    # Running statistics only in eval mode: vmap cannot update them in training, in torch's batch norm as in ours.
    mean, var = (None, None) if training else (torch.randn(4, dtype=DTYPE), torch.rand(4, dtype=DTYPE) + 0.5)
    residual = torch.randn(3, 4, 3, 3, dtype=DTYPE, generator=generator) if fused == "residual_relu" else None
    concat = torch.randn(3, 2, 3, 3, dtype=DTYPE, generator=generator) if fused == "concat" else None
    relu = fused == "residual_relu"

    def ours(x, weight, bias):
        return batch_norm(x, mean, var, weight, bias, training, residual=residual, relu=relu, concat=concat)

    def theirs(x, weight, bias):
        out = F.batch_norm(x, mean, var, weight, bias, training)
        out = out if residual is None else out + residual
        out = F.relu(out) if relu else out
        return out if concat is None else torch.cat((out, concat), 1)

    # (per-sample gradients: batch statistics of a batch of one are not defined in training, and the residual and
    # concatenated tensors are whole batches)
    check_transforms(ours, theirs, (x, weight, bias), per_sample=not training and fused == "none")
