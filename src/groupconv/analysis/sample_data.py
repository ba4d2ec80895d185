"""Input batches for looking at what layers respond to: random noise, or a dataset of groupconv.data.

- random: standard normal inputs of a given shape (no download, no dependency).
- any name groupconv.data.load_dataset knows (digits, mnist1d, cifar10 ...): the first images of its
  test split, resized by the dataset loader to the model's input size.
"""

from __future__ import annotations

import torch

from ..data import load_dataset

RANDOM = "random"


def _check_shape(input_shape) -> tuple[int, ...]:
    shape = tuple(input_shape)
    if len(shape) < 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
        raise ValueError(f"input_shape={input_shape!r} must be (batch, channels, *spatial) with positive ints")
    return shape


def _check_count(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer")


def random_batches(input_shape, batches: int = 4, seed: int = 0) -> list[torch.Tensor]:
    """`batches` tensors of standard normal noise, each of `input_shape` (batch, channels, *spatial)."""
    shape = _check_shape(input_shape)
    _check_count("batches", batches)
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator) for _ in range(batches)]


def dataset_batches(name: str, batch_size: int, batches: int = 4, image_size: int | None = None,
                    root=None) -> tuple[list[torch.Tensor], object]:
    """(batches of inputs from the test split of dataset `name`, the groupconv.data.LoadedDataset).

    Fewer batches come back when the split is smaller than batch_size x batches.
    """
    _check_count("batch_size", batch_size)
    _check_count("batches", batches)
    dataset = load_dataset(name, root=root, image_size=image_size)
    count = min(len(dataset.test), batch_size * batches)
    if count == 0:
        raise ValueError(f"dataset {name!r} has an empty test split: no inputs to look at")
    inputs = torch.stack([dataset.test[i][0] for i in range(count)])
    return list(inputs.split(batch_size)), dataset
