"""Aligning one state to another, and the check that a permutation kept the function.

A permuted network must compute exactly what the original computes (up to float rounding);
anything else means the permutation structure is wrong, so every alignment checks it before
its result can be used.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from lmctrack.engine.align.matching import activation_matching, weight_matching
from lmctrack.engine.align.permute import Permutation, apply_permutation
from lmctrack.engine.align.spec import PermutationSpec, permutation_spec
from lmctrack.engine.state import State
from lmctrack.errors import LmcError

METHODS = ("weight", "activation")


def check_function(
    model: nn.Module,
    weights_before: dict[str, torch.Tensor],
    weights_after: dict[str, torch.Tensor],
    x: torch.Tensor,
    tol: float = 1e-4,
) -> float:
    """The largest logit difference of the two weight sets on x (eval mode).

    Raises LmcError when it exceeds tol * max(1, largest |logit|): float rounding of a reordered
    sum stays far below that, a misplaced unit does not. `model` ends holding weights_after.
    """
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model.load_state_dict(weights_before)
        before = model(x)
        model.load_state_dict(weights_after)
        after = model(x)
    model.train(was_training)
    diff = (before - after).abs().max().item()
    scale = max(1.0, before.abs().max().item())
    if not diff <= tol * scale:
        raise LmcError(
            f"the permuted network computes another function (largest logit difference {diff:.3g}"
            f" > {tol:g} x {scale:.3g}); the permutation does not fit this network, report it"
        )
    return diff


@dataclass
class Alignment:
    """B permuted to match A, with what produced it."""

    state: State  # B's weights and mask, permuted
    perm: Permutation  # apply_permutation(spec, perm, B) gives `state`
    spec: PermutationSpec
    max_logit_diff: float  # of the function check on the given inputs


def _check_mask(state: State, side: str) -> None:
    for name, m in (state.mask or {}).items():
        if name not in state.weights or tuple(m.shape) != tuple(state.weights[name].shape):
            raise LmcError(
                f"the mask of {side} does not fit its weights at '{name}'; "
                "re-create the mask from this state's model"
            )


def align_states(
    model: nn.Module,
    inputs: tuple[int, ...] | torch.Tensor,
    a: State,
    b: State,
    check_inputs: torch.Tensor,
    *,
    method: str = "weight",
    batches: Iterable | None = None,
    seed: int = 0,
) -> Alignment:
    """Permute B's hidden units to match A, then check on check_inputs that B's function is kept.

    Sparse states are matched on their masked weights, and B's mask moves with its weights.
    method "activation" needs `batches` of training data; `seed` orders weight matching.
    `model` is a template of the architecture; its weights are overwritten.
    """
    if method not in METHODS:
        raise LmcError(
            f"alignment method '{method}' is not known; use one of: {', '.join(METHODS)}"
        )
    _check_mask(a, "A")
    _check_mask(b, "B")
    spec = permutation_spec(model, inputs)
    wa, wb = a.masked_weights(), b.masked_weights()
    if method == "weight":
        perm = weight_matching(spec, wa, wb, seed=seed)
    else:
        if batches is None:
            raise LmcError(
                "activation matching needs training data; pass batches, or use method 'weight'"
            )
        perm = activation_matching(model, wa, wb, batches, spec)
    weights, mask = apply_permutation(spec, perm, b.weights, b.mask)
    aligned = State(weights, mask)
    diff = check_function(model, wb, aligned.masked_weights(), check_inputs)
    return Alignment(aligned, perm, spec, diff)
