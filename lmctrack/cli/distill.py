"""Dataset distillation and the 2023 follow-up: `distill` makes and registers a distilled set
(usable as `imp --prune-data FILE`), `followup` compares real-data and distilled-data IMP."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from lmctrack.cli.options import (
    Common,
    PruneDataOpt,
    RunIdOpt,
    command,
    prune_data_file,
    run_id_of,
    table,
)

DISTILL_OUT = Path("outputs/distill")
FOLLOWUP_OUT = Path("outputs/followup")
MethodOpt = Annotated[
    str | None, typer.Option("--method", help="mtt | dm (default: distill.method)")
]


@command()
def distill(method: MethodOpt = None, *, opts: Common) -> None:
    """Distill the training set (MTT or DM) and report its quality against real data.

    Writes OUT/distilled.safetensors, registers it with its lineage, and compares networks
    trained only on it with networks trained on a random real subset of the same size."""
    from lmctrack.workflows.distill import distill as run_distill

    opts = dataclasses.replace(opts, out=opts.out or DISTILL_OUT)
    with opts.workspace(more=[f"distill.method={method}"] if method else []) as ctx:
        result = run_distill(ctx, opts.out)
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
    from lmctrack.distill.quality import percent

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
    from lmctrack.config import DataConfig
    from lmctrack.workflows.distill import TENSORS
    from lmctrack.workflows.distill import distill as run_distill
    from lmctrack.workflows.followup import distilled_search
    from lmctrack.workflows.followup import followup as compare
    from lmctrack.workflows.train import registered_run, train_run

    prune_data_file(prune_data)
    opts = dataclasses.replace(opts, out=opts.out or FOLLOWUP_OUT)
    run_id = run_id_of(run_id)
    with opts.workspace(run_id=run_id) as ctx:
        if prune_data is not None:  # a file that does not fit the network: before any training
            distilled_search(ctx, DataConfig(name=TENSORS, path=str(prune_data)))
        k = ctx.steps(ctx.params.imp.rewind)
        trained = (
            train_run(ctx) if run_id is None else registered_run(ctx.store, run_id, ctx.total_steps)
        )
        wk = trained.at(k)
        if prune_data is None:
            prune_data = Path(run_distill(ctx, opts.out).path)
        result = compare(ctx, wk, DataConfig(name=TENSORS, path=str(prune_data)))
    table(f"real vs distilled IMP from {wk}", *result.table())
    typer.echo(result.claim, err=True)
    opts.finish(ctx, "", result, [("run_id", result.run_id), ("more_stable", result.more_stable)])
