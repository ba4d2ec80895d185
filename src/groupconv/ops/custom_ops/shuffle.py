"""ShuffleNet's channel shuffle as a custom op (groupconv::channel_shuffle), and its eager path (EagerShuffle).

The inverse of a shuffle with g groups is a shuffle with C/g groups, so the backward is a shuffle too and the op
is differentiable any number of times.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..arguments import memory_format_of
from ..dispatch import ShuffleProblem, get_backend, select_backend
from .eager import eager_function, in_functorch_transform, profiled, runs_eagerly
from .outputs import empty_like_layout, owned


def run_channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """The op's implementation: the dispatched backend's shuffle, as the op's own tensor."""
    problem = ShuffleProblem.build(x, groups)
    out = select_backend(problem, lambda b: b.channel_shuffle(x, groups)).channel_shuffle(x, groups)
    return owned(out, memory_format_of(x), x)


channel_shuffle = torch.library.custom_op("groupconv::channel_shuffle", run_channel_shuffle, mutates_args=())


@channel_shuffle.register_fake
def _channel_shuffle_fake(x, groups):
    return empty_like_layout(x.shape, x)


def _shuffle_setup_context(ctx, inputs, output):
    x, groups = inputs
    ctx.inverse_groups = x.shape[1] // groups or 1  # (no channels: nothing to permute, and zero groups is no shuffle)


def _shuffle_backward(ctx, grad_output):
    # The inverse of a shuffle with g groups is a shuffle with C/g groups.
    return channel_shuffle(grad_output, ctx.inverse_groups), None


channel_shuffle.register_autograd(_shuffle_backward, setup_context=_shuffle_setup_context)


EagerShuffle = eager_function(
    "EagerShuffle", run_channel_shuffle, _shuffle_setup_context,
    lambda ctx, grad_output: (shuffle(grad_output, ctx.inverse_groups), None),
    """groupconv::channel_shuffle and its backward for plain eager calls. Its backward is a shuffle too, so it is
    differentiable any number of times.""")


def shuffle(x: Tensor, groups: int) -> Tensor:
    """channel_shuffle, with autograd: by EagerShuffle where it may run, else by the custom op; inside torch.func
    transforms by torch's own shuffle (eager.in_functorch_transform says why)."""
    if in_functorch_transform():
        return get_backend("aten").channel_shuffle(x, groups)
    if runs_eagerly(x):
        with profiled("groupconv::channel_shuffle"):
            return EagerShuffle.apply(x, groups)
    return channel_shuffle(x, groups)
