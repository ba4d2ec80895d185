"""What every custom op's implementation does with a backend's result: make it the op's own tensor.

A custom op's contract: its output is in the layout its fake implementation promises, not a view, and never shares
memory with an input. A backend may return a view of its input (a shuffle with one group is the identity) or of an
intermediate (gemm's matmul result, reshaped), and any layout.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ..arguments import memory_format_of


def owned(out: Tensor, memory_format: torch.memory_format, *inputs: Tensor | None) -> Tensor:
    """`out` in the layout the fake impl promises, not a view, never sharing memory with an input (a custom
    op's contract).

    A backend may return a view of its input (a shuffle with one group is the identity) or of an
    intermediate (gemm's matmul result, reshaped).
    """
    out = out.contiguous(memory_format=memory_format)
    if out._is_view():  # a view of the backend's own intermediate: autograd must see a fresh tensor (in-place ReLU)
        out = out.detach()
    storage = out.untyped_storage().data_ptr()
    if any(t is not None and t.untyped_storage().data_ptr() == storage for t in inputs):
        out = out.clone(memory_format=memory_format)
    return out


def empty_like_layout(shape: Sequence[int], like: Tensor) -> Tensor:
    return torch.empty(tuple(shape), dtype=like.dtype, device=like.device, memory_format=memory_format_of(like))
