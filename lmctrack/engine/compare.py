"""Distances between two states (Appendices B and G): in weight space and in function space.

Weight-space distances use only the trainable parameters (not BatchNorm buffers), after the
masks are applied, so pruned weights count as the zeros they are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from lmctrack.engine.data import Dataset
from lmctrack.engine.evaluate import evaluate, load_into
from lmctrack.engine.interpolate import check_compatible
from lmctrack.engine.state import State
from lmctrack.errors import LmcError


def parameter_names(model: nn.Module) -> list[str]:
    """The state_dict keys that are parameters (not buffers), in state_dict order."""
    params = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    return [name for name in model.state_dict() if name in params]


def _flatten(weights: Mapping[str, torch.Tensor], names: Sequence[str]) -> torch.Tensor:
    missing = [n for n in names if n not in weights]
    if missing:
        raise LmcError(f"'{missing[0]}' is not in the state; compare states of the same model")
    return torch.cat([weights[n].detach().reshape(-1).double().cpu() for n in names])


def l2_distance(
    a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], names: Sequence[str]
) -> float:
    """Euclidean distance between the flattened tensors `names` of a and b."""
    return torch.linalg.vector_norm(_flatten(a, names) - _flatten(b, names)).item()


def cosine_distance(
    a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], names: Sequence[str]
) -> float:
    """1 - cos(angle) between the flattened tensors `names` of a and b (0 parallel, 1 orthogonal)."""
    fa, fb = _flatten(a, names), _flatten(b, names)
    norms = torch.linalg.vector_norm(fa) * torch.linalg.vector_norm(fb)
    if norms == 0:
        raise LmcError("cosine distance is undefined for all-zero parameters; use the L2 distance")
    return 1.0 - (fa @ fb / norms).item()


def disagreement(preds_a: torch.Tensor, preds_b: torch.Tensor) -> int:
    """Number of examples the two networks classify differently."""
    if preds_a.shape != preds_b.shape:
        raise LmcError("predictions cover different examples; evaluate both on the same split")
    return int((preds_a != preds_b).sum())


def loss_vector_distance(loss_a: torch.Tensor, loss_b: torch.Tensor) -> float:
    """L2 distance between the per-example loss vectors of two networks."""
    if loss_a.shape != loss_b.shape:
        raise LmcError("loss vectors cover different examples; evaluate both on the same split")
    return torch.linalg.vector_norm(loss_a.double() - loss_b.double()).item()


def compare_pair(
    model: nn.Module,
    a: State,
    b: State,
    dataset: Dataset,
    *,
    splits: Sequence[str] = ("test",),
    device: str | torch.device = "cpu",
    names: Sequence[str] | None = None,
    limit: int | None = None,
) -> dict[str, float]:
    """All Appendix G comparisons of A and B; each keeps its own mask (any two subnetworks).

    Weight-space distances ('l2', 'cosine') once; function-space ones per split (Figure 30 uses
    train as well as test): '<split>.disagree', '<split>.disagree_frac', '<split>.loss_l2'.
    `model` is a template of the architecture (its weights are overwritten); `names` defaults to
    all of its parameters; `limit` caps the train examples compared.
    """
    check_compatible(a, b, mask_mode="each")
    names = parameter_names(model) if names is None else names
    wa, wb = a.masked_weights(), b.masked_weights()
    out = {"l2": l2_distance(wa, wb, names), "cosine": cosine_distance(wa, wb, names)}
    model.to(device)
    for split in splits:
        cap = limit if split == "train" else None
        ea, eb = (
            evaluate(
                load_into(model, s), dataset, split, device=device, per_example=True, limit=cap
            )
            for s in (a, b)
        )
        disagree = disagreement(ea.predictions, eb.predictions)
        out[f"{split}.disagree"] = disagree
        out[f"{split}.disagree_frac"] = disagree / ea.predictions.numel()
        out[f"{split}.loss_l2"] = loss_vector_distance(ea.per_example_loss, eb.per_example_loss)
    return out
