"""CIFAR-10 and CIFAR-100 from the official python-version archives, packed or extracted.

`root` may be the archive itself (cifar-10-python.tar.gz), its extracted folder
(cifar-10-batches-py), or a directory holding either. The batches are pickles; they are read
with an unpickler that accepts only the builtins and numpy arrays they contain, so a hostile
archive cannot run code.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .base import DatasetError, LoadedDataset, Normalisation, resize_images
from .download import download_file

# Per-channel statistics of the CIFAR-10 training set, used by most training recipes.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class CifarFormat:
    archive: str
    folder: str
    train_batches: tuple[str, ...]
    test_batches: tuple[str, ...]
    label_key: str
    meta_file: str
    names_key: str
    num_classes: int
    url: str
    md5: str


CIFAR_FORMATS = {
    "cifar10": CifarFormat("cifar-10-python.tar.gz", "cifar-10-batches-py",
                           tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "labels",
                           "batches.meta", "label_names", 10,
                           "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                           "c58f30108f718f92721af3b95e74349a"),
    "cifar100": CifarFormat("cifar-100-python.tar.gz", "cifar-100-python", ("train",), ("test",), "fine_labels",
                            "meta", "fine_label_names", 100,
                            "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                            "eb9058c3a382ffc7106e4002c42a8d85"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Only what a CIFAR batch holds: dicts, lists, bytes, str and numpy arrays."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR batch")
        return super().find_class(module, name)


def _read_batch(raw: bytes, what: str) -> dict[str, object]:
    try:
        batch = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as error:  # any unpickling failure means the file is not a CIFAR batch
        raise DatasetError(f"{what} is corrupt or not a CIFAR batch ({error})") from None
    if not isinstance(batch, dict):
        raise DatasetError(f"{what} is not a CIFAR batch (a {type(batch).__name__}, not a dict)")
    return {key.decode() if isinstance(key, bytes) else key: value for key, value in batch.items()}


class _BatchSource:
    """Reads named members from either the tar archive or the extracted folder."""

    def __init__(self, path: Path, fmt: CifarFormat):
        self.path, self.fmt = path, fmt
        self.archive = None
        if path.is_file():
            try:
                self.archive = tarfile.open(path, "r:*")
                self.members = {Path(m.name).name: m for m in self.archive.getmembers() if m.isfile()}
            except (tarfile.TarError, OSError, EOFError) as error:
                raise DatasetError(f"{path} is not a readable {fmt.archive} archive ({error})") from None

    def read(self, name: str) -> bytes:
        try:
            if self.archive is not None:
                if name not in self.members:
                    raise DatasetError(f"{self.path} has no {name}: is it {self.fmt.archive}?")
                return self.archive.extractfile(self.members[name]).read()
            return (self.path / name).read_bytes()
        except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
            raise DatasetError(f"cannot read {name} from {self.path} ({error})") from None


def find_cifar(name: str, root: Path, download: bool) -> Path:
    """The archive or extracted folder of `name` under `root` (or `root` itself); downloads it if asked."""
    fmt = CIFAR_FORMATS[name]
    candidates = [root] if root.name in (fmt.archive, fmt.folder) else [root / fmt.folder, root / fmt.archive]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    if download:
        return download_file(fmt.url, root / fmt.archive, fmt.md5)
    raise DatasetError(f"{name} not found: expected {' or '.join(map(str, candidates))}; download {fmt.url} "
                       f"and put it there (or pass --download)")


def _split(source: _BatchSource, batches: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    fmt = source.fmt
    images, labels = [], []
    for batch_name in batches:
        what = f"{batch_name} in {source.path}"
        batch = _read_batch(source.read(batch_name), what)
        data, batch_labels = batch.get("data"), batch.get(fmt.label_key)
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            shape = getattr(data, "shape", None)
            raise DatasetError(f"{what}: 'data' must be a uint8 array of shape (N, 3072) = 3x32x32 images, "
                               f"got {type(data).__name__} {shape}")
        batch_labels = np.asarray(batch_labels, dtype=np.int64) if batch_labels is not None else None
        if batch_labels is None or batch_labels.shape != (len(data),):
            raise DatasetError(f"{what}: needs one '{fmt.label_key}' entry per image")
        if batch_labels.min(initial=0) < 0 or batch_labels.max(initial=0) >= fmt.num_classes:
            raise DatasetError(f"{what}: labels must be in 0..{fmt.num_classes - 1}")
        images.append(torch.from_numpy(data.reshape(-1, 3, 32, 32)))
        labels.append(torch.from_numpy(batch_labels))
    return torch.cat(images), torch.cat(labels)


def _class_names(source: _BatchSource) -> list[str]:
    fmt = source.fmt
    try:
        meta = _read_batch(source.read(fmt.meta_file), f"{fmt.meta_file} in {source.path}")
        return [n.decode() if isinstance(n, bytes) else str(n) for n in meta[fmt.names_key]]
    except (DatasetError, KeyError, TypeError):
        return [str(i) for i in range(fmt.num_classes)]  # the names are cosmetic; a missing meta file is fine


CIFAR_NORMALISATION = Normalisation(CIFAR_MEAN, CIFAR_STD)


def normalise_cifar(images: torch.Tensor, image_size: int | None) -> torch.Tensor:
    return CIFAR_NORMALISATION.apply(resize_images(images.float() / 255.0, image_size))


def load_cifar(name: str, root: Path, image_size: int | None = None, download: bool = False) -> LoadedDataset:
    """CIFAR-10 (`name="cifar10"`) or CIFAR-100 (`"cifar100"`, fine labels) as in-memory tensors."""
    source = _BatchSource(find_cifar(name, Path(root), download), CIFAR_FORMATS[name])
    train_images, train_labels = _split(source, source.fmt.train_batches)
    test_images, test_labels = _split(source, source.fmt.test_batches)
    train = TensorDataset(normalise_cifar(train_images, image_size), train_labels)
    test = TensorDataset(normalise_cifar(test_images, image_size), test_labels)
    return LoadedDataset(name, train, test, num_classes=source.fmt.num_classes, in_chans=3,
                         input_shape=tuple(train.tensors[0].shape[1:]), class_names=_class_names(source),
                         normalisation=CIFAR_NORMALISATION)
