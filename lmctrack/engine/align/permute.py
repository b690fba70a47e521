"""Permutations of hidden units and their action on a state_dict and its mask.

A permutation maps each group of a PermutationSpec to an index tensor `p`: after permuting, unit
i of the group is the original unit p[i]. Every tensor axis the group touches is reordered the
same way, so the network computes the same function; BatchNorm running statistics move with
their channels, and a mask moves with its weights.
"""

from __future__ import annotations

import torch

from lmctrack.engine.align.spec import PermutationSpec
from lmctrack.engine.state import Mask
from lmctrack.errors import LmcError

Permutation = dict[str, torch.Tensor]  # group -> int64 indices (a permutation of its units)


def identity_permutation(spec: PermutationSpec) -> Permutation:
    return {group: torch.arange(size) for group, size in spec.sizes.items()}


def random_permutation(spec: PermutationSpec, seed: int) -> Permutation:
    """A uniformly random permutation of every group, decided by seed alone."""
    generator = torch.Generator().manual_seed(seed)
    return {g: torch.randperm(n, generator=generator) for g, n in spec.sizes.items()}


def invert_permutation(perm: Permutation) -> Permutation:
    """The permutation that undoes `perm` (to carry a state or mask back to the other side)."""
    return {group: torch.argsort(p) for group, p in perm.items()}


def check_permutation(spec: PermutationSpec, perm: Permutation) -> None:
    """Raise LmcError unless perm permutes exactly the groups of spec."""
    if set(perm) != set(spec.sizes):
        different = sorted(set(perm) ^ set(spec.sizes))[:3]
        raise LmcError(
            f"the permutation does not fit this architecture (groups {', '.join(different)}); "
            "compute it from states of this model"
        )
    for group, size in spec.sizes.items():
        p = perm[group]
        if p.shape != (size,) or not torch.equal(torch.sort(p.cpu()).values, torch.arange(size)):
            raise LmcError(
                f"the permutation of group '{group}' is not a permutation of {size} units; "
                "compute it from states of this model"
            )


def permute_tensor(
    spec: PermutationSpec,
    perm: Permutation,
    name: str,
    tensor: torch.Tensor,
    skip_axis: int | None = None,
) -> torch.Tensor:
    """state_dict entry `name` with every axis permuted (but skip_axis, for weight matching)."""
    for axis, stretches in spec.axes.get(name, {}).items():
        if axis == skip_axis:
            continue
        index = torch.arange(tensor.shape[axis])
        for group, start, repeat in stretches:
            p = perm[group]
            block = (p[:, None] * repeat + torch.arange(repeat)).flatten() + start
            index[start : start + block.numel()] = block
        tensor = tensor.index_select(axis, index.to(tensor.device))
    return tensor


def apply_permutation(
    spec: PermutationSpec,
    perm: Permutation,
    weights: dict[str, torch.Tensor],
    mask: Mask | None = None,
) -> tuple[dict[str, torch.Tensor], Mask | None]:
    """The permuted state_dict (BatchNorm statistics included) and the mask permuted alike."""
    spec.check(weights, "the state to permute")
    check_permutation(spec, perm)
    for name, m in (mask or {}).items():
        if name not in weights or tuple(m.shape) != tuple(weights[name].shape):
            raise LmcError(
                f"the mask does not fit the weights at '{name}'; "
                "re-create the mask from this state's model"
            )
    permuted = {k: permute_tensor(spec, perm, k, v) for k, v in weights.items()}
    if mask is None:
        return permuted, None
    return permuted, {k: permute_tensor(spec, perm, k, m) for k, m in mask.items()}
