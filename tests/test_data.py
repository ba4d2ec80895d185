"""groupconv.data: the embedded datasets, and CIFAR / ImageFolder from files written here in the real formats."""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import tarfile
import time

import numpy as np
import pytest
import torch

from groupconv.data import DatasetError, load_dataset
from groupconv.data import cifar as cifar_module
from groupconv.data import mnist1d as mnist1d_module


# ---------------------------------------------------------------- writers of the real formats

def cifar_batch(count: int, seed: int, label_key: str, num_classes: int) -> dict:
    rng = np.random.default_rng(seed)
    return {b"batch_label": b"testing batch", label_key.encode(): rng.integers(0, num_classes, count).tolist(),
            b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
            b"filenames": [f"img{i}.png".encode() for i in range(count)]}


def write_cifar10(root, packed: bool = True, per_batch: int = 4):
    """A cifar-10-python.tar.gz (or its extracted cifar-10-batches-py/) with `per_batch` images per batch."""
    members = {f"data_batch_{i}": cifar_batch(per_batch, i, "labels", 10) for i in range(1, 6)}
    members["test_batch"] = cifar_batch(per_batch, 9, "labels", 10)
    members["batches.meta"] = {b"label_names": [f"class{i}".encode() for i in range(10)]}
    return _write_cifar(root, "cifar-10-python.tar.gz", "cifar-10-batches-py", members, packed)


def write_cifar100(root, per_batch: int = 6):
    members = {"train": cifar_batch(per_batch, 1, "fine_labels", 100),
               "test": cifar_batch(per_batch, 2, "fine_labels", 100),
               "meta": {b"fine_label_names": [f"c{i}".encode() for i in range(100)]}}
    return _write_cifar(root, "cifar-100-python.tar.gz", "cifar-100-python", members, True)


def _write_cifar(root, archive: str, folder: str, members: dict, packed: bool):
    root.mkdir(parents=True, exist_ok=True)
    if not packed:
        (root / folder).mkdir()
        for name, content in members.items():
            (root / folder / name).write_bytes(pickle.dumps(content, protocol=2))
        return root / folder
    path = root / archive
    with tarfile.open(path, "w:gz") as tar:
        for name, content in members.items():
            raw = pickle.dumps(content, protocol=2)
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


def write_image_folder(root, classes=("a", "b", "c"), train_per_class=4, test_per_class=2, size=8, mode="L"):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 60, (size, size), dtype=np.uint8)
                pixels[label * size // len(classes):(label + 1) * size // len(classes)] += 180  # a bar per class
                image = Image.fromarray(pixels, "L").convert(mode)
                image.save(folder / f"{i}.png")
    return root


# ---------------------------------------------------------------- embedded

def test_digits_default_size_split_and_standardisation():
    data = load_dataset("digits")
    x, y = data.train.tensors
    assert x.shape == (1437, 1, 16, 16) and data.test.tensors[0].shape == (360, 1, 16, 16)
    assert data.input_shape == (1, 16, 16) and data.num_classes == 10 and data.in_chans == 1
    assert sorted(y.unique().tolist()) == list(range(10)) and y.dtype == torch.int64
    assert abs(x.mean().item()) < 1e-4 and abs(x.std().item() - 1) < 1e-2
    assert load_dataset("digits", image_size=8).input_shape == (1, 8, 8)  # the original 8x8


def test_mnist1d_is_generated_offline_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("GROUPCONV_CACHE_DIR", str(tmp_path))
    mnist1d_module.generate_mnist1d.cache_clear()

    def no_network(*args, **kwargs):
        raise AssertionError("MNIST-1D must not touch the network")

    import socket
    monkeypatch.setattr(socket.socket, "connect", no_network)
    state = np.random.get_state()
    data = load_dataset("mnist1d")
    assert data.train.tensors[0].shape == (4000, 1, 40) and data.test.tensors[0].shape == (1000, 1, 40)
    assert data.input_shape == (1, 40) and data.num_classes == 10
    assert np.array_equal(np.random.get_state()[1], state[1])  # the caller's numpy stream is left alone
    cache = tmp_path / "mnist1d-seed42.npz"
    assert cache.is_file()

    mnist1d_module.generate_mnist1d.cache_clear()
    again = load_dataset("mnist1d")  # from the cache file
    assert torch.equal(again.train.tensors[0], data.train.tensors[0])

    cache.write_bytes(b"not an npz")  # a damaged cache is regenerated, not an error
    mnist1d_module.generate_mnist1d.cache_clear()
    assert torch.equal(load_dataset("mnist1d").test.tensors[1], data.test.tensors[1])
    mnist1d_module.generate_mnist1d.cache_clear()


def test_unknown_dataset_and_bad_image_size():
    with pytest.raises(DatasetError, match="unknown dataset 'mnist'"):
        load_dataset("mnist")
    with pytest.raises(DatasetError, match="image_size=0"):
        load_dataset("digits", image_size=0)


# ---------------------------------------------------------------- CIFAR

@pytest.mark.parametrize("packed", [True, False])
def test_cifar10_from_archive_or_folder(tmp_path, packed):
    write_cifar10(tmp_path, packed=packed)
    data = load_dataset("cifar10", tmp_path)
    assert data.train.tensors[0].shape == (20, 3, 32, 32) and data.test.tensors[0].shape == (4, 3, 32, 32)
    assert data.num_classes == 10 and data.class_names[3] == "class3"
    batch = cifar_batch(4, 1, "labels", 10)
    first = torch.from_numpy(batch[b"data"][0].reshape(3, 32, 32)).float() / 255
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in (cifar_module.CIFAR_MEAN, cifar_module.CIFAR_STD))
    expected = (first - mean) / std
    assert torch.allclose(data.train.tensors[0][0], expected)
    assert data.train.tensors[1][:4].tolist() == batch[b"labels"]
    assert load_dataset("cifar10", tmp_path, image_size=16).input_shape == (3, 16, 16)


def test_cifar100_fine_labels(tmp_path):
    path = write_cifar100(tmp_path)
    data = load_dataset("cifar100", path)  # the archive itself as root
    assert data.num_classes == 100 and len(data.train) == 6 and data.class_names[99] == "c99"


def test_cifar_missing_path_says_where_to_put_the_files(tmp_path):
    with pytest.raises(DatasetError, match="cifar-10-python.tar.gz.*cs.toronto.edu"):
        load_dataset("cifar10", tmp_path / "nowhere")


def test_cifar_corrupt_archive(tmp_path):
    path = write_cifar10(tmp_path)
    path.write_bytes(path.read_bytes()[:300])  # truncated download
    with pytest.raises(DatasetError, match="cifar-10-python.tar.gz"):
        load_dataset("cifar10", tmp_path)
    path.write_bytes(b"this is not a tar archive at all" * 10)
    with pytest.raises(DatasetError, match="not a readable"):
        load_dataset("cifar10", tmp_path)


def test_cifar_batch_that_would_run_code_is_refused(tmp_path):
    folder = write_cifar10(tmp_path, packed=False)

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": Payload()}))
    with pytest.raises(DatasetError, match="data_batch_1.*not allowed"):
        load_dataset("cifar10", tmp_path)


def test_cifar_batch_of_the_wrong_image_size(tmp_path):
    folder = write_cifar10(tmp_path, packed=False)
    batch = cifar_batch(4, 1, "labels", 10)
    batch[b"data"] = np.zeros((4, 3 * 28 * 28), dtype=np.uint8)
    (folder / "data_batch_2").write_bytes(pickle.dumps(batch))
    with pytest.raises(DatasetError, match=r"data_batch_2.*\(N, 3072\)"):
        load_dataset("cifar10", tmp_path)


def test_download_offline_fails_at_once_and_leaves_nothing(tmp_path, monkeypatch):
    # Port 9 on loopback refuses the connection immediately: what an offline machine sees, without waiting.
    fmt = cifar_module.CIFAR_FORMATS["cifar10"]
    monkeypatch.setitem(cifar_module.CIFAR_FORMATS, "cifar10",
                        dataclasses.replace(fmt, url="http://127.0.0.1:9/cifar-10-python.tar.gz"))
    started = time.perf_counter()
    with pytest.raises(DatasetError, match=f"could not download.*put it at {tmp_path / 'cifar-10-python.tar.gz'}"):
        load_dataset("cifar10", tmp_path, download=True)
    assert time.perf_counter() - started < 10
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- ImageFolder

def test_image_folder_grey_and_rgb(tmp_path):
    write_image_folder(tmp_path / "grey")
    data = load_dataset("folder", tmp_path / "grey")
    assert data.class_names == ["a", "b", "c"] and data.num_classes == 3
    assert data.train.tensors[0].shape == (12, 1, 8, 8) and data.test.tensors[0].shape == (6, 1, 8, 8)
    assert data.train.tensors[1].tolist() == [0] * 4 + [1] * 4 + [2] * 4
    write_image_folder(tmp_path / "rgb", mode="RGB")
    assert load_dataset("folder", tmp_path / "rgb", image_size=16).input_shape == (3, 16, 16)


def test_image_folder_errors(tmp_path):
    with pytest.raises(DatasetError, match="needs a root directory"):
        load_dataset("folder")
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("folder", tmp_path / "missing")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(DatasetError, match="must hold train/<class>/ and test/<class>/"):
        load_dataset("folder", tmp_path / "empty")

    root = write_image_folder(tmp_path / "sizes")
    from PIL import Image

    Image.fromarray(np.zeros((10, 12), dtype=np.uint8)).save(root / "train" / "b" / "odd.png")
    with pytest.raises(DatasetError, match=r"odd.png is 12x10 but the dataset's images are 8x8"):
        load_dataset("folder", root)

    root = write_image_folder(tmp_path / "corrupt")
    (root / "test" / "a" / "0.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DatasetError, match="cannot read image .*0.png"):
        load_dataset("folder", root)
