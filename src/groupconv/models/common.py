"""What every model family shares: argument checks, the width-multiplier naming and zero_init_last."""

from __future__ import annotations

from fractions import Fraction

import torch


def check_positive_int(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}={value!r} must be an int")
    if value < 1:
        raise ValueError(f"{name}={value} must be a positive integer")


def check_classifier_arguments(num_classes, in_chans) -> None:
    """Every model takes `num_classes` and `in_chans` (timm's names); both must be >= 1."""
    check_positive_int(num_classes, "num_classes")
    check_positive_int(in_chans, "in_chans")


def check_width(width, name: str = "width") -> float:
    if isinstance(width, bool) or not isinstance(width, int | float) or not width > 0:
        raise ValueError(f"{name}={width!r} must be a positive number")
    return float(width)


def width_suffix(width: float) -> str:
    """pytorchcv's (imgclsmob's) name for a width multiplier: 1 -> w1, 0.5 -> wd2, 0.75 -> w3d4, 1.5 -> w3d2."""
    ratio = Fraction(width).limit_denominator(16)
    if ratio.denominator == 1:
        return f"w{ratio.numerator}"
    if ratio.numerator == 1:
        return f"wd{ratio.denominator}"
    return f"w{ratio.numerator}d{ratio.denominator}"


def scale_channels(channels: int, width: float) -> int:
    """pytorchcv's rounding of a scaled channel count: truncation, int(c * width), and no rounding at width 1."""
    return channels if width == 1.0 else int(channels * width)


def zero_init_last_blocks(model: torch.nn.Module) -> None:
    """Call zero_init_last() on every block of `model` that has one (timm's convention): a model's own
    zero_init_last delegates here, and each block decides what its last layer is."""
    for module in model.modules():
        if module is not model and hasattr(module, "zero_init_last"):
            module.zero_init_last()


def make_divisible(value: float, divisor: int) -> int:
    """torchvision's `_make_divisible` (from TensorFlow's MobileNet code): `value` rounded to the nearest multiple of
    `divisor`, at least `divisor`, and never more than 10% below `value`. MobileNet V2 and RegNet round with it."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def like_strides(tensor: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """`tensor` with the strides of `reference` (same shape), copied only where they differ.

    The fused batch norm takes its residual only with the strides of its input; a shortcut can differ where a size-1
    dimension makes both layouts valid (a 1x1 map out of a strided conv is NCHW- and channels-last-contiguous at once).
    """
    if tensor.stride() == reference.stride():
        return tensor
    return torch.empty_like(reference).copy_(tensor)
