"""The validation split: a part of the training data held out for selection (greedy soups).

Held-out selection must never read the test split, or the test error it reports is no longer a
test error. The part is carved once, deterministically (a fixed seeded permutation of the
training examples, so a sorted file still gives a mixed part), and training then uses only the
rest: the held-out examples are never trained on.
"""

from __future__ import annotations

import torch

from lmctrack.engine.data.datasets import Dataset, Split, TensorDataset
from lmctrack.errors import LmcError

CARVE_SEED = 20200  # fixed: the same examples are held out on every machine and every run


def hold_out(dataset: Dataset, fraction: float | None) -> Dataset:
    """`dataset` with `fraction` of its training examples moved to a validation split (None:
    unchanged)."""
    if fraction is None:
        return dataset
    if not isinstance(dataset, TensorDataset):
        raise LmcError(
            f"{dataset.name} is streamed from image folders and cannot hold out a validation "
            "split; remove data.validation or use a dataset held in memory"
        )
    n = dataset.num_examples("train")
    held = round(n * fraction)
    if not 0 < held < n:
        raise LmcError(
            f"data.validation={fraction} holds out {held} of {n} training examples; "
            "choose a fraction that leaves some on each side"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(CARVE_SEED))
    chosen, rest = perm[:held].sort().values, perm[held:].sort().values
    x, y = dataset.train.x, dataset.train.y
    rest, chosen = rest.to(y.device), chosen.to(y.device)
    return TensorDataset(
        dataset.name,
        Split(x[rest], y[rest]),
        dataset.test,
        dataset.num_classes,
        dataset.augment,
        dataset.fill,
        validation=Split(x[chosen], y[chosen]),
    )
