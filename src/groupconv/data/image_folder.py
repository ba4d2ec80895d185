"""ImageFolder trees (torchvision's layout): ROOT/train/<class>/*.png and ROOT/test/<class>/* (or ROOT/val/).

Images are decoded once into memory (fine for the small datasets this trains on in minutes).
Every image must have the size of the first one, so that a stray thumbnail is an error naming
the file rather than a silently stretched sample; `image_size` then resizes them all alike.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .base import DatasetError, LoadedDataset, resize_images, standardise

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
TEST_SPLIT_NAMES = ("test", "val")


def _class_folders(split_dir: Path) -> list[Path]:
    folders = sorted(p for p in split_dir.iterdir() if p.is_dir())
    if not folders:
        raise DatasetError(f"{split_dir} has no class subfolders (expected {split_dir}/<class>/<image>.png)")
    return folders


def read_image(path: Path, mode: str | None) -> np.ndarray:
    """The pixels of an image file as uint8 (H, W) for grey (`mode` "L") or (H, W, 3) for "RGB"; mode None keeps
    a grey file grey and makes anything else RGB."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if mode is None:
                mode = "L" if image.mode in ("1", "L", "I", "I;16", "F") else "RGB"
            return np.asarray(image.convert(mode))
    except (OSError, UnidentifiedImageError) as error:
        raise DatasetError(f"cannot read image {path} ({error})") from None


def _read_split(split_dir: Path, class_names: list[str], mode: str | None, size: tuple[int, ...] | None):
    images, labels = [], []
    for label, class_name in enumerate(class_names):
        folder = split_dir / class_name
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
        for path in files:
            pixels = read_image(path, mode)
            if size is None:
                size, mode = pixels.shape, "L" if pixels.ndim == 2 else "RGB"
            if pixels.shape != size:
                raise DatasetError(f"image {path} is {pixels.shape[1]}x{pixels.shape[0]} but the dataset's images "
                                   f"are {size[1]}x{size[0]}: resize it or remove it")
            images.append(pixels)
            labels.append(label)
    if not images:
        raise DatasetError(f"{split_dir} has no images with suffixes {sorted(IMAGE_SUFFIXES)}")
    array = np.stack(images)
    array = array[:, None] if array.ndim == 3 else array.transpose(0, 3, 1, 2)
    return torch.from_numpy(array.copy()).float() / 255.0, torch.tensor(labels), mode, size


def load_image_folder(root: Path, image_size: int | None = None) -> LoadedDataset:
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"image folder {root} does not exist or is not a directory")
    train_dir = root / "train"
    test_dir = next((root / n for n in TEST_SPLIT_NAMES if (root / n).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise DatasetError(f"{root} must hold train/<class>/ and test/<class>/ (or val/<class>/) folders")
    class_names = [p.name for p in _class_folders(train_dir)]
    unknown = sorted({p.name for p in _class_folders(test_dir)} - set(class_names))
    if unknown:
        raise DatasetError(f"{test_dir} has classes that {train_dir} lacks: {unknown}")
    train_images, train_labels, mode, size = _read_split(train_dir, class_names, None, None)
    test_images, test_labels, _, _ = _read_split(test_dir, class_names, mode, size)
    train_images, test_images, normalisation = standardise(resize_images(train_images, image_size),
                                                           resize_images(test_images, image_size))
    return LoadedDataset(root.name, TensorDataset(train_images, train_labels), TensorDataset(test_images, test_labels),
                         num_classes=len(class_names), in_chans=train_images.shape[1],
                         input_shape=tuple(train_images.shape[1:]), class_names=class_names,
                         normalisation=normalisation)
