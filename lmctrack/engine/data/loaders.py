"""Where datasets live and how they are read (never downloaded): everything under
`<root>/<name>/`, in torchvision's own layout inside it, the reference implementation's convention:
    mnist          <root>/mnist/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte
    fashion_mnist  <root>/fashion_mnist/FashionMNIST/raw/ (same four files)
    cifar10        <root>/cifar10/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}
    cifar100       <root>/cifar100/cifar-100-python/{train,test,meta}
    imagenet       <root>/imagenet/{train,val}/<class>/<image>  (ImageFolder, val sorted by class)
    mnist1d        <root>/mnist1d/mnist1d_<num_samples>.safetensors (optional: generated otherwise)
No file is unpickled except CIFAR's, by a reader that refuses every global but numpy arrays.
"""

from __future__ import annotations

import pickle
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from lmctrack.config.params import DataConfig
from lmctrack.engine.data.datasets import (
    IMAGENET_STATS,
    Dataset,
    Split,
    StreamedImageDataset,
    TensorDataset,
    tensors_dataset,
)
from lmctrack.errors import LmcError, existing_file

# The reference implementation normalises MNIST with these, and CIFAR and ImageNet with the
# ImageNet statistics.
MNIST_STATS = ((0.1307,), (0.3081,))
FASHION_MNIST_STATS = ((0.2860,), (0.3530,))
AUGMENTED_BY_DEFAULT = frozenset({"cifar10", "cifar100", "imagenet"})

_MNIST_FILES = tuple(
    f"{prefix}-{kind}-ubyte"
    for prefix in ("train", "t10k")
    for kind in ("images-idx3", "labels-idx1")
)


@dataclass(frozen=True)
class Layout:
    """A dataset's files: <root>/<name>/<subdir>/<entries>, in the named on-disk layout."""

    subdir: str
    entries: tuple[str, ...]
    kind: str = "torchvision layout"

    def folder(self, root: Path, name: str) -> Path:
        return root / name / self.subdir


LAYOUTS: dict[str, Layout] = {
    "mnist": Layout("MNIST/raw", _MNIST_FILES),
    "fashion_mnist": Layout("FashionMNIST/raw", _MNIST_FILES),
    "cifar10": Layout(
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta"),
    ),
    "cifar100": Layout("cifar-100-python", ("train", "test", "meta")),
    "imagenet": Layout("", ("train", "val"), "ImageFolder layout: <split>/<class>/<image>"),
}


def _require(name: str, root: Path) -> Path:
    """The dataset's folder, or one LmcError naming where it looked and what it expected."""
    layout = LAYOUTS[name]
    folder = layout.folder(root, name)
    if not all((folder / entry).exists() for entry in layout.entries):
        raise LmcError(
            f"{name} not found under {root / name}: expected {folder}/ holding "
            f"{', '.join(layout.entries)} ({layout.kind}); place the dataset there or run "
            f"`lmctrack data import {name} SRC`"
        )
    return folder


def _unreadable(name: str, folder: Path, error: Exception) -> LmcError:
    return LmcError(
        f"{name}: unreadable files in {folder} ({type(error).__name__}: {error}); replace them "
        f"with the original files or re-run `lmctrack data import {name} SRC`"
    )


def _standardise(
    train: Split, test: Split, mean: Sequence[float], std: Sequence[float]
) -> tuple[Split, Split, torch.Tensor]:
    """Normalise both splits per channel; also return a black pixel's normalised value (the fill)."""
    m, s = torch.tensor(mean), torch.tensor(std)
    shape = (1, -1) + (1,) * (train.x.dim() - 2)
    out = [Split((d.x - m.view(shape)) / s.view(shape), d.y) for d in (train, test)]
    return out[0], out[1], -m / s


def _train_stats(x: torch.Tensor) -> tuple[tuple[float], tuple[float]]:
    """One mean and std over the whole training set (MNIST-1D, digits)."""
    return (float(x.mean()),), (float(x.std()),)


def _augment(cfg: DataConfig) -> bool:
    return cfg.augment if cfg.augment is not None else cfg.name in AUGMENTED_BY_DEFAULT


# ---- MNIST-1D and digits: embedded, always available ------------------------------------------


def mnist1d_file(root: Path, num_samples: int) -> Path:
    return root / "mnist1d" / f"mnist1d_{num_samples}.safetensors"


def generate_mnist1d(num_samples: int) -> dict[str, torch.Tensor]:
    """MNIST-1D from the package's templates with its default seed: the same tensors every time."""
    if num_samples < 10:
        raise LmcError(f"data.num_samples={num_samples} is too small for mnist1d; use at least 10")
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    py_state, np_state = random.getstate(), np.random.get_state()
    try:  # make_dataset reseeds the global RNGs; keep the caller's streams as they were
        raw = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return {
        "x_train": torch.from_numpy(raw["x"]).float(),
        "y_train": torch.from_numpy(raw["y"]).long(),
        "x_test": torch.from_numpy(raw["x_test"]).float(),
        "y_test": torch.from_numpy(raw["y_test"]).long(),
    }


def _load_mnist1d(cfg: DataConfig, root: Path) -> Dataset:
    path = mnist1d_file(root, cfg.num_samples)
    if path.is_file():
        try:
            t = load_file(str(path))
            train, test = Split(t["x_train"], t["y_train"]), Split(t["x_test"], t["y_test"])
        except (SafetensorError, OSError, KeyError, ValueError) as e:
            raise LmcError(
                f"mnist1d: unreadable {path} ({e}); delete it and run `lmctrack data mnist1d`"
            ) from None
    else:
        t = generate_mnist1d(cfg.num_samples)
        train, test = Split(t["x_train"], t["y_train"]), Split(t["x_test"], t["y_test"])
    train, test, fill = _standardise(train, test, *_train_stats(train.x))
    return TensorDataset("mnist1d", train, test, 10, _augment(cfg), fill)


def _load_digits(cfg: DataConfig, root: Path) -> Dataset:
    """scikit-learn's 1797 8x8 digits; a fixed-seed 80/20 split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images).float().div(16).unsqueeze(1)
    y = torch.from_numpy(digits.target).long()
    perm = torch.from_numpy(np.random.RandomState(0).permutation(len(y)))
    test_idx, train_idx = perm[: len(y) // 5], perm[len(y) // 5 :]
    train, test = Split(x[train_idx], y[train_idx]), Split(x[test_idx], y[test_idx])
    train, test, fill = _standardise(train, test, *_train_stats(train.x))
    return TensorDataset("digits", train, test, 10, _augment(cfg), fill)


# ---- torchvision datasets read from root ------------------------------------------------------


def read_idx(path: Path) -> torch.Tensor:
    """An idx file of uint8 values (MNIST's format: magic 0x000008<ndim>, big-endian dims).

    Read by hand rather than through torchvision's MNIST class, which unpickles a legacy
    `processed/*.pt` file when it finds one: here such files are ignored.
    """
    data = path.read_bytes()
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path.name} is not an idx file of uint8 values")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if len(data) != header + int(np.prod(dims)):
        raise ValueError(f"{path.name} holds {len(data) - header} bytes, its header says {dims}")
    values = np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)
    return torch.from_numpy(values.copy())


def _load_mnist(cfg: DataConfig, root: Path) -> Dataset:
    folder = _require(cfg.name, root)
    stats = MNIST_STATS if cfg.name == "mnist" else FASHION_MNIST_STATS
    try:
        splits = [
            Split(
                read_idx(folder / f"{prefix}-images-idx3-ubyte").unsqueeze(1).float().div(255),
                read_idx(folder / f"{prefix}-labels-idx1-ubyte").long(),
            )
            for prefix in ("train", "t10k")
        ]
    except (ValueError, OSError) as e:
        raise _unreadable(cfg.name, folder, e) from None
    train, test, fill = _standardise(*splits, *stats)
    return TensorDataset(cfg.name, train, test, 10, _augment(cfg), fill)


_PICKLE_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }
)


class _ArrayUnpickler(pickle.Unpickler):
    """Reads CIFAR's pickled dicts of arrays and refuses every other global: no code runs."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_cifar_pickle(path: Path) -> dict:
    """One file of CIFAR's python version (torchvision reads the same files with plain pickle)."""
    with open(path, "rb") as f:
        return _ArrayUnpickler(f, encoding="latin1").load()


def _cifar_split(files: list[Path], label_key: str) -> Split:
    entries = [read_cifar_pickle(f) for f in files]
    data = np.concatenate([e["data"] for e in entries]).reshape(-1, 3, 32, 32)
    labels = [label for e in entries for label in e[label_key]]
    return Split(torch.from_numpy(data).float().div(255), torch.tensor(labels, dtype=torch.long))


def _load_cifar(cfg: DataConfig, root: Path) -> Dataset:
    """CIFAR's python pickles, read by our own restricted reader.

    torchvision's CIFAR classes verify each file's md5 against the full release; reading the same
    files ourselves keeps the on-disk layout while letting small test files load and refusing
    pickles that would run code.
    """
    folder = _require(cfg.name, root)
    if cfg.name == "cifar10":
        train_files, test_files = [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]
        meta, label_key, names_key = "batches.meta", "labels", "label_names"
    else:
        train_files, test_files = ["train"], ["test"]
        meta, label_key, names_key = "meta", "fine_labels", "fine_label_names"
    try:
        train = _cifar_split([folder / f for f in train_files], label_key)
        test = _cifar_split([folder / f for f in test_files], label_key)
        num_classes = len(read_cifar_pickle(folder / meta)[names_key])
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, OSError) as e:
        raise _unreadable(cfg.name, folder, e) from None
    train, test, fill = _standardise(train, test, *IMAGENET_STATS)
    return TensorDataset(cfg.name, train, test, num_classes, _augment(cfg), fill)


def _load_imagenet(cfg: DataConfig, root: Path) -> Dataset:
    folder = _require("imagenet", root)
    return StreamedImageDataset("imagenet", folder / "train", folder / "val", _augment(cfg))


# ---- a dataset given as tensors (synthetic, distilled) ----------------------------------------


def _load_tensors(cfg: DataConfig, root: Path) -> Dataset:
    """x_train, y_train [, x_test, y_test] from a safetensors file, used as they are."""
    fix = "set data.path to a safetensors file with x_train, y_train (optionally x_test, y_test)"
    if cfg.path is None:
        raise LmcError(f"data.name is 'tensors' but data.path is not set; {fix}")
    path = Path(cfg.path).expanduser().resolve()
    existing_file(path, f"tensors file {path}", fix)
    try:
        t = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise LmcError(f"tensors file {path} is unreadable ({e}); {fix}") from None
    return tensors_dataset("tensors", t, _augment(cfg), f"tensors file {path}", fix)


_LOADERS: dict[str, Callable[[DataConfig, Path], Dataset]] = {
    "mnist1d": _load_mnist1d,
    "digits": _load_digits,
    "mnist": _load_mnist,
    "fashion_mnist": _load_mnist,
    "cifar10": _load_cifar,
    "cifar100": _load_cifar,
    "imagenet": _load_imagenet,
    "tensors": _load_tensors,
}


def load_dataset(cfg: DataConfig) -> Dataset:
    """The dataset named by cfg, read from cfg.root (relative to the working directory), or the
    user's own (data.user)."""
    from lmctrack.engine.data.validation import hold_out

    if cfg.name not in _LOADERS:
        from lmctrack.engine.data.user import load_user_data

        return hold_out(load_user_data(cfg), cfg.validation)
    if cfg.kwargs:
        raise LmcError(f"data {cfg.name} takes no data.kwargs; remove them")
    return hold_out(_LOADERS[cfg.name](cfg, Path(cfg.root).expanduser().resolve()), cfg.validation)
