"""The user's own data: `data.name: "package.module:factory"` (or a `lmctrack.datasets` plugin),
called with `data.kwargs`, returning either tensors (x_train, y_train, x_test, y_test, as a tuple
or a dict) or a (train, test) pair of torch Datasets whose items are (input, label).

Both give the seeded batches of every dataset (lmctrack.engine.data): tensors become an in-memory
TensorDataset, fingerprinted from their bytes; Datasets are read item by item, fingerprinted from
the import path, kwargs, lengths and a fixed sample of items (reading every item would cost as
much as an epoch). Inputs are used as given (no normalisation); augmentation (random crop + flip)
only when data.augment is true. Random transforms inside a Dataset's __getitem__ that draw from
torch's generator are seeded too: by the augment seed and the step, like the crop and flip.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch

from lmctrack.config.imports import DATASETS_GROUP, resolve
from lmctrack.config.params import DataConfig
from lmctrack.engine.data import noise
from lmctrack.engine.data.datasets import Dataset, _hash, checked_inputs, tensors_dataset
from lmctrack.engine.data.noise import AUGMENT, Device, EpochOrder
from lmctrack.errors import LmcError

TENSOR_KEYS = ("x_train", "y_train", "x_test", "y_test")
_TRANSFORMS = 1  # tells the transforms' stream apart from random_crop_flip's
FINGERPRINT_SAMPLE = 64  # items per split hashed into a Dataset pair's fingerprint
_RETURN = (
    "return (x_train, y_train, x_test, y_test) tensors or a (train, test) pair of "
    "torch.utils.data.Dataset"
)


def load_user_data(cfg: DataConfig) -> Dataset:
    """The dataset the factory `cfg.name` returns for `cfg.kwargs`."""
    factory = resolve(cfg.name, DATASETS_GROUP, "data.name")
    try:
        made = factory(**cfg.kwargs)
    except LmcError:
        raise
    except Exception as e:
        raise LmcError(
            f"data {cfg.name} failed with data.kwargs {cfg.kwargs} ({type(e).__name__}: {e}); "
            "fix data.kwargs or the factory"
        ) from None
    if isinstance(made, dict) and set(TENSOR_KEYS) <= set(made):
        made = tuple(made[k] for k in TENSOR_KEYS)
    augment = bool(cfg.augment)
    if _all(made, 4, torch.Tensor):
        return tensors_dataset(cfg.name, dict(zip(TENSOR_KEYS, made, strict=True)), augment)
    if _all(made, 2, torch.utils.data.Dataset):
        return ItemDataset(cfg, made[0], made[1], augment)
    raise LmcError(f"data {cfg.name} returned {_described(made)}; {_RETURN}")


def _all(made: Any, n: int, kind: type) -> bool:
    return isinstance(made, Sequence) and len(made) == n and all(isinstance(m, kind) for m in made)


def _described(made: Any) -> str:
    if isinstance(made, Sequence) and not isinstance(made, str):
        return f"a {type(made).__name__} of {', '.join(type(m).__name__ for m in made)}"
    return f"a {type(made).__name__}"


def _stack(items: Iterable[tuple[Any, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*items, strict=True)
    x = torch.stack([torch.as_tensor(v) for v in xs])
    x = x.float() if x.is_floating_point() else x.long()  # integer tokens stay integers
    return x, torch.as_tensor([int(v) for v in ys], dtype=torch.long)


class ItemDataset(Dataset):
    """Train and test torch Datasets read item by item: a batch stacks ds[i] for its indices."""

    def __init__(
        self,
        cfg: DataConfig,
        train: torch.utils.data.Dataset,
        test: torch.utils.data.Dataset,
        augment: bool,
    ) -> None:
        self.name = cfg.name
        self._splits = {"train": train, "test": test}
        sizes = {split: len(ds) for split, ds in self._splits.items()}  # type: ignore[arg-type]
        if min(sizes.values()) == 0:
            raise LmcError(f"data {cfg.name} returned an empty split ({sizes}); {_RETURN}")
        try:
            x, y = _stack([train[0]])
        except Exception as e:
            raise LmcError(
                f"data {cfg.name}: item 0 is not (input, label) ({type(e).__name__}: {e}); "
                "make each item a (tensor, int) pair"
            ) from None
        self.input_shape = tuple(x.shape[1:])
        if augment and len(self.input_shape) != 3:
            raise LmcError(
                f"{cfg.name}: data.augment (random crop + flip) needs image inputs (C, H, W), "
                f"not {self.input_shape}; set data.augment to false"
            )
        self.augment = augment
        self.num_classes = _num_classes(cfg.name, train, test)
        self._fingerprint = _hash(
            [("source", json.dumps([cfg.name, cfg.kwargs, sizes], sort_keys=True))]
            + [(f"{split}_{k}", t) for split in self._splits for k, t in self._sample(split)]
        )

    def _sample(self, split: str) -> list[tuple[str, torch.Tensor]]:
        """FINGERPRINT_SAMPLE items spread evenly over the split (always the same ones)."""
        n = self.num_examples(split)
        x, y = _stack(
            self._splits[split][int(i)]
            for i in torch.linspace(0, n - 1, min(n, FINGERPRINT_SAMPLE))
        )
        return [("x", x), ("y", y)]

    def num_examples(self, split: str) -> int:
        return len(self._splits[split])  # type: ignore[arg-type]

    def _batch(self, split: str, idx: Iterable[int], device: Device) -> tuple[torch.Tensor, ...]:
        """The items at idx, checked as they are read (reading them all up front costs an epoch):
        NaN or inf inputs and labels outside [0, num_classes) name the data."""
        idx = list(idx)
        x, y = _stack(self._splits[split][int(i)] for i in idx)
        checked_inputs(x, f"data {self.name} ({split} items {idx[0]}..{idx[-1]})")
        wrong = ((y < 0) | (y >= self.num_classes)).nonzero()
        if len(wrong):
            raise LmcError(
                f"data {self.name}: {split} item {idx[int(wrong[0])]} has label "
                f"{int(y[wrong[0]])}, outside [0, {self.num_classes}) (its {self.num_classes} "
                "classes); fix the labels or the Dataset's classes"
            )
        return x.to(device), y.to(device)

    def _train_stream(
        self, order: EpochOrder, augment_seed: int, steps: Iterator[int], device: Device
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for t in steps:
            with torch.random.fork_rng(devices=[]):  # the Dataset's own random transforms
                torch.manual_seed(noise.derive_seed(AUGMENT, augment_seed, t, _TRANSFORMS))
                x, y = self._batch("train", order.batch(t).tolist(), device)
            if self.augment:
                x = noise.random_crop_flip(
                    x, torch.zeros(1), noise.seeded_generator(AUGMENT, augment_seed, t)
                )
            yield x, y

    def _eval_stream(
        self, split: str, n: int, batch_size: int, device: Device
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(0, n, batch_size):
            yield self._batch(split, range(i, min(i + batch_size, n)), device)

    def to(self, device: Device) -> ItemDataset:
        return self

    def fingerprint(self) -> str:
        return self._fingerprint


def _num_classes(name: str, *splits: torch.utils.data.Dataset) -> int:
    """From the Dataset's `classes` (torchvision's convention), else the largest label + 1."""
    classes = getattr(splits[0], "classes", None)
    if classes is not None:
        return len(classes)
    labels = [int(item[1]) for ds in splits for item in ds]  # type: ignore[attr-defined]
    if min(labels) < 0:
        raise LmcError(f"data {name} has negative labels; labels must be 0..classes-1")
    return max(labels) + 1
