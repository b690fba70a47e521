"""The follow-up analyses of registered states: the Hessian diagonal and loss-landscape planes."""

from __future__ import annotations

from typing import Annotated

import typer

from lmctrack.cli.options import Common, SplitOpt, command, table
from lmctrack.config.schema import LAYER_MEAN

OPTIONS = ("params", "set_", "device", "out", "as_json")
PLANE_OPTIONS = (*OPTIONS, "bn")
GridOpt = Annotated[
    int, typer.Option("--grid", help="grid nodes per axis (odd: one at the centre)")
]


@command(options=OPTIONS)
def hessian(
    uri: Annotated[str, typer.Argument(help="a state URI; for a sparse state, kept weights only")],
    samples: Annotated[int, typer.Option("--samples", help="Hutchinson's random vectors")] = 100,
    limit: Annotated[
        int, typer.Option("--limit", help="loss on the first N train examples")
    ] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="seed of the random vectors")] = 0,
    *,
    opts: Common,
) -> None:
    """Hessian diagonal of the train loss at a state (Hutchinson), logged with its histogram."""
    from lmctrack import api

    with opts.workspace(state=uri) as ctx:
        result = api.hessian(uri, samples=samples, limit=limit, seed=seed, ctx=ctx)
    s = result.summary
    layers = sorted(k for k in s if k.startswith(LAYER_MEAN))
    table(
        f"Hessian diagonal of {uri} ({samples} samples, {result.examples} train examples)",
        ["statistic", "value"],
        [[k, f"{s[k]:.4g}"] for k in ("mean", "max", "min", "trace", *layers)],
    )
    opts.finish(ctx, "", result, [("run_id", result.run_id)])


def _plane(opts: Common, state: str, title: str, evaluate) -> None:
    """Evaluate a plane in the workspace of `state` and print its points."""
    with opts.workspace(state=state) as ctx:
        result = evaluate(ctx)
    s = result.summary
    rows = [[role, p.uri, p.x, p.y, p.error, p.loss] for role, p in result.points.items()]
    table(
        f"{title} ({result.split} split, bn={result.bn}; "
        f"grid error {s['error_min']:.4f} .. {s['error_max']:.4f})",
        ["point", "state", "x", "y", "error", "loss"],
        [["off grid" if v is None else v for v in row] for row in rows],  # None: off the nodes
    )
    opts.finish(ctx, "", result, [("run_id", result.run_id)])


@command(options=PLANE_OPTIONS)
def plane(
    origin: Annotated[str, typer.Argument(help="the plane's origin, e.g. Wk")],
    uri_a: Annotated[str, typer.Argument(help="a state on the x axis, e.g. W_T of copy 1")],
    uri_b: Annotated[str, typer.Argument(help="a third state, e.g. W_T of copy 2")],
    grid: GridOpt = 11,
    margin: Annotated[float, typer.Option("--margin", help="extent beyond the states")] = 0.2,
    split: SplitOpt = "test",
    *,
    opts: Common,
) -> None:
    """Error and loss on the plane through three states (e.g. Wk, W_T copy 1, W_T copy 2)."""
    from lmctrack import api

    def evaluate(ctx):
        return api.plane(origin, uri_a, uri_b, grid=grid, margin=margin, split=split, ctx=ctx)

    _plane(opts, origin, f"plane through {origin}, {uri_a}, {uri_b}", evaluate)


@command("plane-random", options=PLANE_OPTIONS)
def plane_random(
    uri: Annotated[str, typer.Argument(help="the state at the centre")],
    grid: GridOpt = 11,
    span: Annotated[float, typer.Option("--span", help="half-width, in filter norms")] = 1.0,
    seed: Annotated[int, typer.Option("--seed", help="seed of the two directions")] = 0,
    split: SplitOpt = "test",
    *,
    opts: Common,
) -> None:
    """Error and loss along two filter-normalised random directions around one state."""
    from lmctrack import api

    def evaluate(ctx):
        return api.random_plane(uri, grid=grid, span=span, seed=seed, split=split, ctx=ctx)

    _plane(opts, uri, f"random directions around {uri} (seed {seed}, span {span})", evaluate)
