"""REPAIR (Jordan et al. 2022): undo the variance collapse of interpolated networks.

Averaging two networks shrinks the spread of each unit's pre-activations, which alone can create
a barrier. REPAIR measures every channel's mean and std on training data in both endpoints and
rescales the interpolated network's channels so that they have (1 - alpha) * stat_A +
alpha * stat_B. The sites are the outputs of conv/linear layers, or of the BatchNorm that follows
a layer where there is one; the output layer is left alone. As in the reference, all channels
are corrected in one pass, each seeing the already-corrected layers before it.

The correction of a channel is y -> k * y + shift, which folds into the layer itself (weight and
bias of a conv/linear layer, gamma and beta of a BatchNorm), so the result is a plain state_dict
of the same architecture. A layer without bias and without a following affine BatchNorm cannot
take the shift; such networks get a clear error.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import fx, nn

from lmctrack.engine.align.trace import (
    LAYERS,
    NORMS,
    as_inputs,
    channel_rows,
    module_of,
    probe,
    trace,
)
from lmctrack.errors import LmcError

EPS = 1e-5  # as BatchNorm's: a dead channel is left (nearly) dead rather than blown up


class ChannelStats:
    """Per-channel mean and std (population) of one site, accumulated over batches."""

    def __init__(self) -> None:
        self.n = 0
        self.total: torch.Tensor | float = 0.0
        self.squares: torch.Tensor | float = 0.0

    def add(self, z: torch.Tensor) -> None:
        rows = channel_rows(z).double()
        self.n += rows.shape[0]
        self.total = self.total + rows.sum(0)
        self.squares = self.squares + (rows * rows).sum(0)

    @property
    def mean(self) -> torch.Tensor:
        return self.total / self.n

    @property
    def var(self) -> torch.Tensor:
        return (self.squares / self.n - self.mean**2).clamp_min(0)

    @property
    def std(self) -> torch.Tensor:
        return self.var.sqrt()


class _Reset(nn.Module):
    """Normalises each channel with the batch's statistics to the goal mean and std, and keeps
    the statistics it saw so that the correction can be folded into the layer afterwards."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.goal_mean, self.goal_std = mean, std
        self.seen = ChannelStats()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self.seen.add(z)
        rows = channel_rows(z).double()
        shape = (1, -1) + (1,) * (z.dim() - 2)
        scale = self.goal_std / (rows.var(0, unbiased=False) + EPS).sqrt()
        shift = self.goal_mean - scale * rows.mean(0)
        return (z.double() * scale.view(shape) + shift.view(shape)).to(z.dtype)


def _logit_layers(gm: fx.GraphModule) -> set[str]:
    """Layers whose outputs reach the network's output without passing another layer."""
    stack = [n for n in gm.graph.nodes if n.op == "output"]
    found: set[str] = set()
    while stack:
        node = stack.pop()
        if isinstance(module_of(gm, node), (*LAYERS, *NORMS)):
            found.add(node.name)
        else:
            stack.extend(node.all_input_nodes)
    return found


def repair_sites(gm: fx.GraphModule) -> list[fx.Node]:
    """The nodes whose channels REPAIR corrects: each hidden layer's output, or its BatchNorm's."""
    logits = _logit_layers(gm)
    sites = []
    for node in gm.graph.nodes:
        module = module_of(gm, node)
        if not isinstance(module, (*LAYERS, *NORMS)) or node.name in logits:
            continue
        users = list(node.users)
        if (
            isinstance(module, LAYERS)
            and users
            and all(isinstance(module_of(gm, u), NORMS) for u in users)
        ):
            continue  # the BatchNorm after it is the site
        if any(s.target == node.target for s in sites):
            raise LmcError(
                f"layer '{node.target}' is called twice; REPAIR needs each layer used once"
            )
        foldable = module.bias is not None and (isinstance(module, LAYERS) or module.affine)
        if not foldable:
            raise LmcError(
                f"REPAIR cannot fold its correction into '{node.target}' (no bias and no affine "
                "BatchNorm after it); use bn='reset' or 'interpolate' for this network"
            )
        sites.append(node)
    return sites


def channel_stats(
    model: nn.Module, weights: dict[str, torch.Tensor], inputs: list[torch.Tensor]
) -> dict[str, ChannelStats]:
    """Each REPAIR site's channel statistics in the network `weights` (eval mode)."""
    model.load_state_dict(weights)
    gm = trace(model.eval())
    names = [node.name for node in repair_sites(gm)]
    net = probe(gm, names).eval()
    stats = {name: ChannelStats() for name in names}
    with torch.no_grad():
        for x in inputs:
            for name, z in zip(names, net(x), strict=True):
                stats[name].add(z)
    return stats


class Repair:
    """REPAIR for one pair of endpoints: their statistics are measured once, on construction,
    then each call repairs one interpolated network.

        fix = Repair(model, weights_a, weights_b, dataset.eval_batches("train", limit=5000))
        weights = fix(weights_alpha, alpha)

    Batches are (x, y) pairs or bare inputs, kept in memory for every call. `model` is a template
    of the architecture; it ends holding the last repaired weights.
    """

    def __init__(
        self,
        model: nn.Module,
        weights_a: dict[str, torch.Tensor],
        weights_b: dict[str, torch.Tensor],
        batches: Iterable,
    ) -> None:
        self.model = model
        self.inputs = as_inputs(batches)
        self.stats_a = channel_stats(model, weights_a, self.inputs)
        self.stats_b = channel_stats(model, weights_b, self.inputs)

    def __call__(self, weights_alpha: dict[str, torch.Tensor], alpha: float) -> dict:
        self.model.load_state_dict(weights_alpha)
        gm = trace(self.model.eval())
        resets: dict[str, _Reset] = {}
        for node in repair_sites(gm):
            a, b = self.stats_a[node.name], self.stats_b[node.name]
            reset = _Reset(torch.lerp(a.mean, b.mean, alpha), torch.lerp(a.std, b.std, alpha))
            resets[node.target] = reset
            gm.add_submodule(f"repair_{node.name}", reset)
            users = list(node.users)
            with gm.graph.inserting_after(node):
                inserted = gm.graph.call_module(f"repair_{node.name}", (node,))
            for user in users:
                user.replace_input_with(node, inserted)
        gm.recompile()
        with torch.no_grad():
            for x in self.inputs:
                gm(x)
        repaired = {k: v.clone() for k, v in weights_alpha.items()}
        for layer, reset in resets.items():
            seen = reset.seen
            scale = reset.goal_std / (seen.var + EPS).sqrt()
            shift = reset.goal_mean - scale * seen.mean
            weight, bias = f"{layer}.weight", f"{layer}.bias"
            w = repaired[weight]
            view = (-1,) + (1,) * (w.dim() - 1)
            repaired[weight] = (w.double() * scale.view(view).to(w.device)).to(w.dtype)
            b = repaired[bias]
            repaired[bias] = (b.double() * scale.to(b.device) + shift.to(b.device)).to(b.dtype)
        self.model.load_state_dict(repaired)
        return repaired


def repair(
    model: nn.Module,
    weights_a: dict[str, torch.Tensor],
    weights_b: dict[str, torch.Tensor],
    weights_alpha: dict[str, torch.Tensor],
    alpha: float,
    batches: Iterable,
) -> dict[str, torch.Tensor]:
    """W_alpha with every hidden channel's mean and std set to the interpolation of the
    endpoints' (REPAIR). For many alphas of one path, build one Repair and call it per alpha."""
    return Repair(model, weights_a, weights_b, batches)(weights_alpha, alpha)
