"""`lmctrack find-k`: the earliest stable rewind step, by bisection with as many copies as it
takes to decide, and what it cost against the full grid."""

from __future__ import annotations

from typing import Annotated

import typer

from lmctrack.cli.options import Common, command, table


@command("find-k")
def find_k(
    imp: Annotated[
        bool, typer.Option("--imp", help="the IMP subnetwork at --density, and is it matching")
    ] = False,
    density: Annotated[
        float | None,
        typer.Option(
            "--density", help="--imp: weights kept (the nearest IMP level; default imp.levels)"
        ),
    ] = None,
    *,
    opts: Common,
) -> None:
    """The earliest stable rewind step k* among instability.candidates: bisection, copy-aware
    bounds at each probed k, copies added until one of them decides.

    The bounds take copies, not pairs, as the unit and spend the error over the looks
    (lmctrack.engine.earliest), so the stated confidence holds."""
    from lmctrack import api
    from lmctrack.errors import LmcError

    if density is not None and not imp:
        raise LmcError("--density picks the IMP subnetwork; add --imp")
    with opts.workspace() as ctx:
        result = api.find_k(imp=imp, density=density, ctx=ctx)
    table(
        f"find-k: {result.model} (bn={result.bn}, {result.split} barrier)",
        ["k", "role", "copies", "pairs", "mean", "low", "high", "decision"],
        [
            [f"{p.k}it", p.role, p.copies, len(p.barriers), p.mean, p.low, p.high, p.decision]
            for p in result.search.probes
        ],
    )
    typer.echo(result.summary(), err=True)
    typer.echo(result.cost(), err=True)
    k_star = "none" if result.k_star is None else f"{result.k_star}it"
    opts.finish(ctx, "find_k.json", result, [("run_id", result.run_id), ("k_star", k_star)])
