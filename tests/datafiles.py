"""Small dataset files in the real on-disk formats, for tests that read them through real readers."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> Path:
    """An idx file (MNIST's format): magic 0x0000_08_<ndim>, big-endian dims, then uint8 data."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def make_mnist_files(
    folder: Path, n_train: int = 12, n_test: int = 6, seed: int = 0, compress: bool = False
) -> dict[str, np.ndarray]:
    """The four MNIST idx files in `folder`; returns the images and labels written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        arrays[f"{prefix}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{prefix}_labels"] = (np.arange(n) % 10).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte", arrays[f"{prefix}_images"], compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", arrays[f"{prefix}_labels"], compress)
    return arrays


def _write_cifar_pickle(path: Path, entry: dict) -> None:
    """As the real files: a protocol-2 pickle naming numpy.core.multiarray (numpy 1 name)."""
    data = pickle.dumps(entry, protocol=2).replace(
        b"numpy._core.multiarray", b"numpy.core.multiarray"
    )
    path.write_bytes(data)


def make_cifar_files(
    folder: Path, per_file: int = 4, cifar100: bool = False, seed: int = 0
) -> dict[str, np.ndarray]:
    """CIFAR's python version in `folder`; returns the train/test images (N, 3, 32, 32) and labels."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    classes = 100 if cifar100 else 10
    label_key = "fine_labels" if cifar100 else "labels"
    if cifar100:
        files = {"train": ["train"], "test": ["test"]}
        meta, names_key = "meta", "fine_label_names"
    else:
        files = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
        meta, names_key = "batches.meta", "label_names"
    out = {}
    for split, names in files.items():
        images, labels = [], []
        for name in names:
            x = rng.integers(0, 256, (per_file, 3072), dtype=np.uint8)
            y = rng.integers(0, classes, per_file).tolist()
            _write_cifar_pickle(folder / name, {"batch_label": name, label_key: y, "data": x})
            images.append(x)
            labels += y
        out[f"{split}_images"] = np.concatenate(images).reshape(-1, 3, 32, 32)
        out[f"{split}_labels"] = np.array(labels)
    _write_cifar_pickle(folder / meta, {names_key: [f"class{i}" for i in range(classes)]})
    return out


def make_image_folder(folder: Path, classes: int = 3, per_class: int = 4, size: int = 20) -> None:
    """An ImageFolder tree: folder/{train,val}/<class>/<i>.png with random RGB images."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(classes):
            class_dir = folder / split / f"class{c}"
            class_dir.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size, size + 4, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(class_dir / f"{i}.png")


def make_tensors_file(path: Path, n_train: int = 10, n_test: int | None = 4) -> Path:
    """A safetensors dataset file: x_train, y_train [, x_test, y_test]."""
    g = torch.Generator().manual_seed(0)
    tensors = {
        "x_train": torch.randn(n_train, 3, 8, 8, generator=g),
        "y_train": torch.arange(n_train) % 5,
    }
    if n_test is not None:
        tensors["x_test"] = torch.randn(n_test, 3, 8, 8, generator=g)
        tensors["y_test"] = torch.arange(n_test) % 5
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path
