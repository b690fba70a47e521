"""Datasets as seeded streams of training batches, so that SGD noise is a function of two seeds.

The batch of iteration t depends only on (data_order_seed, augment_seed, t): epoch e = t // ipe
and position b = t % ipe (ipe = ceil(N / batch_size), the last batch of an epoch is smaller); the
order of epoch e is torch.randperm(N) drawn from a generator seeded with derive_seed(ORDER,
data_order_seed, e); augmentation at iteration t draws from a generator seeded with
derive_seed(AUGMENT, augment_seed, t). The stream tags keep the two apart when a copy uses one
noise seed for both.
A copy rewound to step k therefore sees exactly the batches a run from step 0 saw from k on.

Where datasets live (never downloaded): everything under `<root>/<name>/`, in torchvision's own
layout inside it, the reference implementation's convention:
    mnist          <root>/mnist/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte
    fashion_mnist  <root>/fashion_mnist/FashionMNIST/raw/ (same four files)
    cifar10        <root>/cifar10/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}
    cifar100       <root>/cifar100/cifar-100-python/{train,test,meta}
    imagenet       <root>/imagenet/{train,val}/<class>/<image>  (ImageFolder, val sorted by class)
    mnist1d        <root>/mnist1d/mnist1d_<num_samples>.safetensors (optional: generated otherwise)
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import pickle
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from lmctrack.config import DataConfig
from lmctrack.errors import LmcError

Device = torch.device | str

# The reference implementation normalises MNIST with these, and CIFAR and ImageNet with the
# ImageNet statistics.
MNIST_STATS = ((0.1307,), (0.3081,))
FASHION_MNIST_STATS = ((0.2860,), (0.3530,))
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
AUGMENTED_BY_DEFAULT = frozenset({"cifar10", "cifar100", "imagenet"})
SPLITS = ("train", "test")
ORDER, AUGMENT = 0, 1  # stream tags of the two kinds of SGD noise


def derive_seed(*parts: int) -> int:
    """One 63-bit seed from several integers, so (seed, 1) and (seed + 1, 0) give unrelated streams."""
    digest = hashlib.sha256(",".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def seeded_generator(*parts: int) -> torch.Generator:
    """A CPU generator seeded with derive_seed(*parts)."""
    return torch.Generator().manual_seed(derive_seed(*parts))


class EpochOrder:
    """The examples of each iteration: slices of a per-epoch permutation (the last one smaller)."""

    def __init__(
        self, num_examples: int, batch_size: int, data_order_seed: int, device: Device = "cpu"
    ):
        if batch_size <= 0:
            raise LmcError(f"batch size {batch_size} is not positive; set train.batch_size >= 1")
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.seed = data_order_seed
        self.device = torch.device(device)
        self.iterations_per_epoch = math.ceil(num_examples / batch_size)
        self._epoch = -1
        self._perm = torch.empty(0, dtype=torch.long)

    def epoch(self, e: int) -> torch.Tensor:
        """The order of epoch e (cached: consecutive iterations reuse it)."""
        if e != self._epoch:
            perm = torch.randperm(
                self.num_examples, generator=seeded_generator(ORDER, self.seed, e)
            )
            self._perm, self._epoch = perm.to(self.device), e
        return self._perm

    def batch(self, t: int) -> torch.Tensor:
        """Indices of the examples that iteration t trains on."""
        e, b = divmod(t, self.iterations_per_epoch)
        return self.epoch(e)[b * self.batch_size : (b + 1) * self.batch_size]


def random_crop_flip(
    x: torch.Tensor, fill: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Batched random crop (padding 1/8 of the side, 4 pixels at 32x32) plus horizontal flip.

    `fill` is a black pixel per channel after normalisation: the reference pads images with zeros
    before normalising. Offsets and flips are drawn on the CPU generator, whatever x's device.
    """
    b, c, h, w = x.shape
    pad = max(1, h // 8)
    padded = x.new_empty(b, c, h + 2 * pad, w + 2 * pad)
    padded[:] = fill.to(x.device, x.dtype).view(1, -1, 1, 1)
    padded[:, :, pad : pad + h, pad : pad + w] = x
    top = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
    left = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
    flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
    # Two gathers (rows, then columns); a flip is the column index read backwards.
    span_h, span_w = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    rows = (top[:, None] + span_h).view(b, 1, h, 1).expand(b, c, h, w + 2 * pad)
    cols = left[:, None] + torch.where(flip[:, None], w - 1 - span_w, span_w)
    return padded.gather(2, rows).gather(3, cols.view(b, 1, 1, w).expand(b, c, h, w))


@dataclass
class Split:
    """One split in memory: normalised float32 inputs (N, *input_shape) and int64 labels (N,)."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"{len(self.x)} inputs but {len(self.y)} labels")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise LmcError(f"unknown split '{split}'; use 'train' or 'test'")


def _hash(parts: Iterable[tuple[str, torch.Tensor | str]]) -> str:
    digest = hashlib.sha256()
    for key, value in parts:
        if isinstance(value, str):
            digest.update(f"{key}={value};".encode())
            continue
        flat = value.detach().cpu().contiguous().view(-1)
        digest.update(f"{key}:{flat.dtype}:{tuple(value.shape)};".encode())
        digest.update(flat.view(torch.uint8).numpy())
    return digest.hexdigest()[:16]


class Dataset(ABC):
    """A classification dataset that yields seeded training batches and fixed evaluation batches."""

    name: str
    num_classes: int
    input_shape: tuple[int, ...]
    augment: bool

    @abstractmethod
    def num_examples(self, split: str) -> int: ...

    @abstractmethod
    def train_batches(
        self,
        batch_size: int,
        data_order_seed: int,
        augment_seed: int,
        start_step: int = 0,
        device: Device = "cpu",
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Infinite: the batches of iterations start_step, start_step + 1, ... (module docstring)."""

    @abstractmethod
    def eval_batches(
        self, split: str, batch_size: int = 1000, device: Device = "cpu", limit: int | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The first `limit` examples of the split (all when None), in file order, not augmented."""

    @abstractmethod
    def to(self, device: Device) -> Dataset: ...

    @abstractmethod
    def fingerprint(self) -> str: ...

    def iterations_per_epoch(self, batch_size: int) -> int:
        return math.ceil(self.num_examples("train") / batch_size)


class TensorDataset(Dataset):
    """A dataset held in memory (on the training device after `to`): batches are tensor indexing."""

    def __init__(
        self,
        name: str,
        train: Split,
        test: Split,
        num_classes: int,
        augment: bool = False,
        fill: torch.Tensor | None = None,
    ):
        if augment and train.x.dim() != 4:
            raise LmcError(
                f"{name}: data.augment (random crop + flip) needs image inputs (C, H, W), not "
                f"{tuple(train.x.shape[1:])}; set data.augment to false"
            )
        self.name = name
        self.train, self.test = train, test
        self.num_classes = num_classes
        self.input_shape = tuple(train.x.shape[1:])
        self.augment = augment
        self.fill = torch.zeros(1) if fill is None else fill
        self._fingerprint: str | None = None

    def _split(self, split: str) -> Split:
        _check_split(split)
        return self.train if split == "train" else self.test

    def num_examples(self, split: str) -> int:
        return len(self._split(split).y)

    def train_batches(
        self,
        batch_size: int,
        data_order_seed: int,
        augment_seed: int,
        start_step: int = 0,
        device: Device = "cpu",
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = EpochOrder(len(self.train.y), batch_size, data_order_seed, self.train.x.device)
        for t in itertools.count(start_step):
            idx = order.batch(t)
            x = self.train.x[idx].to(device, non_blocking=True)
            if self.augment:
                x = random_crop_flip(x, self.fill, seeded_generator(AUGMENT, augment_seed, t))
            yield x, self.train.y[idx].to(device, non_blocking=True)

    def eval_batches(
        self, split: str, batch_size: int = 1000, device: Device = "cpu", limit: int | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        data = self._split(split)
        n = len(data.y) if limit is None else min(limit, len(data.y))
        for i in range(0, n, batch_size):
            end = min(i + batch_size, n)
            yield data.x[i:end].to(device), data.y[i:end].to(device)

    def to(self, device: Device) -> TensorDataset:
        for split in (self.train, self.test):
            split.x, split.y = split.x.to(device), split.y.to(device)
        return self

    def fingerprint(self) -> str:
        """sha256 of the normalised tensors (cached; moving the data does not change it)."""
        if self._fingerprint is None:
            s = (self.train, self.test)
            self._fingerprint = _hash(
                [("x_train", s[0].x), ("y_train", s[0].y), ("x_test", s[1].x), ("y_test", s[1].y)]
            )
        return self._fingerprint


class _Images(torch.utils.data.Dataset):
    """(path, class) samples read and transformed one by one: the evaluation stream."""

    def __init__(self, samples: Sequence[tuple[str, int]], loader: Callable, transform: Callable):
        self.samples, self.loader, self.transform = samples, loader, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        return self.transform(self.loader(path)), label


class _TrainBatches(_Images):
    """Item t is the whole batch of iteration t, augmented under the RNG seeded for t.

    A batch is built in one worker under torch.random.fork_rng seeded with
    derive_seed(AUGMENT, augment_seed, t), so the augmentation is exact whatever the number of workers, and the global RNG is untouched.
    """

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        loader: Callable,
        transform: Callable,
        order: EpochOrder,
        augment_seed: int,
    ):
        super().__init__(samples, loader, transform)
        self.order, self.augment_seed = order, augment_seed

    def __getitem__(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        idx = self.order.batch(t).tolist()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(AUGMENT, self.augment_seed, t))
            xs = [self.transform(self.loader(self.samples[i][0])) for i in idx]
        return torch.stack(xs), torch.tensor([self.samples[i][1] for i in idx])


class StreamedImageDataset(Dataset):
    """Image folders read from disk by DataLoader workers, never held in memory (ImageNet).

    Exact seeding contract: batch t holds the same examples, augmented the same way, as in an
    in-memory dataset with the same seeds, for any number of workers (see _TrainBatches).
    """

    def __init__(
        self,
        name: str,
        train_dir: Path,
        test_dir: Path,
        augment: bool,
        image_size: int = 224,
        resize: int = 256,
        num_workers: int | None = None,
    ):
        from torchvision import transforms as T
        from torchvision.datasets import ImageFolder

        try:
            train, test = ImageFolder(str(train_dir)), ImageFolder(str(test_dir))
        except (FileNotFoundError, OSError) as e:
            raise LmcError(
                f"{name}: no images in class folders ({e}); lay out {train_dir} and {test_dir} "
                "as <class>/<image>"
            ) from None
        if train.classes != test.classes:
            raise LmcError(
                f"{name}: {test_dir} has other class folders than {train_dir}; give both the same "
                "<class> folders"
            )
        self.name = name
        self.num_classes = len(train.classes)
        self.input_shape = (3, image_size, image_size)
        self.augment = augment
        self.num_workers = min(8, os.cpu_count() or 1) if num_workers is None else num_workers
        self._loader = train.loader
        self._samples = {"train": train.samples, "test": test.samples}
        self._roots = {"train": Path(train_dir), "test": Path(test_dir)}
        normalise = [T.ToTensor(), T.Normalize(*IMAGENET_STATS)]
        self._eval_transform = T.Compose([T.Resize(resize), T.CenterCrop(image_size), *normalise])
        augmentation = [T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), *normalise]
        self._train_transform = T.Compose(augmentation) if augment else self._eval_transform

    def num_examples(self, split: str) -> int:
        _check_split(split)
        return len(self._samples[split])

    def _stream(self, dataset: torch.utils.data.Dataset, device: Device, **kwargs) -> Iterator:
        loader = torch.utils.data.DataLoader(
            dataset,
            num_workers=self.num_workers,
            pin_memory=torch.device(device).type == "cuda",
            generator=torch.Generator(),  # the loader's own seed draw leaves the global RNG alone
            **kwargs,
        )
        for x, y in loader:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    def train_batches(
        self,
        batch_size: int,
        data_order_seed: int,
        augment_seed: int,
        start_step: int = 0,
        device: Device = "cpu",
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        samples = self._samples["train"]
        order = EpochOrder(len(samples), batch_size, data_order_seed)
        batches = _TrainBatches(samples, self._loader, self._train_transform, order, augment_seed)
        return self._stream(batches, device, batch_size=None, sampler=itertools.count(start_step))

    def eval_batches(
        self, split: str, batch_size: int = 1000, device: Device = "cpu", limit: int | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        _check_split(split)
        samples = self._samples[split][:limit]
        return self._stream(
            _Images(samples, self._loader, self._eval_transform), device, batch_size=batch_size
        )

    def to(self, device: Device) -> StreamedImageDataset:
        return self

    def fingerprint(self) -> str:
        """sha256 of the file listing (relative paths and classes), not of the image bytes."""
        listing = {
            split: [(str(Path(p).relative_to(self._roots[split])), c) for p, c in samples]
            for split, samples in self._samples.items()
        }
        return _hash([("listing", json.dumps(listing))])


def dataset_fingerprint(ds: Dataset) -> str:
    """A 16-hex content hash that tells datasets apart (logged as the MLflow dataset digest)."""
    return ds.fingerprint()


# ---- where datasets live ------------------------------------------------------------------------

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


def _load_mnist(cfg: DataConfig, root: Path) -> Dataset:
    from torchvision.datasets import MNIST, FashionMNIST

    folder = _require(cfg.name, root)
    reader, stats = (
        (MNIST, MNIST_STATS) if cfg.name == "mnist" else (FashionMNIST, FASHION_MNIST_STATS)
    )
    try:
        train, test = (reader(str(root / cfg.name), train=flag) for flag in (True, False))
        splits = [
            Split(d.data.unsqueeze(1).float().div(255), d.targets.long()) for d in (train, test)
        ]
    except (RuntimeError, ValueError, TypeError, AssertionError, OSError) as e:
        raise _unreadable(cfg.name, folder, e) from None
    train_split, test_split, fill = _standardise(*splits, *stats)
    return TensorDataset(cfg.name, train_split, test_split, 10, _augment(cfg), fill)


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
    if not path.is_file():
        raise LmcError(f"tensors file {path} not found; {fix}")
    try:
        t = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise LmcError(f"tensors file {path} is unreadable ({e}); {fix}") from None
    missing = [k for k in ("x_train", "y_train") if k not in t]
    if missing or ("x_test" in t) != ("y_test" in t):
        missing = missing or ["x_test" if "x_test" not in t else "y_test"]
        raise LmcError(f"tensors file {path} lacks {', '.join(missing)}; {fix}")
    try:
        train = Split(t["x_train"].float(), t["y_train"].long())
        test = Split(t["x_test"].float(), t["y_test"].long()) if "x_test" in t else train
    except ValueError as e:
        raise LmcError(f"tensors file {path}: {e}; {fix}") from None
    if len(train.y) == 0 or len(test.y) == 0:
        raise LmcError(f"tensors file {path} has an empty split; {fix}")
    if min(int(train.y.min()), int(test.y.min())) < 0:
        raise LmcError(f"tensors file {path} has negative labels; labels must be 0..classes-1")
    num_classes = max(int(train.y.max()), int(test.y.max())) + 1
    return TensorDataset("tensors", train, test, num_classes, _augment(cfg))


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
    """The dataset named by cfg, read from cfg.root (relative to the working directory)."""
    return _LOADERS[cfg.name](cfg, Path(cfg.root).expanduser().resolve())
