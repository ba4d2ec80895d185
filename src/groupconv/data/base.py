"""What every dataset source returns, and the checks and conversions they share."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset


class DatasetError(ValueError):
    """A user mistake about data (missing path, corrupt archive, wrong image size): reported as `error: ...`."""


@dataclass
class LoadedDataset:
    """A dataset's train and test splits plus what a model needs to know about them.

    train, test: TensorDatasets; `.tensors` is (inputs float32 (N, *input_shape), labels int64 (N,)),
        inputs already normalised (standardised with training-split statistics, CIFAR's usual mean/std).
    num_classes: labels are 0..num_classes-1.  in_chans: input_shape[0].
    input_shape: (channels, height, width) for images, (channels, length) for 1-D signals.
    class_names: one display name per label.
    """

    name: str
    train: Dataset  # items are (input tensor, int label)
    test: Dataset
    num_classes: int
    in_chans: int
    input_shape: tuple[int, ...]  # (channels, height, width) for images, (channels, length) for signals
    class_names: list[str] = field(default_factory=list)

    @property
    def is_image(self) -> bool:
        return len(self.input_shape) == 3


def resize_images(images: torch.Tensor, image_size: int | None) -> torch.Tensor:
    """Bilinear resize of float images (N, C, H, W) to image_size x image_size; None keeps them as they are."""
    if image_size is None or images.shape[-2:] == (image_size, image_size):
        return images
    return F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False,
                         antialias=image_size < images.shape[-1])


def standardise(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero mean, unit variance per channel, with statistics of the training split only (no test leakage)."""
    dims = [d for d in range(train.dim()) if d != 1]
    mean = train.mean(dim=dims, keepdim=True)
    std = train.std(dim=dims, keepdim=True).clamp_min(1e-6)
    return (train - mean) / std, (test - mean) / std


def check_image_size(image_size) -> None:
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise DatasetError(f"image_size={image_size!r} must be a positive integer")
