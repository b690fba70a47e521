"""Datasets: in memory as tensors (batches are indexing) or streamed from image folders by
DataLoader workers, both giving the same seeded batches (see lmctrack.engine.data)."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from lmctrack.config.params import iterations_per_epoch
from lmctrack.engine.data.noise import (
    AUGMENT,
    Device,
    EpochOrder,
    derive_seed,
    random_crop_flip,
    seeded_generator,
)
from lmctrack.errors import LmcError

SPLITS = ("train", "test")
VALIDATION = "validation"  # held out of the training data when data.validation is set
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@dataclass
class Split:
    """One split in memory: float32 inputs (or int64 tokens) (N, *input_shape), int64 labels (N,)."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"{len(self.x)} inputs but {len(self.y)} labels")


def _check_split(split: str) -> None:
    if split not in (*SPLITS, VALIDATION):
        raise LmcError(f"unknown split '{split}'; use 'train' or 'test'")


def no_validation(name: str) -> LmcError:
    return LmcError(
        f"{name} has no validation split; set data.validation (the fraction of the training "
        "data to hold out, e.g. 0.1)"
    )


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

    def train_batches(
        self,
        batch_size: int,
        data_order_seed: int,
        augment_seed: int,
        start_step: int = 0,
        device: Device = "cpu",
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Infinite: the batches of iterations start_step, start_step + 1, ... (module docstring)."""
        n = self.num_examples("train")
        order = EpochOrder(n, batch_size, data_order_seed, self.index_device)
        return self._train_stream(order, augment_seed, itertools.count(start_step), device)

    def eval_batches(
        self, split: str, batch_size: int = 1000, device: Device = "cpu", limit: int | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The first `limit` examples of the split (all when None), in file order, not augmented."""
        _check_split(split)
        n = self.num_examples(split) if limit is None else min(limit, self.num_examples(split))
        return self._eval_stream(split, n, batch_size, device)

    def example(self) -> torch.Tensor:
        """A real batch of training inputs (the first two): what a network is probed on, so
        integer tokens reach an nn.Embedding as integers."""
        return next(iter(self.eval_batches("train", batch_size=2, limit=2)))[0]

    @property
    def index_device(self) -> torch.device:
        """Where the epochs' permutations live: next to the data that they index."""
        return torch.device("cpu")

    @abstractmethod
    def _train_stream(
        self, order: EpochOrder, augment_seed: int, steps: Iterator[int], device: Device
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of iterations `steps` in `order`, augmented under `augment_seed`."""

    @abstractmethod
    def _eval_stream(
        self, split: str, n: int, batch_size: int, device: Device
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The split's first n examples in batches of `batch_size`."""

    @abstractmethod
    def to(self, device: Device) -> Dataset: ...

    @abstractmethod
    def fingerprint(self) -> str: ...

    def iterations_per_epoch(self, batch_size: int) -> int:
        return iterations_per_epoch(self.num_examples("train"), batch_size)


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
        validation: Split | None = None,
    ):
        if augment and train.x.dim() != 4:
            raise LmcError(
                f"{name}: data.augment (random crop + flip) needs image inputs (C, H, W), not "
                f"{tuple(train.x.shape[1:])}; set data.augment to false"
            )
        self.name = name
        self.train, self.test, self.validation = train, test, validation
        self.num_classes = num_classes
        self.input_shape = tuple(train.x.shape[1:])
        self.augment = augment
        self.fill = torch.zeros(1) if fill is None else fill
        self._fingerprint: str | None = None

    def _split(self, split: str) -> Split:
        _check_split(split)
        if split == VALIDATION:
            if self.validation is None:
                raise no_validation(self.name)
            return self.validation
        return self.train if split == "train" else self.test

    def num_examples(self, split: str) -> int:
        return len(self._split(split).y)

    @property
    def index_device(self) -> torch.device:
        return self.train.x.device

    def _train_stream(
        self, order: EpochOrder, augment_seed: int, steps: Iterator[int], device: Device
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for t in steps:
            idx = order.batch(t)
            x = self.train.x[idx].to(device, non_blocking=True)
            if self.augment:
                x = random_crop_flip(x, self.fill, seeded_generator(AUGMENT, augment_seed, t))
            yield x, self.train.y[idx].to(device, non_blocking=True)

    def _eval_stream(
        self, split: str, n: int, batch_size: int, device: Device
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        data = self._split(split)
        for i in range(0, n, batch_size):
            end = min(i + batch_size, n)
            yield data.x[i:end].to(device), data.y[i:end].to(device)

    def to(self, device: Device) -> TensorDataset:
        for split in (self.train, self.test, *([self.validation] if self.validation else [])):
            split.x, split.y = split.x.to(device), split.y.to(device)
        return self

    def fingerprint(self) -> str:
        """sha256 of the normalised tensors (cached; moving the data does not change it)."""
        if self._fingerprint is None:
            s = (self.train, self.test)
            held = self.validation
            extra = [("x_validation", held.x), ("y_validation", held.y)] if held else []
            self._fingerprint = _hash(
                [("x_train", s[0].x), ("y_train", s[0].y), ("x_test", s[1].x), ("y_test", s[1].y)]
                + extra
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
        if split == VALIDATION:
            raise no_validation(self.name)
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

    def _train_stream(
        self, order: EpochOrder, augment_seed: int, steps: Iterator[int], device: Device
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        samples = self._samples["train"]
        batches = _TrainBatches(samples, self._loader, self._train_transform, order, augment_seed)
        return self._stream(batches, device, batch_size=None, sampler=steps)

    def _eval_stream(
        self, split: str, n: int, batch_size: int, device: Device
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        images = _Images(self._samples[split][:n], self._loader, self._eval_transform)
        return self._stream(images, device, batch_size=batch_size)

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


def checked_inputs(x: torch.Tensor, where: str) -> torch.Tensor:
    """Inputs as training takes them: floats as float32, integers (tokens) as int64; NaN or inf
    is the data's fault, said before any training could diverge on it."""
    if not x.is_floating_point():
        return x.long()
    x = x.float()
    bad = (~torch.isfinite(x)).reshape(len(x), -1).any(1).nonzero() if len(x) else []
    if len(bad):
        raise LmcError(
            f"{where} holds NaN or inf in {len(bad)} examples (the first: index {int(bad[0])}); "
            "clean or drop them: the data's fault, not the training's"
        )
    return x


def tensors_dataset(
    name: str,
    t: dict[str, torch.Tensor],
    augment: bool,
    where: str | None = None,
    fix: str = "return x_train, y_train, x_test, y_test",
) -> Dataset:
    """An in-memory dataset of the tensors x_train, y_train [, x_test, y_test], checked."""
    where = where or f"data {name}"
    missing = [k for k in ("x_train", "y_train") if k not in t]
    if missing or ("x_test" in t) != ("y_test" in t):
        missing = missing or ["x_test" if "x_test" not in t else "y_test"]
        raise LmcError(f"{where} lacks {', '.join(missing)}; {fix}")
    try:
        train = Split(checked_inputs(t["x_train"], f"{where}: x_train"), t["y_train"].long())
        test = train
        if "x_test" in t:
            test = Split(checked_inputs(t["x_test"], f"{where}: x_test"), t["y_test"].long())
    except ValueError as e:
        raise LmcError(f"{where}: {e}; {fix}") from None
    if len(train.y) == 0 or len(test.y) == 0:
        raise LmcError(f"{where} has an empty split; {fix}")
    if min(int(train.y.min()), int(test.y.min())) < 0:
        raise LmcError(f"{where} has negative labels; labels must be 0..classes-1")
    num_classes = max(int(train.y.max()), int(test.y.max())) + 1
    return TensorDataset(name, train, test, num_classes, augment)
