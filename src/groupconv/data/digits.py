"""scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes): trains in seconds, no download."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from .base import LoadedDataset, resize_images, standardise

TEST_FRACTION = 0.2
SPLIT_SEED = 0  # fixed, so every run and every seed is scored on the same 360 test images


def load_digits(image_size: int | None = None) -> LoadedDataset:
    """Stratified 1437/360 train/test split; pixels 0..16 upsampled to image_size x image_size and standardised."""
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    bunch = sklearn_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(bunch.target, dtype=torch.int64)
    train_index, test_index = train_test_split(torch.arange(len(labels)).numpy(), test_size=TEST_FRACTION,
                                               random_state=SPLIT_SEED, stratify=labels.numpy())
    images = resize_images(images, image_size)
    train_images, test_images, normalisation = standardise(images[train_index], images[test_index])
    return LoadedDataset("digits", TensorDataset(train_images, labels[train_index]),
                         TensorDataset(test_images, labels[test_index]), num_classes=10, in_chans=1,
                         input_shape=tuple(images.shape[1:]), class_names=[str(d) for d in range(10)],
                         normalisation=normalisation)
