"""Error and loss of a network on one split, and loading a State into a network.

Evaluation runs in eval mode under inference_mode, in large batches, so that the instability
sweep (hundreds of paths, 30 points each) stays cheap on a CPU.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmctrack.engine.data import Dataset
from lmctrack.engine.state import State
from lmctrack.errors import LmcError


@dataclass
class Evaluation:
    """Mean cross-entropy `loss` and `error` = 1 - accuracy (in [0, 1]) on one split."""

    loss: float
    error: float
    per_example_loss: torch.Tensor | None = None
    predictions: torch.Tensor | None = None


def evaluate(
    model: nn.Module,
    dataset: Dataset,
    split: str,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 1000,
    limit: int | None = None,
    per_example: bool = False,
) -> Evaluation:
    """Evaluate `model` (already on `device`) on the first `limit` examples of `split`.

    per_example=True also returns each example's loss and predicted class (on the CPU, in the
    dataset's fixed order), which the comparisons of Appendix G need.
    """
    was_training = model.training
    model.eval()
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    count = 0
    losses: list[torch.Tensor] = []
    predictions: list[torch.Tensor] = []
    with torch.inference_mode():
        for x, y in dataset.eval_batches(split, batch_size=batch_size, device=device, limit=limit):
            logits = model(x)
            loss = F.cross_entropy(logits, y, reduction="none")
            predicted = logits.argmax(dim=1)
            total_loss += loss.sum(dtype=torch.float64)
            correct += (predicted == y).sum()
            count += y.shape[0]
            if per_example:
                losses.append(loss)
                predictions.append(predicted)
    model.train(was_training)
    if count == 0:
        raise LmcError(f"split '{split}' has no examples to evaluate; check the dataset and limit")
    return Evaluation(
        loss=total_loss.item() / count,
        error=1.0 - correct.item() / count,
        per_example_loss=torch.cat(losses).cpu() if per_example else None,
        predictions=torch.cat(predictions).cpu() if per_example else None,
    )


def first_mismatch(
    a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], what: tuple[str, str]
) -> str | None:
    """Describe the first tensor present in only one of a, b or shaped differently (None if equal).

    `what` names the two sides in the message, e.g. ("A", "B").
    """
    for name in [*a, *(n for n in b if n not in a)]:
        if name not in a or name not in b:
            return f"'{name}' is missing from {what[0] if name not in a else what[1]}"
        if a[name].shape != b[name].shape:
            return (
                f"'{name}' has shape {tuple(a[name].shape)} in {what[0]} "
                f"but {tuple(b[name].shape)} in {what[1]}"
            )
    return None


def check_fits(model: nn.Module, state: State) -> None:
    """Raise LmcError naming the first tensor where the state and the model's state_dict differ."""
    problem = first_mismatch(state.weights, model.state_dict(), ("the state", "the model"))
    if problem is not None:
        raise LmcError(
            f"state does not fit the model: {problem}; load it into the model it came from"
        )


def load_into(model: nn.Module, state: State) -> nn.Module:
    """Load the state's masked weights (pruned entries exactly 0) into `model`; return it."""
    check_fits(model, state)
    model.load_state_dict(state.masked_weights(), strict=True)
    return model
