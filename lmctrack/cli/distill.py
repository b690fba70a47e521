"""Dataset distillation and the 2023 follow-up: `distill` makes and registers a distilled set
(usable as `imp --prune-data FILE`), `followup` compares real-data and distilled-data IMP."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import typer

from lmctrack.cli.options import (
    Common,
    PruneDataOpt,
    RunIdOpt,
    command,
    param,
    prune_data_file,
    run_id_of,
    table,
)

DISTILL_OUT = Path("outputs/distill")
FOLLOWUP_OUT = Path("outputs/followup")
MethodOpt = param("distill.method", "--method")


@command()
def distill(method: MethodOpt = None, *, opts: Common) -> None:
    """Distill the training set (MTT or DM) and report its quality against real data.

    Writes OUT/distilled.safetensors, registers it with its lineage, and compares networks
    trained only on it with networks trained on a random real subset of the same size."""
    from lmctrack import api

    opts = dataclasses.replace(opts, out=opts.out or DISTILL_OUT)
    with opts.workspace() as ctx:
        result = api.distill(opts.out, ctx=ctx)
    table(
        f"{result.method} distillation, {result.images_per_class} per class"
        + (" (reused)" if result.reused else ""),
        ["training set", "test accuracy (mean ± std over seeds)"],
        _quality_rows(result),
    )
    opts.finish(
        ctx,
        "distill.json",
        result,
        [("run_id", result.run_id), ("file", result.path), ("sha256", result.sha256)],
    )


def _quality_rows(result) -> list[list[str]]:
    from lmctrack.engine.distill.quality import percent

    q = result.quality
    return [
        [f"{label} ({q.size})", percent(q.accuracy(trained_on))]
        for trained_on, label in (("distilled", "distilled"), ("random", "random real"))
    ]


@command()
def followup(
    run_id: RunIdOpt = None,
    prune_data: PruneDataOpt = None,
    *,
    opts: Common,
) -> None:
    """The 2023 follow-up: IMP on real vs distilled data from one Wk, with a stability verdict.

    Compares accuracy, matching, instability on the real data, the Hessian and the error plane,
    and gives a verdict on the follow-up's stability claim. Without --prune-data the distilled
    set is made first (`distill`, reused when done)."""
    from lmctrack import api

    prune_data_file(prune_data)
    opts = dataclasses.replace(opts, out=opts.out or FOLLOWUP_OUT)
    run_id = run_id_of(run_id)
    with opts.workspace(run_id=run_id) as ctx:
        result = api.followup(run_id, prune_data, out=opts.out, ctx=ctx)
    table(f"real vs distilled IMP from {result.wk}", *result.table())
    typer.echo(result.claim, err=True)
    opts.finish(ctx, "", result, [("run_id", result.run_id), ("more_stable", result.more_stable)])
