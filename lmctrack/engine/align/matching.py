"""Finding the permutation of B's hidden units that best matches A (Git Re-Basin, Section 3).

Weight matching maximises sum_l <W_l^A, P_l W_l^B P_{l-1}^T> by coordinate descent: one group at a
time, in a seeded random order, a linear assignment over the similarity of every tensor touching
that group with the other permutations held fixed, until a whole pass changes nothing.
Activation matching instead assigns units by the correlation of their activations on data.
Both return a Permutation to give to apply_permutation(spec, perm, weights_b).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from lmctrack.engine.align.permute import Permutation, identity_permutation, permute_tensor
from lmctrack.engine.align.spec import PermutationSpec, Site
from lmctrack.engine.align.trace import as_inputs, channel_rows, probe, trace


def _unit_rows(tensor: torch.Tensor, axis: int, start: int, size: int, repeat: int) -> torch.Tensor:
    """The stretch of `axis` that holds a group's units, one row per unit."""
    return tensor.movedim(axis, 0).narrow(0, start, size * repeat).reshape(size, -1)


def _assign(similarity: torch.Tensor) -> torch.Tensor:
    """Column matched to each row, maximising the total similarity."""
    # imported here: scipy.optimize costs ~0.7 s, and every interpolation imports this package
    from scipy.optimize import linear_sum_assignment

    _, cols = linear_sum_assignment(similarity.cpu().numpy(), maximize=True)
    return torch.from_numpy(cols).long()


def weight_matching(
    spec: PermutationSpec,
    weights_a: dict[str, torch.Tensor],
    weights_b: dict[str, torch.Tensor],
    seed: int = 0,
    max_iter: int = 100,
) -> Permutation:
    """The permutation of B that maximises its weights' inner product with A's.

    Pass masked weights for sparse states (State.masked_weights()): pruned entries then count
    as the zeros they are. BatchNorm running statistics move with their units but are not
    compared. Stops after a pass with no change, or after max_iter passes.
    """
    spec.check(weights_a, "A")
    spec.check(weights_b, "B")
    a = {k: v.detach().double() for k, v in weights_a.items() if v.is_floating_point()}
    b = {k: v.detach().double() for k, v in weights_b.items() if v.is_floating_point()}
    perm = identity_permutation(spec)
    rng = np.random.default_rng(seed)
    groups = list(spec.sizes)
    for _ in range(max_iter):
        changed = False
        for index in rng.permutation(len(groups)):
            group, size = groups[index], spec.sizes[groups[index]]
            similarity = torch.zeros(size, size, dtype=torch.float64, device=_device(a))
            for s in spec.slices[group]:
                if not s.matched:
                    continue
                rows_a = _unit_rows(a[s.tensor], s.axis, s.start, size, s.repeat)
                other = permute_tensor(spec, perm, s.tensor, b[s.tensor], skip_axis=s.axis)
                rows_b = _unit_rows(other, s.axis, s.start, size, s.repeat)
                similarity += rows_a @ rows_b.T
            best = _assign(similarity)
            units = torch.arange(size, device=similarity.device)
            gain = (
                similarity[units, best.to(similarity.device)].sum()
                - similarity[units, perm[group].to(similarity.device)].sum()
            )
            if gain > 1e-12 * similarity.abs().sum():
                perm[group], changed = best, True
        if not changed:
            break
    return perm


def _device(weights: dict[str, torch.Tensor]) -> torch.device:
    return next(iter(weights.values())).device if weights else torch.device("cpu")


class _Correlation:
    """Running sums for the correlation between A's and B's units at one site."""

    def __init__(self) -> None:
        self.n = 0
        self.sums: dict[str, torch.Tensor] = {}

    def add(self, za: torch.Tensor, zb: torch.Tensor) -> None:
        za, zb = za.double(), zb.double()
        moments = {
            "a": za.sum(0),
            "b": zb.sum(0),
            "aa": (za * za).sum(0),
            "bb": (zb * zb).sum(0),
            "ab": za.T @ zb,
        }
        for key, value in moments.items():
            self.sums[key] = self.sums[key] + value if key in self.sums else value
        self.n += za.shape[0]

    def matrix(self) -> torch.Tensor:
        mean = {k: v / self.n for k, v in self.sums.items()}
        cov = mean["ab"] - torch.outer(mean["a"], mean["b"])
        std_a = (mean["aa"] - mean["a"] ** 2).clamp_min(0).sqrt()
        std_b = (mean["bb"] - mean["b"] ** 2).clamp_min(0).sqrt()
        return cov / (torch.outer(std_a, std_b) + 1e-8)


def _site_rows(z: torch.Tensor, site: Site, size: int) -> torch.Tensor:
    """(samples, size): the site's units, every position and flattened block a sample."""
    rows = channel_rows(z).narrow(1, site.start, size * site.repeat)
    return rows.reshape(-1, size, site.repeat).transpose(1, 2).reshape(-1, size)


def activation_matching(
    model: nn.Module,
    weights_a: dict[str, torch.Tensor],
    weights_b: dict[str, torch.Tensor],
    batches: Iterable,
    spec: PermutationSpec,
) -> Permutation:
    """The permutation of B whose units' activations correlate best with A's on `batches`.

    batches: training data, (x, y) pairs or bare inputs, read once (e.g.
    dataset.eval_batches("train", limit=5000)). Both networks run in eval mode; a group's
    activations are its nonlinearity outputs (every position of a feature map is a sample),
    and a group seen at several places (a residual stream) sums their correlations.
    `model` is a template of the architecture; its weights are overwritten.
    """
    spec.check(weights_a, "A")
    spec.check(weights_b, "B")
    inputs = as_inputs(batches)
    nodes = sorted({site.node for sites in spec.sites.values() for site in sites})
    networks = []
    for weights in (weights_a, weights_b):
        network = model if not networks else copy.deepcopy(model)
        network.load_state_dict(weights)
        networks.append(probe(trace(network.eval()), nodes).eval())
    stats = {(g, site): _Correlation() for g, sites in spec.sites.items() for site in sites}
    with torch.no_grad():
        for x in inputs:
            outputs = [dict(zip(nodes, net(x), strict=True)) for net in networks]
            for (group, site), corr in stats.items():
                size = spec.sizes[group]
                corr.add(
                    _site_rows(outputs[0][site.node], site, size),
                    _site_rows(outputs[1][site.node], site, size),
                )
    perm = {}
    for group, sites in spec.sites.items():
        perm[group] = _assign(sum(stats[(group, site)].matrix() for site in sites))
    return perm
