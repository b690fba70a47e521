"""Pruning masks: the registry of pruning criteria (magnitude, IMP's; random, the baseline's),
pruning by one of them, and keeping a mask in force while a sparse network trains.

Conventions of the reference implementation (open_lth 'sparse_global'): only the prunable
tensors (conv / linear weights) carry a mask; each IMP level removes a fraction of the weights
that REMAIN, ranked by |w| across all prunable layers; pruned weights stay pruned.

A criterion only scores weights (higher is kept); which tensors are ranked together ('global' or
'layerwise') and how many survive is decided here, so a new criterion is one function and one
entry of CRITERIA (or the user's own, by 'package.module:function' or a `lmctrack.pruning`
plugin) and works for iterative and one-shot pruning alike.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from lmctrack.config.imports import PRUNING_GROUP, is_user_name, resolve
from lmctrack.engine.state import Mask
from lmctrack.errors import LmcError

STRATEGIES = ("global", "layerwise")

Weights = dict[str, torch.Tensor]
Criterion = Callable[[Weights, Mask, torch.Generator], Weights]
"""(weights, mask, generator) -> a score per weight of each masked tensor; the highest are kept.
The generator is seeded per pruning step, for criteria that draw."""


def magnitude(weights: Weights, mask: Mask, generator: torch.Generator) -> Weights:
    """IMP's criterion (the paper's): keep the weights of largest |w|."""
    return {name: weights[name].detach().abs() for name in mask}


def random(weights: Weights, mask: Mask, generator: torch.Generator) -> Weights:
    """The random-pruning baseline's criterion: uniform scores, drawn in name order."""
    return {name: torch.rand(mask[name].shape, generator=generator) for name in sorted(mask)}


MAGNITUDE, RANDOM = "magnitude", "random"
CRITERIA: dict[str, Criterion] = {MAGNITUDE: magnitude, RANDOM: random}


def criterion(name: str) -> Criterion:
    """The criterion `name` stands for: a CRITERIA entry, a plugin or 'package.module:function'."""
    if name in CRITERIA:
        return CRITERIA[name]
    if is_user_name(name, PRUNING_GROUP):
        return resolve(name, PRUNING_GROUP, "imp.criterion")
    raise LmcError(
        f"unknown pruning criterion '{name}'; set imp.criterion to one of: {', '.join(CRITERIA)}, "
        "an installed lmctrack.pruning plugin's name, or your own as 'package.module:function'"
    )


def full_mask(weights: dict[str, torch.Tensor], prunable: Sequence[str]) -> Mask:
    """The dense network's mask: every prunable weight kept."""
    missing = [name for name in prunable if name not in weights]
    if missing:
        raise LmcError(
            f"prunable tensor '{missing[0]}' is not in the weights; use the model's names"
        )
    return {name: torch.ones(weights[name].shape, dtype=torch.bool) for name in prunable}


def choose_prunable(
    derived: Sequence[str], weights: Sequence[str], include: Sequence[str], exclude: Sequence[str]
) -> list[str]:
    """The derived prunable tensors, plus the `weights` that an include pattern names, minus those
    an exclude pattern names. A pattern (fnmatch) matches a tensor name ('fc.weight') or its
    module's ('fc'); one that matches nothing is refused, as it is most likely a typo."""

    def matching(pattern: str, names: Sequence[str], key: str) -> list[str]:
        found = [
            n
            for n in names
            if any(fnmatch.fnmatchcase(s, pattern) for s in (n, n.rsplit(".", 1)[0]))
        ]
        if not found:
            raise LmcError(
                f"{key} pattern '{pattern}' matches none of {', '.join(names) or 'nothing'}; "
                "fix the pattern (fnmatch on tensor or module names, e.g. 'fc' or 'layer4.*')"
            )
        return found

    chosen = set(derived)
    for pattern in include:
        chosen |= set(matching(pattern, weights, "prune.include"))
    for pattern in exclude:
        chosen -= set(matching(pattern, sorted(chosen, key=list(weights).index), "prune.exclude"))
    if not chosen:
        raise LmcError("prune.exclude leaves no tensor to prune; exclude fewer layers")
    return [name for name in weights if name in chosen]


def density(mask: Mask) -> float:
    """Fraction of the prunable weights that the mask keeps."""
    total = sum(m.numel() for m in mask.values())
    return sum(int(m.sum()) for m in mask.values()) / total if total else 1.0


def layer_densities(mask: Mask) -> dict[str, float]:
    """Fraction kept in each prunable tensor."""
    return {name: int(m.sum()) / m.numel() for name, m in mask.items()}


def check_mask(
    mask: Mask, weights: dict[str, torch.Tensor], prunable: Sequence[str] | None = None
) -> None:
    """Raise LmcError naming the first tensor where the mask does not fit these weights.

    With `prunable`, the mask must also cover exactly those tensors (a mask made for another
    architecture, or for another choice of prunable layers, is refused).
    """
    fix = "use a mask made for this model (same architecture and width)"
    if not mask:
        raise LmcError(f"the mask is empty; {fix}")
    for name, m in mask.items():
        if name not in weights:
            raise LmcError(f"mask tensor '{name}' is not a weight of this model; {fix}")
        if tuple(m.shape) != tuple(weights[name].shape):
            raise LmcError(
                f"mask tensor '{name}' has shape {tuple(m.shape)} but the weight has "
                f"{tuple(weights[name].shape)}; {fix}"
            )
        if m.dtype != torch.bool:
            raise LmcError(f"mask tensor '{name}' has dtype {m.dtype}, not bool; {fix}")
    if prunable is not None:
        for name in prunable:
            if name not in mask:
                raise LmcError(f"the mask has no entry for prunable tensor '{name}'; {fix}")
        extra = [name for name in mask if name not in set(prunable)]
        if extra:
            raise LmcError(
                f"mask tensor '{extra[0]}' is not a prunable tensor of this model; {fix}"
            )


def _check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise LmcError(f"unknown pruning strategy '{strategy}'; use one of {', '.join(STRATEGIES)}")


def _groups(mask: Mask, strategy: str) -> list[list[str]]:
    """Tensors ranked together: all of them ('global') or each alone ('layerwise').

    Names are sorted so that the result does not depend on the order of the mask's keys.
    """
    _check_strategy(strategy)
    names = sorted(mask)
    return [names] if strategy == "global" else [[name] for name in names]


def _kept(mask: Mask, names: Sequence[str]) -> int:
    return sum(int(mask[name].sum()) for name in names)


def _scores(weights: Weights, mask: Mask, score: Criterion, seed: int) -> Weights:
    """The criterion's scores, checked: one per weight of every masked tensor."""
    found = score(weights, mask, torch.Generator().manual_seed(seed))
    name = getattr(score, "__name__", repr(score))
    for tensor, m in mask.items():
        if tensor not in found or tuple(found[tensor].shape) != tuple(m.shape):
            raise LmcError(
                f"pruning criterion {name} gives no score of shape {tuple(m.shape)} for "
                f"'{tensor}'; return a tensor shaped like each masked weight"
            )
    return found


def _keep_largest(scores: Weights, mask: Mask, names: Sequence[str], keep: int, out: Mask) -> None:
    """Into `out`, keep the `keep` remaining weights of `names` with the highest scores.

    Ties are broken by position (tensors in `names` order, then flattened index): among equal
    scores the earlier weight is pruned first, so the result is deterministic.
    """
    kept = torch.cat([mask[name].detach().cpu().reshape(-1) for name in names])
    ranked = torch.cat([scores[name].detach().cpu().float().reshape(-1) for name in names])
    remaining = kept.nonzero().squeeze(1)
    order = torch.sort(ranked[remaining], stable=True).indices
    new = kept.clone()
    new[remaining[order[: remaining.numel() - keep]]] = False
    for name, part in zip(names, new.split([mask[name].numel() for name in names]), strict=True):
        out[name] = part.reshape(mask[name].shape).to(mask[name].device)


def _prune(
    weights: Weights,
    mask: Mask,
    strategy: str,
    score: Criterion,
    seed: int,
    keep: Callable[[list[str]], int],
) -> Mask:
    """In each group of tensors ranked together, keep the `keep(names)` best-scoring weights."""
    check_mask(mask, weights)
    groups = _groups(mask, strategy)
    scores = _scores(weights, mask, score, seed)
    out: Mask = {}
    for names in groups:
        _keep_largest(scores, mask, names, keep(names), out)
    return out


def prune_fraction(
    weights: Weights,
    mask: Mask,
    fraction: float = 0.2,
    strategy: str = "global",
    score: Criterion = magnitude,
    seed: int = 0,
) -> Mask:
    """One IMP level: remove ceil(fraction * remaining) of the remaining weights, those the
    criterion scores lowest.

    'global' ranks all prunable weights together (open_lth's sparse_global); 'layerwise' prunes
    each tensor by the same fraction of what it has left.
    """
    if not 0 <= fraction < 1:
        raise LmcError(f"pruning fraction {fraction} is not in [0, 1); use e.g. 0.2")

    def keep(names: list[str]) -> int:
        remaining = _kept(mask, names)
        # round() first so that e.g. 0.1 * 30 counts as 3, not ceil(3.0000000000000004) = 4.
        return remaining - math.ceil(round(fraction * remaining, 9))

    return _prune(weights, mask, strategy, score, seed, keep)


def magnitude_prune(
    weights: Weights, mask: Mask, fraction: float = 0.2, strategy: str = "global"
) -> Mask:
    """The paper's IMP level: prune_fraction by smallest |w|."""
    return prune_fraction(weights, mask, fraction, strategy, magnitude)


def prune_to_density(
    weights: Weights,
    mask: Mask,
    density: float,
    strategy: str = "global",
    score: Criterion = magnitude,
    seed: int = 0,
) -> Mask:
    """One-shot pruning: keep round(density * total) weights, those the criterion scores highest
    (per tensor for 'layerwise')."""
    if not 0 < density <= 1:
        raise LmcError(f"density {density} is not in (0, 1]; use the fraction of weights to keep")

    def keep(names: list[str]) -> int:
        count = round(density * sum(mask[name].numel() for name in names))
        if count > (remaining := _kept(mask, names)):
            raise LmcError(
                f"density {density} keeps {count} weights but the mask has only {remaining} "
                "left; prune a denser mask or ask for a lower density"
            )
        return count

    return _prune(weights, mask, strategy, score, seed, keep)


def prune_like(
    weights: Weights, mask: Mask, score: Criterion, seed: int, strategy: str = "layerwise"
) -> Mask:
    """A mask as sparse as `mask` (in each tensor for 'layerwise', in total for 'global') chosen
    afresh among all the weights by the criterion: with `random`, the random-pruning baseline."""
    dense = {name: torch.ones_like(m, dtype=torch.bool) for name, m in mask.items()}
    return _prune(weights, dense, strategy, score, seed, lambda names: _kept(mask, names))


def _parameters(model: nn.Module, mask: Mask) -> dict[str, nn.Parameter]:
    params = dict(model.named_parameters())
    check_mask(mask, {name: p.detach() for name, p in params.items()})
    return {name: params[name] for name in mask}


def apply_mask(model: nn.Module, mask: Mask) -> None:
    """Set the pruned weights of `model` to exactly 0, in place."""
    with torch.no_grad():
        for name, param in _parameters(model, mask).items():
            param.mul_(mask[name].to(device=param.device, dtype=param.dtype))


def _zero_pruned(keep: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda grad: grad * keep


class MaskKeeper:
    """Keeps a mask in force while a sparse network trains (see keep_masked)."""

    def __init__(self, model: nn.Module, mask: Mask) -> None:
        self._kept = [
            (param, mask[name].to(device=param.device, dtype=param.dtype))
            for name, param in _parameters(model, mask).items()
        ]
        self._hooks: list[RemovableHandle] = [
            param.register_hook(_zero_pruned(keep)) for param, keep in self._kept
        ]
        self.after_step()

    def after_step(self) -> None:
        """Re-apply the mask after an optimizer step (exact zeros whatever the optimizer did)."""
        with torch.no_grad():
            for param, keep in self._kept:
                param.mul_(keep)

    __call__ = after_step

    def remove(self) -> None:
        """Remove the gradient hooks: the model trains densely again."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()


def keep_masked(model: nn.Module, mask: Mask) -> MaskKeeper:
    """Make `mask` hold through training; call after moving the model to its device.

    Pruned weights are zeroed now, their gradients are zeroed by hooks (so momentum and Adam
    moments of pruned entries stay 0), and `.after_step()` (or calling the keeper) re-applies
    the mask after each optimizer step, so pruned weights are exactly 0 even with weight decay.
    `.remove()` takes the hooks off.
    """
    return MaskKeeper(model, mask)
