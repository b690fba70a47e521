"""The standard quality figure of a distilled set: train from scratch on it, test on real data.

For each seed s, a network initialised with seed s is trained only on the distilled set, and
another, with the same init and recipe, only on a random class-balanced real subset of the same
size (drawn with seed s); both are tested on the real test split. Reported: mean and population
std (as the references print them) of the test accuracies over the seeds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmctrack.config.params import ModelConfig, TrainConfig
from lmctrack.config.schema import Stats
from lmctrack.engine.data import Dataset, TensorDataset, derive_seed
from lmctrack.engine.distill.synthetic import (
    Distilled,
    real_per_class,
    synthetic_dataset,
    tensor_dataset,
)
from lmctrack.engine.evaluate import evaluate
from lmctrack.engine.models import build_model
from lmctrack.engine.train import Noise, train

SUBSET_STREAM = 17  # tag of the seed stream that draws the random real subsets


def evaluation_recipe(steps: str = "1000ep", lr: float = 0.01) -> TrainConfig:
    """The references' evaluation training: SGD momentum 0.9, weight decay 5e-4, batch 256,
    1000 epochs, the learning rate x0.1 half-way (lr 0.01 for DM; MTT's own is the learned lr).
    """
    half = TrainConfig(steps=steps).steps
    return TrainConfig(
        optimizer="sgd",
        lr=lr,
        momentum=0.9,
        weight_decay=5e-4,
        batch_size=256,
        steps=steps,
        schedule="step",
        milestones=[{"ep": half.ep // 2, "it": half.it // 2}],
        gamma=0.1,
    )


@dataclass(frozen=True)
class Quality:
    """Test accuracies (in [0, 1]) of networks trained on the distilled set and on random subsets."""

    distilled: list[float]
    random: list[float]
    size: int  # examples in each training set

    def accuracy(self, trained_on: str) -> Stats:
        """Mean and population std (as the references print them) for 'distilled' or 'random'."""
        return Stats.of(getattr(self, trained_on))

    def metrics(self) -> dict[str, float]:
        """Flat numbers to log (accuracies in [0, 1])."""
        return {
            f"{name}_accuracy_{stat}": getattr(self.accuracy(trained_on), stat)
            for trained_on, name in (("distilled", "distilled"), ("random", "random_subset"))
            for stat in ("mean", "std")
        }

    def summary(self) -> str:
        distilled, random = self.accuracy("distilled"), self.accuracy("random")
        return (
            f"{self.size} examples: distilled {percent(distilled)}, random real subset "
            f"{percent(random)} test accuracy over {distilled.n} seeds"
        )


def percent(accuracy: Stats) -> str:
    """An accuracy as the references print it: mean ± std in percent, one decimal."""
    return f"{100 * accuracy.mean:.1f} ± {100 * accuracy.std:.1f}%"


def trained_accuracy(
    model_cfg: ModelConfig,
    train_set: TensorDataset,
    source: Dataset,
    recipe: TrainConfig,
    seed: int,
    device: torch.device | str = "cpu",
) -> float:
    """Accuracy on the source's test split of a network (init seed `seed`) trained on train_set."""
    model = build_model(model_cfg, source.num_classes, source.input_shape, init_seed=seed)
    stop = recipe.steps.iterations(train_set.iterations_per_epoch(recipe.batch_size))
    train(model, train_set, recipe, start=0, stop=stop, noise=Noise(seed, seed), device=device)
    return 1.0 - evaluate(model, source, "test", device=device).error


def evaluate_quality(
    distilled: Distilled,
    dataset: Dataset,
    model_cfg: ModelConfig,
    recipe: TrainConfig,
    *,
    seeds: tuple[int, ...] = (0, 1, 2),
    device: torch.device | str = "cpu",
) -> Quality:
    """The distilled set vs random real subsets of equal size, same network, same recipe."""
    source = tensor_dataset(dataset)
    synthetic = synthetic_dataset(distilled.x, distilled.y, source)
    ours, baseline = [], []
    for seed in seeds:
        generator = torch.Generator().manual_seed(derive_seed(SUBSET_STREAM, seed))
        subset = synthetic_dataset(
            *real_per_class(source, distilled.images_per_class, generator), source
        )
        ours.append(trained_accuracy(model_cfg, synthetic, source, recipe, seed, device))
        baseline.append(trained_accuracy(model_cfg, subset, source, recipe, seed, device))
    return Quality(ours, baseline, len(distilled.y))
