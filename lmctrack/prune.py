"""Pruning masks: magnitude pruning (IMP's step), random pruning (the baseline), and keeping a
mask in force while a sparse network trains.

Conventions of the reference implementation (open_lth 'sparse_global'): only the prunable
tensors (conv / linear weights) carry a mask; each IMP level removes a fraction of the weights
that REMAIN, ranked by |w| across all prunable layers; pruned weights stay pruned.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from lmctrack.errors import LmcError
from lmctrack.state import Mask

STRATEGIES = ("global", "layerwise")


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


def _keep_largest(
    weights: dict[str, torch.Tensor], mask: Mask, names: Sequence[str], keep: int, out: Mask
) -> None:
    """Into `out`, keep the `keep` remaining weights of `names` with the largest |w|.

    Ties are broken by position (tensors in `names` order, then flattened index): among equal
    magnitudes the earlier weight is pruned first, so the result is deterministic.
    """
    kept = torch.cat([mask[name].detach().cpu().reshape(-1) for name in names])
    scores = torch.cat([weights[name].detach().cpu().abs().reshape(-1) for name in names])
    remaining = kept.nonzero().squeeze(1)
    order = torch.sort(scores[remaining], stable=True).indices
    new = kept.clone()
    new[remaining[order[: remaining.numel() - keep]]] = False
    for name, part in zip(names, new.split([mask[name].numel() for name in names]), strict=True):
        out[name] = part.reshape(mask[name].shape).to(mask[name].device)


def magnitude_prune(
    weights: dict[str, torch.Tensor], mask: Mask, fraction: float = 0.2, strategy: str = "global"
) -> Mask:
    """One IMP level: remove ceil(fraction * remaining) of the remaining weights with smallest |w|.

    'global' ranks all prunable weights together (open_lth's sparse_global); 'layerwise' prunes
    each tensor by the same fraction of what it has left.
    """
    if not 0 <= fraction < 1:
        raise LmcError(f"pruning fraction {fraction} is not in [0, 1); use e.g. 0.2")
    check_mask(mask, weights)
    out: Mask = {}
    for names in _groups(mask, strategy):
        remaining = _kept(mask, names)
        # round() first so that e.g. 0.1 * 30 counts as 3, not ceil(3.0000000000000004) = 4.
        remove = math.ceil(round(fraction * remaining, 9))
        _keep_largest(weights, mask, names, remaining - remove, out)
    return out


def prune_to_density(
    weights: dict[str, torch.Tensor], mask: Mask, density: float, strategy: str = "global"
) -> Mask:
    """One-shot pruning: keep round(density * total) weights by |w| (per tensor for 'layerwise')."""
    if not 0 < density <= 1:
        raise LmcError(f"density {density} is not in (0, 1]; use the fraction of weights to keep")
    check_mask(mask, weights)
    out: Mask = {}
    for names in _groups(mask, strategy):
        keep = round(density * sum(mask[name].numel() for name in names))
        remaining = _kept(mask, names)
        if keep > remaining:
            raise LmcError(
                f"density {density} keeps {keep} weights but the mask has only {remaining} left; "
                "prune a denser mask or ask for a lower density"
            )
        _keep_largest(weights, mask, names, keep, out)
    return out


def random_prune(mask: Mask, seed: int, strategy: str = "layerwise") -> Mask:
    """Random-pruning baseline with the same sparsity as `mask`.

    'layerwise' shuffles each tensor's mask (every layer keeps its density exactly); 'global'
    keeps the same total count at positions drawn uniformly over all prunable weights.
    """
    generator = torch.Generator().manual_seed(seed)
    out: Mask = {}
    for names in _groups(mask, strategy):
        flat = torch.cat([mask[name].detach().cpu().reshape(-1) for name in names])
        shuffled = flat[torch.randperm(flat.numel(), generator=generator)]
        for name, part in zip(names, shuffled.split([mask[n].numel() for n in names]), strict=True):
            out[name] = part.reshape(mask[name].shape).to(mask[name].device)
    return out


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
