"""What every dataset source returns, and the checks and conversions they share."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset


class DatasetError(ValueError):
    """A user mistake about data (missing path, corrupt archive, wrong image size): reported as `error: ...`."""


@dataclass(frozen=True)
class Normalisation:
    """Per-channel (x - mean) / std, applied to images with pixels in 0..1."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self):
        if len(self.mean) != len(self.std) or not all(s > 0 for s in self.std):
            raise DatasetError(f"normalisation mean={self.mean} and std={self.std} must be one value per channel, "
                               "std positive")

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """images (N, C, H, W) -> normalised, C matching the statistics."""
        if images.dim() != 4 or images.shape[1] != len(self.mean):
            raise DatasetError(f"images of shape {tuple(images.shape)} do not have the {len(self.mean)} channels "
                               "the normalisation is for")
        shape = (1, -1, 1, 1)
        mean = torch.tensor(self.mean, dtype=images.dtype).view(shape)
        std = torch.tensor(self.std, dtype=images.dtype).view(shape)
        return (images - mean) / std


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
    # Images only: how pixels in 0..1, resized to input_shape, became the inputs (what prediction on files repeats).
    normalisation: Normalisation | None = None

    @property
    def is_image(self) -> bool:
        return len(self.input_shape) == 3


def resize_images(images: torch.Tensor, image_size: int | tuple[int, int] | None) -> torch.Tensor:
    """Bilinear resize of float images (N, C, H, W) to image_size x image_size (or to (height, width)); None keeps
    them as they are."""
    size = (image_size, image_size) if isinstance(image_size, int) else image_size
    if size is None or tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=tuple(size), mode="bilinear", align_corners=False,
                         antialias=size[-1] < images.shape[-1])


def standardise(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Normalisation]:
    """Zero mean, unit variance per channel, with statistics of the training split only (no test leakage); the
    statistics are returned too."""
    dims = [d for d in range(train.dim()) if d != 1]
    normalisation = Normalisation(tuple(train.mean(dim=dims).tolist()),
                                  tuple(train.std(dim=dims).clamp_min(1e-6).tolist()))
    return normalisation.apply(train), normalisation.apply(test), normalisation


def check_image_size(image_size) -> None:
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise DatasetError(f"image_size={image_size!r} must be a positive integer")
