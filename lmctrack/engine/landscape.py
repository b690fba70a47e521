"""Loss-landscape planes: error and loss on a 2-D grid of weight space.

`plane` spans the plane through three states (e.g. Wk and two copies W_T1, W_T2 trained from
it): u = a - origin, v = (b - origin) minus its projection on u, both normalised (Gram-Schmidt),
so a lies on the x axis at |a - origin| and b above it. The grid is laid out so that the origin,
a, and b's height fall exactly on grid nodes: the plane's values there are the states' own.

`random_directions_plane` spans two filter-normalised random directions around one state (Li et
al. 2018, "Visualizing the Loss Landscape of Neural Nets").

Geometry uses the trainable parameters only. A point of the plane is the affine combination
origin + alpha (a - origin) + beta (b - origin) of whole state_dicts; under bn="interpolate" the
BatchNorm running statistics are combined the same way (variances clipped at 0 where the margin
extrapolates), under bn="reset" they are recomputed from training data at every point. With a
mask (the origin's), directions are 0 on pruned weights, so every point stays in the subnetwork.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from lmctrack.engine.evaluate import check_fits, evaluate
from lmctrack.engine.interpolate import BN_POLICIES, recompute_bn
from lmctrack.engine.state import Mask, State
from lmctrack.errors import LmcError

Weights = dict[str, torch.Tensor]


@dataclass
class Plane:
    """Grid values: loss[i][j] and error[i][j] are at (xs[j], ys[i]) (matplotlib's contour order)."""

    xs: list[float]
    ys: list[float]
    loss: list[list[float]]
    error: list[list[float]]
    points: dict[str, tuple[float, float]] = field(default_factory=dict)
    split: str = "test"
    bn: str = "reset"
    labels: tuple[str, str] = ("x", "y")  # what the axes measure


def _parameter_names(model: nn.Module) -> list[str]:
    return [name for name, _ in model.named_parameters()]


def _dot(x: Weights, y: Weights, names: list[str]) -> float:
    return float(sum((x[n].double() * y[n].double()).sum() for n in names))


def _difference(x: Weights, y: Weights) -> Weights:
    """x - y on the floating tensors (integer buffers such as num_batches_tracked are left out)."""
    return {n: t - y[n] for n, t in x.items() if t.is_floating_point()}


def _masked(state: State, mask: Mask | None) -> Weights:
    """The state's weights with `mask` applied (the origin's mask holds for the whole plane)."""
    return State(weights=state.weights, mask=mask).masked_weights()


def _axis(coords: list[float], unit: float, grid: int, margin: float) -> list[float]:
    """`grid` evenly spaced nodes covering `coords` plus a margin, with 0 and `unit` on nodes.

    The step is unit / k for a whole k, chosen as large as the span allows, and the spare nodes
    are shared between both ends.
    """
    low, high = min(coords), max(coords)
    extent = high - low
    low, high = low - margin * extent, high + margin * extent
    k = max(1, math.floor((grid - 1) * unit / (high - low)))
    step = unit / k
    spare = (grid - 1) * step - (high - low)
    first = round((low - spare / 2) / step)
    first = max(
        min(first, math.floor(min(coords) / step)), math.ceil(max(coords) / step) - grid + 1
    )
    return [(first + i) * step for i in range(grid)]


@dataclass(frozen=True)
class Evaluation:
    """How every node of a plane is measured (BatchNorm policies: see the module)."""

    split: str = "test"
    bn: str = "reset"
    device: str | torch.device = "cpu"
    limit: int | None = None  # the split's first `limit` examples (None: all of it)
    bn_limit: int | None = None  # training examples that re-estimate BatchNorm under "reset"

    def grid(
        self,
        model: nn.Module,
        dataset,
        point: Callable[[float, float], Weights],
        xs: list[float],
        ys: list[float],
    ) -> tuple[list[list[float]], list[list[float]]]:
        """Loss and error at every node (x, y); the model's own state is restored afterwards."""
        if self.bn not in BN_POLICIES:
            raise LmcError(
                f"bn='{self.bn}' is not a BatchNorm policy; use one of {', '.join(BN_POLICIES)}"
            )
        saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.to(self.device)
        loss, error = [], []
        try:
            for y in ys:
                loss.append([])
                error.append([])
                for x in xs:
                    model.load_state_dict(self._loadable(point(x, y)), strict=True)
                    if self.bn == "reset":
                        recompute_bn(model, dataset, device=self.device, limit=self.bn_limit)
                    result = evaluate(
                        model, dataset, self.split, device=self.device, limit=self.limit
                    )
                    loss[-1].append(result.loss)
                    error[-1].append(result.error)
        finally:
            model.load_state_dict(saved)
        return loss, error

    def _loadable(self, weights: Weights) -> Weights:
        """Running variances extrapolated below 0 by a margin would make BatchNorm return NaN
        (under "reset" they are recomputed anyway)."""
        if self.bn != "interpolate":
            return weights
        return {n: t.clamp(min=0) if n.endswith("running_var") else t for n, t in weights.items()}


def plane(
    model: nn.Module,
    origin: State,
    a: State,
    b: State,
    dataset,
    *,
    grid: int = 11,
    margin: float = 0.2,
    names: tuple[str, str, str] = ("origin", "a", "b"),
    at: Evaluation = Evaluation(),
) -> Plane:
    """Evaluate the plane through origin, a and b on a grid x grid lattice, each node `at` the
    given split, BatchNorm policy and device.

    `model` is a template of the right architecture (its own state is restored afterwards);
    `names` label the three points (e.g. ("Wk", "W_T1", "W_T2")).
    """
    if grid < 2:
        raise LmcError(f"grid={grid}: a plane needs at least 2 nodes per axis")
    for state in (origin, a, b):
        check_fits(model, state)
    params = _parameter_names(model)
    o = {k: v.to(at.device) for k, v in _masked(origin, origin.mask).items()}
    du = _difference({k: v.to(at.device) for k, v in _masked(a, origin.mask).items()}, o)
    dv = _difference({k: v.to(at.device) for k, v in _masked(b, origin.mask).items()}, o)
    u_norm = math.sqrt(_dot(du, du, params))
    if u_norm == 0:
        raise LmcError(f"{names[1]} equals {names[0]}: a plane needs three distinct states")
    b_x = _dot(dv, du, params) / u_norm
    b_y = math.sqrt(max(_dot(dv, dv, params) - b_x**2, 0.0))
    if b_y <= 1e-6 * max(u_norm, 1.0):
        raise LmcError(
            f"{names[2]} lies on the line through {names[0]} and {names[1]}; "
            "choose three states that span a plane"
        )

    def point(x: float, y: float) -> Weights:
        beta = y / b_y
        alpha = (x - beta * b_x) / u_norm
        return {k: o[k] + alpha * du[k] + beta * dv[k] if k in du else o[k] for k in o}

    xs = _axis([0.0, u_norm, b_x], u_norm, grid, margin)
    ys = _axis([0.0, b_y], b_y, grid, margin)
    loss, error = at.grid(model, dataset, point, xs, ys)
    points = {names[0]: (0.0, 0.0), names[1]: (u_norm, 0.0), names[2]: (b_x, b_y)}
    labels = (
        f"x: along {names[1]} - {names[0]} (L2 distance)",
        f"y: toward {names[2]}, orthogonal to x (L2 distance)",
    )
    return Plane(xs, ys, loss, error, points, at.split, at.bn, labels)


def filter_normalized_direction(
    center: Weights, params: list[str], generator: torch.Generator, mask: Mask | None = None
) -> Weights:
    """A random direction, each filter (row along dim 0) rescaled to the norm of the center's.

    Biases, BatchNorm parameters (1-D tensors) and buffers get 0; so do pruned weights.
    """
    direction = {}
    for name, t in center.items():
        if name not in params or t.dim() < 2:
            direction[name] = torch.zeros_like(t)
            continue
        d = torch.randn(t.shape, generator=generator, dtype=torch.float32).to(t.device, t.dtype)
        if mask is not None and name in mask:
            keep = mask[name].to(t.device, t.dtype)
            d, t = d * keep, t * keep
        rows, ref = d.reshape(len(d), -1), t.reshape(len(t), -1)
        scale = ref.norm(dim=1) / rows.norm(dim=1).clamp(min=1e-12)
        direction[name] = (rows * scale[:, None]).reshape(t.shape)
    return direction


def random_directions_plane(
    model: nn.Module,
    center: State,
    dataset,
    *,
    seed: int = 0,
    grid: int = 11,
    span: float = 1.0,
    name: str = "center",
    at: Evaluation = Evaluation(),
) -> Plane:
    """Evaluate center + x d1 + y d2 for x, y in [-span, span], d1, d2 filter-normalised.

    The directions are 0 on BatchNorm buffers, so bn="interpolate" keeps the center's running
    statistics. With an odd `grid` the center is the middle node. Directions are drawn on the CPU from
    `seed`, so the plane is the same on every device.
    """
    if grid < 2:
        raise LmcError(f"grid={grid}: a plane needs at least 2 nodes per axis")
    check_fits(model, center)
    params = _parameter_names(model)
    c = {k: v.to(at.device) for k, v in center.masked_weights().items()}
    generator = torch.Generator().manual_seed(seed)
    d1 = filter_normalized_direction(c, params, generator, center.mask)
    d2 = filter_normalized_direction(c, params, generator, center.mask)

    def point(x: float, y: float) -> Weights:
        return {k: c[k] + x * d1[k] + y * d2[k] if c[k].is_floating_point() else c[k] for k in c}

    step = 2 * span / (grid - 1)
    coords = [(i - (grid - 1) / 2) * step for i in range(grid)]
    loss, error = at.grid(model, dataset, point, coords, coords)
    labels = (
        "x: filter-normalised random direction 1",
        "y: filter-normalised random direction 2",
    )
    return Plane(coords, list(coords), loss, error, {name: (0.0, 0.0)}, at.split, at.bn, labels)
