"""The synthetic set both distillation methods learn: its initialisation, the result, the file.

Both reference implementations (mtt-distillation, DatasetCondensation) hold `images_per_class`
examples of every class, labels fixed to [0]*ipc + [1]*ipc + ..., and initialise them from random
real examples of their class ('real', the default) or from N(0, 1) noise in the normalised input
space ('noise'). The written file is a `tensors` dataset (lmctrack.engine.data): the distilled
x_train, y_train and the source's real x_test, y_test, so it loads with `data.name: tensors` and
drives `imp.prune_data` / `lmctrack imp --prune-data FILE` as it is.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import save_file

from lmctrack.engine.data import Dataset, Split, TensorDataset
from lmctrack.errors import LmcError

Init = Literal["real", "noise"]
Progress = Callable[[int, float], None]  # (iteration, matching loss)
FILE_KEYS = ("x_train", "y_train", "x_test", "y_test")


@dataclass(frozen=True)
class SyntheticParams:
    """What every method shares: the size of the synthetic set, its initialisation, the seed."""

    images_per_class: int = 10
    init: Init = "real"
    seed: int = 0


@dataclass
class Distilled:
    """A distilled training set (on the CPU) and how it was made."""

    x: torch.Tensor
    y: torch.Tensor
    method: str
    params: dict[str, Any]
    losses: list[float] = field(default_factory=list)  # the matching loss of every iteration
    lr: float | None = None  # MTT's learned student learning rate
    seconds: float = 0.0

    @property
    def images_per_class(self) -> int:
        return int(self.params["images_per_class"])


def tensor_dataset(dataset: Dataset) -> TensorDataset:
    """The source as in-memory tensors, or an LmcError: distillation indexes the training set."""
    if not isinstance(dataset, TensorDataset):
        raise LmcError(
            f"dataset {dataset.name} is streamed from disk; distillation needs a dataset held in "
            "memory (mnist1d, digits, mnist, fashion_mnist, cifar10, cifar100, tensors)"
        )
    return dataset


def class_indices(dataset: TensorDataset, images_per_class: int) -> list[torch.Tensor]:
    """The training indices of each class, checked to hold at least `images_per_class` each."""
    if images_per_class < 1:
        raise LmcError(f"images_per_class={images_per_class}; set it to 1 or more")
    y = dataset.train.y.cpu()
    indices = [torch.nonzero(y == c).flatten() for c in range(dataset.num_classes)]
    smallest = min(range(len(indices)), key=lambda c: len(indices[c]))
    if len(indices[smallest]) < images_per_class:
        raise LmcError(
            f"images_per_class={images_per_class} but class {smallest} of {dataset.name} has only "
            f"{len(indices[smallest])} training examples; lower images_per_class"
        )
    return indices


def synthetic_labels(num_classes: int, images_per_class: int) -> torch.Tensor:
    """[0]*ipc + [1]*ipc + ...: the reference's fixed labels."""
    return torch.arange(num_classes).repeat_interleave(images_per_class)


def real_per_class(
    dataset: TensorDataset, images_per_class: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """`images_per_class` distinct random real training examples of every class, class by class.

    The 'real' initialisation, and the random real subset that distilled data is compared with.
    """
    chosen = [
        idx[torch.randperm(len(idx), generator=generator)[:images_per_class]]
        for idx in class_indices(dataset, images_per_class)
    ]
    picked = torch.cat(chosen).to(dataset.train.x.device)
    return dataset.train.x[picked].detach().cpu().clone(), synthetic_labels(
        dataset.num_classes, images_per_class
    )


def initial_synthetic(
    dataset: TensorDataset, params: SyntheticParams, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The synthetic set before matching, as the references initialise it."""
    x, y = real_per_class(dataset, params.images_per_class, generator)
    if params.init == "noise":
        x = torch.randn(x.shape, generator=generator)
    elif params.init != "real":
        raise LmcError(f"unknown init '{params.init}'; use 'real' or 'noise'")
    return x, y


def synthetic_dataset(x: torch.Tensor, y: torch.Tensor, source: TensorDataset) -> TensorDataset:
    """x, y as a training set, tested on the source's real test split (what the file loads as)."""
    return TensorDataset("tensors", Split(x, y), source.test, source.num_classes)


def write_distilled(path: Path, distilled: Distilled, source: TensorDataset) -> str:
    """Write the distilled set as a `tensors` dataset file; return the file's sha256 (hex).

    The metadata names the method, its params, the learned lr and the source dataset (name and
    fingerprint), so the file alone says where it came from.
    """
    tensors = {
        "x_train": distilled.x.detach().cpu().float().contiguous(),
        "y_train": distilled.y.detach().cpu().long().contiguous(),
        "x_test": source.test.x.detach().cpu().float().contiguous(),
        "y_test": source.test.y.detach().cpu().long().contiguous(),
    }
    metadata = {
        "method": distilled.method,
        "params": json.dumps(distilled.params, sort_keys=True),
        "lr": json.dumps(distilled.lr),
        "source_name": source.name,
        "source_fingerprint": source.fingerprint(),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def matching_loop(
    iterations: int,
    loss_at: Callable[[int], torch.Tensor],
    optimizers: list[torch.optim.Optimizer],
    rates: str,
    progress: Progress | None = None,
) -> tuple[list[float], float]:
    """Both methods' outer loop: at each iteration, one step of every optimiser on loss_at(it).

    Returns every iteration's loss and the seconds taken; stops at the first non-finite loss,
    naming the learning `rates` to lower.
    """
    losses: list[float] = []
    began = time.perf_counter()
    for it in range(iterations):
        loss = loss_at(it)
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in optimizers:
            opt.step()
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            raise LmcError(
                f"distillation diverged at iteration {it} (loss {losses[-1]}); lower {rates}"
            )
        if progress is not None:
            progress(it, losses[-1])
    return losses, time.perf_counter() - began


def params_dict(params: SyntheticParams) -> dict[str, Any]:
    """A method's params as a plain dict (logged and written into the file's metadata)."""
    return dataclasses.asdict(params)
