"""Problems: one op call as the dispatcher sees it, everything that may change which kernel is best.

Problems are small frozen dataclasses: the keys of the dispatcher's remembered choices and of the tuner's
decisions on disk (their repr), and what a backend reads to say whether it can run a call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch.fx.experimental.symbolic_shapes import optimization_hint

from ..arguments import ConvArguments, memory_format_of

CONV_OPS = ("conv_forward", "conv_backward_input", "conv_backward_weight", "conv_backward")
SHUFFLE_OPS = ("channel_shuffle",)
BATCH_NORM_OPS = ("batch_norm",)
ALL_OPS = CONV_OPS + SHUFFLE_OPS + BATCH_NORM_OPS


def layout_name(tensor: torch.Tensor) -> str:
    """A problem's `layout`: contiguous, channels_last or strided (anything else)."""
    fmt = memory_format_of(tensor)
    if fmt == torch.contiguous_format:
        return "contiguous" if tensor.is_contiguous() else "strided"
    return "channels_last"


@dataclass(frozen=True)
class ConvProblem:
    """One convolution call (forward or a gradient)."""

    op: str  # one of CONV_OPS
    input_shape: tuple[int, ...]
    weight_shape: tuple[int, ...]
    arguments: ConvArguments
    has_bias: bool
    dtype: torch.dtype
    device_type: str
    layout: str
    num_threads: int

    # A problem is a dict key on every call (the dispatcher's choices, the tuner's cache): its hash is computed once.
    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.op, self.input_shape, self.weight_shape, self.arguments,
                                                self.has_bias, self.dtype, self.device_type, self.layout,
                                                self.num_threads)))

    def __hash__(self) -> int:
        return self._hash

    @property
    def empty(self) -> bool:
        """Whether an operand has no values (a batch, channel or spatial extent of zero)."""
        return 0 in self.input_shape or 0 in self.weight_shape

    @classmethod
    def build(
        cls,
        op: str,
        input_shape: Sequence[int],
        weight_shape: Sequence[int],
        arguments: ConvArguments,
        like: torch.Tensor,
        has_bias: bool = False,
    ) -> "ConvProblem":
        return cls(
            op=op,
            input_shape=tuple(map(int, input_shape)),
            weight_shape=tuple(map(int, weight_shape)),
            arguments=arguments,
            has_bias=has_bias,
            dtype=like.dtype,
            device_type=like.device.type,
            layout=layout_name(like),
            num_threads=torch.get_num_threads(),
        )


@dataclass(frozen=True)
class ShuffleProblem:
    """One channel-shuffle call."""

    shape: tuple[int, ...]
    groups: int
    dtype: torch.dtype
    device_type: str
    layout: str
    op: str = "channel_shuffle"

    @property
    def empty(self) -> bool:
        """Whether the tensor has no values."""
        return 0 in self.shape

    @classmethod
    def build(cls, x: torch.Tensor, groups: int) -> "ShuffleProblem":
        return cls(tuple(int(s) for s in x.shape), groups, x.dtype, x.device.type, layout_name(x))


@dataclass(frozen=True)
class BatchNormProblem:
    """One call of groupconv.ops.batch_norm: batch normalisation, then optionally + residual, ReLU, concatenation.

    `residual_matches`: the residual has the input's shape, dtype and device (not a broadcast one);
    `concat_matches`: the concatenated tensor has the input's dtype.
    """

    shape: tuple[int, ...]
    dtype: torch.dtype
    device_type: str
    layout: str
    training: bool
    relu: bool
    has_residual: bool
    residual_matches: bool
    has_concat: bool
    concat_matches: bool
    num_threads: int
    op: str = "batch_norm"

    @property
    def empty(self) -> bool:
        """Whether the input has no values."""
        return 0 in self.shape

    @classmethod
    def build(cls, input: torch.Tensor, training: bool = True, residual: torch.Tensor | None = None,
              relu: bool = False, concat: torch.Tensor | None = None) -> "BatchNormProblem":
        residual_matches = residual is not None and (residual.shape == input.shape and residual.dtype == input.dtype
                                                     and residual.device == input.device)
        return cls(tuple(_size_hint(s) for s in input.shape), input.dtype, input.device.type, layout_name(input),
                   bool(training), bool(relu), residual is not None, residual_matches, concat is not None,
                   concat is not None and concat.dtype == input.dtype, torch.get_num_threads())


def _size_hint(size) -> int:
    """A size as an int; under torch.compile and torch.export the example's, without the guard int() adds (which would
    fix a dynamic batch to the example's: the backend choice is an optimisation, a constant of the traced graph)."""
    return optimization_hint(size) if isinstance(size, torch.SymInt) else int(size)


Problem = ConvProblem | ShuffleProblem | BatchNormProblem
