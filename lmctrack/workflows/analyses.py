"""Follow-up analyses of registered states, each one logged run returning a typed result
(lmctrack.results.analyses: Hessian, Landscape).

- `hessian`: Hutchinson's estimate of the Hessian diagonal of the train loss at a state (the 2023
  follow-up compares IMP subnetworks, e.g. found with real vs distilled data, by it). The diagonal
  itself is logged, so two subnetworks can be compared entry by entry, not only by summaries.
- `plane`: error and loss on the plane through three states, e.g. Wk and two copies W_T trained
  from it; `random_plane`: along two filter-normalised random directions around one state.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from lmctrack.config import schema
from lmctrack.engine.evaluate import first_mismatch, load_into
from lmctrack.engine.hessian import hessian_diagonal, summary
from lmctrack.engine.landscape import Evaluation, Plane, random_directions_plane
from lmctrack.engine.landscape import plane as plane_through
from lmctrack.engine.state import Mask, State
from lmctrack.errors import LmcError
from lmctrack.results.analyses import Hessian, Landscape, PlanePoint
from lmctrack.results.paper import to_dict
from lmctrack.results.plots import _figure, save
from lmctrack.workflows.common import Context

SPLITS = ("test", "train")
DIAGONAL_FILE = "hessian_diagonal.safetensors"
HESSIAN_DEFINITION = (
    "diag(H) ~ mean of z * Hz over Rademacher z (Hutchinson); H of the mean train cross-entropy "
    "on the first `limit` train examples, BatchNorm in eval mode; pruned entries are exactly 0 "
    "and left out of the summary; trace = sum of the kept entries"
)


def _label(ctx: Context, uri: str) -> str:
    """A state's name on a plot: its paper name and version, e.g. 'W_T v7'."""
    info = ctx.store.describe(uri)
    return f"{info.tags.get('state', info.tags.get('role', 'state'))} v{info.version}"


def _kept(diag: dict[str, torch.Tensor], mask: Mask | None) -> torch.Tensor:
    """The diagonal's entries that belong to the (sub)network, flattened."""
    return torch.cat(
        [(t[mask[n]] if mask and n in mask else t.reshape(-1)).double() for n, t in diag.items()]
    )


def plot_hessian(diag: dict[str, torch.Tensor], mask: Mask | None, title: str):
    """Histogram of log10 |diag(H)| over the kept entries, positive and negative estimates apart
    (the estimate of a non-convex loss can be negative); exact zeros are counted in the title."""
    kept = _kept(diag, mask)
    nonzero = kept[kept != 0]
    logs = nonzero.abs().log10()
    low, high = (float(logs.min()), float(logs.max())) if logs.numel() else (0.0, 1.0)
    fig, axes = _figure()
    ax = axes[0][0]
    for sign, name in ((nonzero > 0, "h > 0"), (nonzero < 0, "h < 0")):
        ax.hist(
            logs[sign].numpy(),
            bins=50,
            range=(low, max(high, low + 1e-6)),
            alpha=0.6,
            label=f"{name} ({int(sign.sum())} entries)",
        )
    ax.set_yscale("log")
    ax.set_xlabel("log10 |Hessian diagonal entry|")
    ax.set_ylabel("entries")
    ax.legend(fontsize="small")
    zeros = kept.numel() - nonzero.numel()
    ax.set_title(f"{title}\n{kept.numel()} kept entries, {zeros} exactly 0", fontsize="medium")
    return fig


def _write_outputs(
    ctx: Context, stem: str, result: Hessian | Landscape, figures: list[Path]
) -> None:
    """The JSON result and the figures for DVC, when an output folder was given."""
    if ctx.write_output(f"{stem}.json", to_dict(result)) is None:
        return
    for figure in figures:
        shutil.copyfile(figure, ctx.out / figure.name)


def hessian(
    ctx: Context, uri: str, *, samples: int = 100, limit: int = 1000, seed: int = 0
) -> Hessian:
    """`lmctrack hessian URI`: the Hessian diagonal of the train loss at a state, as a run.

    Logs the summary metrics (mean, max, min, trace, top entries, per-layer means), the diagonal
    (safetensors, same tensor names as the state), a histogram and the JSON result.
    """
    state = ctx.store.load_state(uri)
    model = load_into(ctx.template(), state)
    diag = hessian_diagonal(
        model,
        ctx.dataset,
        samples=samples,
        limit=limit,
        mask=state.mask,
        seed=seed,
        device=ctx.device,
    )
    diag = {name: t.detach().cpu().contiguous() for name, t in diag.items()}
    result = Hessian(
        uri=uri,
        samples=samples,
        limit=limit,
        examples=min(limit, ctx.dataset.num_examples("train")),
        seed=seed,
        density=state.density(),
        summary=summary(diag, state.mask),
        diagonal=DIAGONAL_FILE,
        definition=HESSIAN_DEFINITION,
    )
    stem = schema.KIND_HESSIAN
    with ctx.run(
        stem,
        params={"uri": uri, "samples": samples, "limit": limit, "seed": seed},
        tags={schema.KIND: stem},
    ) as run:
        run.log_input_states([uri])
        run.log_metrics(result.summary)
        folder = ctx.scratch() / run.id
        folder.mkdir(parents=True, exist_ok=True)
        save_file(diag, str(folder / DIAGONAL_FILE))
        run.log_file(folder / DIAGONAL_FILE)
        title = f"Hessian diagonal of {_label(ctx, uri)} ({samples} samples, {result.examples} train examples)"
        figure = save(plot_hessian(diag, state.mask, title), folder / f"{stem}.png")
        run.log_file(figure, "plots")
        result.run_id = run.id
        run.log_json(to_dict(result), f"{stem}.json")
    _write_outputs(ctx, stem, result, [figure])
    return result


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise LmcError(f"split '{split}' is not known; use one of: {', '.join(SPLITS)}")


def _check_same_model(uris: list[str], states: list[State]) -> None:
    for uri, state in zip(uris[1:], states[1:]):
        problem = first_mismatch(states[0].weights, state.weights, (uris[0], uri))
        if problem is not None:
            raise LmcError(
                f"states are from different architectures: {problem}; "
                "a plane needs three states of the same model"
            )


def _node(coords: list[float], value: float) -> int | None:
    """Index of the grid node at `value`, if there is one (the planes put their states on nodes)."""
    i = min(range(len(coords)), key=lambda j: abs(coords[j] - value))
    tolerance = 1e-6 * abs(coords[1] - coords[0])
    return i if abs(coords[i] - value) <= tolerance else None


def _log_plane(
    ctx: Context,
    stem: str,
    p: Plane,
    roles: dict[str, tuple[str, str]],
    params: dict,
    title: str,
    metrics: dict[str, float] | None = None,
) -> Landscape:
    """Log a plane as a run: grid table, JSON, error and loss figures, metrics; `roles` maps
    origin / a / b (or center) to (URI, point name on the plane)."""
    points = {}
    for role, (uri, name) in roles.items():
        x, y = p.points[name]
        points[role] = PlanePoint(uri, name, x, y)
        i, j = _node(p.ys, y), _node(p.xs, x)
        if i is not None and j is not None:
            points[role].error, points[role].loss = p.error[i][j], p.loss[i][j]
    numbers = {
        f"{metric}_{end}": float(fn(v for row in getattr(p, metric) for v in row))
        for metric in ("error", "loss")
        for end, fn in (("min", min), ("max", max))
    }
    numbers.update(metrics or {})
    for role, point in points.items():
        if point.error is not None:
            numbers.update({f"{role}_error": point.error, f"{role}_loss": point.loss})
    grid = {field: getattr(p, field) for field in ("split", "bn", "xs", "ys", "error", "loss")}
    result = Landscape(
        stem, title, params, points=points, labels=list(p.labels), summary=numbers, **grid
    )
    with ctx.run(stem, params=params, tags={schema.KIND: stem}) as run:
        run.log_input_states([point.uri for point in points.values()])
        run.log_metrics(numbers)
        run.log_table(result.nodes(), f"{stem}_grid.json")
        folder = ctx.scratch() / run.id
        figures = [
            save(result.plot(metric), folder / f"{stem}{suffix}.png")
            for metric, suffix in (("error", ""), ("loss", "_loss"))
        ]
        for figure in figures:
            run.log_file(figure, "plots")
        result.run_id = run.id
        run.log_json(to_dict(result), f"{stem}.json")
    _write_outputs(ctx, stem, result, figures)
    return result


def plane(
    ctx: Context,
    origin_uri: str,
    a_uri: str,
    b_uri: str,
    *,
    grid: int = 11,
    margin: float = 0.2,
    split: str = "test",
) -> Landscape:
    """`lmctrack plane ORIGIN A B`: error and loss on the plane through three states (e.g. Wk and
    two copies W_T), BatchNorm statistics by the instability.bn policy.

    The x axis runs from ORIGIN to A, so a barrier between the copies shows as a ridge between the
    points A and B. ORIGIN's mask (if any) holds on the whole plane.
    """
    _check_split(split)
    if margin < 0:
        raise LmcError(f"margin={margin}: give a margin >= 0 (a fraction of the points' extent)")
    uris = [origin_uri, a_uri, b_uri]
    states = [ctx.store.load_state(uri) for uri in uris]
    _check_same_model(uris, states)
    names = [_label(ctx, uri) for uri in uris]
    if len(set(names)) < len(names):
        names = uris
    bn = ctx.params.instability.bn
    at = Evaluation(split, bn, ctx.device)
    values = plane_through(
        ctx.template(), *states, ctx.dataset, grid=grid, margin=margin, names=tuple(names), at=at
    )
    params = {
        "origin": origin_uri,
        "a": a_uri,
        "b": b_uri,
        "grid": grid,
        "margin": margin,
        "split": split,
        "bn": bn,
    }
    roles = dict(zip(("origin", "a", "b"), zip(uris, names)))
    title = f"{ctx.model_name}: plane through {', '.join(names)}"
    # A lies on the x axis: the angle at ORIGIN between A and B is B's polar angle.
    (a_x, _), (b_x, b_y) = values.points[names[1]], values.points[names[2]]
    geometry = {
        "distance_a": a_x,
        "distance_b": math.hypot(b_x, b_y),
        "angle_ab_degrees": math.degrees(math.atan2(b_y, b_x)),
    }
    return _log_plane(ctx, schema.KIND_PLANE, values, roles, params, title, geometry)


def random_plane(
    ctx: Context,
    uri: str,
    *,
    grid: int = 11,
    span: float = 1.0,
    seed: int = 0,
    split: str = "test",
) -> Landscape:
    """`lmctrack plane-random URI`: error and loss at state + x d1 + y d2, x, y in [-span, span],
    d1, d2 filter-normalised random directions drawn from `seed` (Li et al. 2018)."""
    _check_split(split)
    if not span > 0:
        raise LmcError(f"span={span}: give a span > 0 (in units of the filters' norms)")
    name = _label(ctx, uri)
    bn = ctx.params.instability.bn
    values = random_directions_plane(
        ctx.template(),
        ctx.store.load_state(uri),
        ctx.dataset,
        seed=seed,
        grid=grid,
        span=span,
        name=name,
        at=Evaluation(split, bn, ctx.device),
    )
    params = {"center": uri, "grid": grid, "span": span, "seed": seed, "split": split, "bn": bn}
    title = f"{ctx.model_name}: random directions around {name} (seed {seed})"
    roles = {"center": (uri, name)}
    return _log_plane(ctx, schema.KIND_RANDOM_PLANE, values, roles, params, title)
