"""The mathematical convolution of 1-D and 2-D arrays, computed by groupconv's conv ops.

Deep-learning "convolution" is cross-correlation; the mathematical one flips the kernel:
(a * b)[n] = sum_k a[k] b[n - k]. The three modes follow MATLAB's conv/conv2:

- 'full':  every partial overlap, length m + n - 1. Commutative: convolve(a, b) == convolve(b, a).
- 'valid': only positions where b lies wholly inside a, length max(m - n + 1, 0). Not commutative:
           when b is longer than a the result is empty. (numpy.convolve and scipy's convolve2d swap
           the arguments in that case instead; for len(a) >= len(b) all three agree.)
- 'same':  the central part of 'full' with the size of a, as scipy.signal.convolve2d and MATLAB.

Accepts numpy arrays (returns numpy, in the input's result dtype) or torch tensors (returns a
tensor; differentiable through the groupconv ops).
"""

from __future__ import annotations

import numpy as np
import torch

from .ops.functional import conv1d, conv2d

MODES = ("full", "valid", "same")


def _as_tensor(array, name: str) -> torch.Tensor:
    tensor = array if isinstance(array, torch.Tensor) else torch.as_tensor(np.asarray(array))
    if tensor.dim() not in (1, 2):
        raise ValueError(f"{name} must be 1-D or 2-D, got {name}.ndim={tensor.dim()} with shape {tuple(tensor.shape)}")
    if tensor.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(tensor.shape)})")
    if tensor.is_complex() or tensor.dtype == torch.bool:
        raise TypeError(f"{name}.dtype={tensor.dtype} is not supported: use a real numeric dtype")
    return tensor


def convolve(a, b, mode: str = "full"):
    """Convolve a with b (kernel flipped), 1-D or 2-D, in mode 'full', 'valid' or 'same'."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} must be one of {MODES}")
    returns_numpy = not isinstance(a, torch.Tensor) and not isinstance(b, torch.Tensor)
    ta, tb = _as_tensor(a, "a"), _as_tensor(b, "b")
    if ta.dim() != tb.dim():
        raise ValueError(f"a and b must have the same number of dimensions, got a.ndim={ta.dim()} and b.ndim={tb.dim()}")
    result_dtype = torch.promote_types(ta.dtype, tb.dtype)
    compute_dtype = result_dtype if result_dtype.is_floating_point else torch.float64
    ta, tb = ta.to(compute_dtype), tb.to(compute_dtype)

    if mode == "valid" and any(n > m for m, n in zip(ta.shape, tb.shape)):
        out = ta.new_zeros(tuple(max(m - n + 1, 0) for m, n in zip(ta.shape, tb.shape)))
    else:
        conv = conv1d if ta.dim() == 1 else conv2d
        flipped = tb.flip(tuple(range(tb.dim())))
        padding = "valid" if mode == "valid" else "full"
        out = conv(ta[None, None], flipped[None, None], padding=padding)[0, 0]
        if mode == "same":
            # The centre of 'full', as scipy's _centered: start (n - 1) // 2 in each dimension.
            out = out[tuple(slice((n - 1) // 2, (n - 1) // 2 + m) for m, n in zip(ta.shape, tb.shape))]

    if not result_dtype.is_floating_point:
        out = out.round().to(result_dtype)
    return out.detach().cpu().numpy() if returns_numpy else out
