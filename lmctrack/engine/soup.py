"""Model soups (Wortsman et al. 2022): stable copies averaged into one network.

Stability says the straight path between copies has no barrier; its payoff is that the copies'
mean is itself a good network. The uniform soup is the mean of the ingredients' (masked) weights;
the masks are kept (a shared mask: entries pruned in every copy stay exactly 0) and BatchNorm
statistics are re-estimated on training data, since averaged statistics do not describe the
averaged weights. The greedy soup adds ingredients in order of held-out accuracy, each only if
the held-out accuracy does not drop: it reads the validation split and never the test split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lmctrack.engine.data import Dataset
from lmctrack.engine.evaluate import evaluate, load_into
from lmctrack.engine.interpolate import check_compatible, recompute_bn
from lmctrack.engine.state import State
from lmctrack.errors import LmcError

HELD_OUT = "validation"  # the split greedy selection reads (data.validation carves it)


def mean_weights(ingredients: Sequence[State]) -> State:
    """The uniform soup's weights: the mean of the masked weights (integer buffers from the
    first), with the ingredients' shared mask. BatchNorm statistics still need re-estimating."""
    if not ingredients:
        raise LmcError("a soup needs at least one ingredient; pass the states to average")
    first = ingredients[0]
    for other in ingredients[1:]:
        check_compatible(first, other)
    weights = [s.masked_weights() for s in ingredients]
    mean = {
        name: torch.stack([w[name] for w in weights]).mean(0) if t.is_floating_point() else t
        for name, t in weights[0].items()
    }
    return State(mean, first.mask)


def with_bn_reestimated(
    model: nn.Module, state: State, dataset: Dataset, device, bn_limit: int | None
) -> State:
    """`state` with its BatchNorm statistics recomputed on training data (`model` is a template
    of its architecture; it is left holding the result)."""
    load_into(model.to(device), state)
    recompute_bn(model, dataset, device=device, limit=bn_limit)
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return State(weights, state.mask)


def uniform_soup(
    model: nn.Module, ingredients: Sequence[State], dataset: Dataset, device, bn_limit=None
) -> State:
    """The mean of the ingredients with BatchNorm re-estimated on training data."""
    return with_bn_reestimated(model, mean_weights(ingredients), dataset, device, bn_limit)


@dataclass
class Greedy:
    """A greedy soup and how it was chosen: the ingredients' held-out accuracies, the order
    they were tried in, which were kept, and the soup's held-out accuracy."""

    state: State
    accuracies: list[float]  # each ingredient's, in the order given
    order: list[int]  # best first
    kept: list[int]  # indices into the ingredients, in the order they were added
    accuracy: float


def held_out_accuracy(model: nn.Module, state: State, dataset: Dataset, device) -> float:
    """Accuracy on the validation split carved from the training data (data.validation)."""
    load_into(model.to(device), state)
    return 1.0 - evaluate(model, dataset, HELD_OUT, device=device).error


def greedy_soup(
    model: nn.Module, ingredients: Sequence[State], dataset: Dataset, device, bn_limit=None
) -> Greedy:
    """Wortsman et al.'s greedy soup: sort by held-out accuracy, add each ingredient whose
    addition does not lower the soup's held-out accuracy (ties kept, as in the paper)."""
    mean_weights(ingredients)  # one architecture and one mask, or a clear error
    accuracies = [held_out_accuracy(model, s, dataset, device) for s in ingredients]
    order = sorted(range(len(ingredients)), key=lambda i: -accuracies[i])
    kept, soup, best = [order[0]], ingredients[order[0]], accuracies[order[0]]
    for i in order[1:]:
        trial = uniform_soup(model, [ingredients[j] for j in (*kept, i)], dataset, device, bn_limit)
        accuracy = held_out_accuracy(model, trial, dataset, device)
        if accuracy >= best:
            kept, soup, best = [*kept, i], trial, accuracy
    return Greedy(soup, accuracies, order, kept, best)
