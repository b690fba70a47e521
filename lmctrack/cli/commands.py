"""The paper's commands: train, fork (Algorithm 1), interpolate, imp (Algorithm 2), the
baselines, the instability sweeps and the report. Each parses, calls one workflow, prints."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lmctrack.cli.options import (
    WORKSPACE,
    Common,
    PruneDataOpt,
    RunIdOpt,
    app,
    command,
    guarded,
    param,
    prune_data_file,
    run_id_of,
    step_of,
    table,
)
from lmctrack.config.overrides import Overrides
from lmctrack.errors import LmcError

# The options that set a params key, declared from its field (type, help, default).
SeedsOpt = param("instability.copies", "--seeds", "number of copies (noise seeds 1..N)")
AlphasOpt = param("instability.alphas", "--alphas")
SplitsOpt = param("instability.splits", "--split", "test and/or train (repeatable)")
AlignOpt = param("align.method", "--align", "weight | activation: also B aligned to A")
RewindOpt = param("imp.rewind", "--rewind")
LevelsOpt = param("imp.levels", "--levels")
ReplicatesOpt = param("imp.replicates", "--replicates")
OneShotOpt = param("imp.one_shot", "--one-shot")
DensityOpt = param("imp.density", "--density")
InitOpt = param(
    "model.checkpoint", "--init", "W0 from this file (safetensors, or a torch state_dict)"
)


@command()
def train(init: InitOpt = None, *, opts: Common) -> None:
    """Train W0 to W_T; register W0, every rewind state Wk, and W_T as model versions.

    --init FILE: W0 is your checkpoint of model.name (fine-tuning; its path and sha256 in W0's
    lineage); for another number of classes its output layer is replaced by a seeded one."""
    from lmctrack import api

    with opts.workspace() as ctx:
        run = api.train(ctx=ctx)
    states = {api.state_name(s, run.total): uri for s, uri in sorted(run.states.items())}
    result = {"run_id": run.run_id, "reused": run.reused, "states": states}
    opts.finish(ctx, "train.json", result, [("run_id", run.run_id), *states.items()])


@command()
def fork(
    run_id: RunIdOpt = None,
    step: Annotated[
        list[str] | None,
        typer.Option("--step", help="rewind step k of that run; repeat it for several k, or 'all'"),
    ] = None,
    source: Annotated[str | None, typer.Option("--from", help="any state URI instead")] = None,
    mask: Annotated[str | None, typer.Option("--mask", help="URI of a mask to apply")] = None,
    seeds: SeedsOpt = None,
    reset_schedule: Annotated[
        bool, typer.Option("--reset-schedule", help="copies train all T steps (Figure 4)")
    ] = False,
    track_every: Annotated[
        str | None, typer.Option("--track-every", help="also interpolate every N steps (App. C)")
    ] = None,
    *,
    opts: Common,
) -> None:
    """Algorithm 1: train copies of Wk under different SGD noise and interpolate every pair.

    Several --step values (or --step all: every Wk the run registered) fork in one go: all
    copies share one pool of workers."""
    from lmctrack import api

    if seeds is not None and seeds < 2:
        raise LmcError("--seeds must be at least 2: instability compares copies pairwise")
    run_id = run_id_of(run_id)
    if (run_id is None) == (source is None):
        raise LmcError("give either --run-id RUN --step STEP or --from URI (not both)")
    if run_id is not None and not step:
        raise LmcError(
            "--run-id needs --step, e.g. --step 500it (a rewind step the run registered)"
        )
    with opts.workspace(state=source, run_id=run_id) as ctx:
        if source is None:
            run = api.trained(run_id, ctx=ctx)
            if step == ["all"]:
                sources = run.rewind_states
            else:
                sources = [run.at(ctx.steps(step_of(s))) for s in step]
        else:
            sources = [source]
        track = _positive_steps(ctx, track_every, "--track-every")
        results = api.forks(
            sources, mask=mask, reset_schedule=reset_schedule, track_every=track, ctx=ctx
        )
        threshold = ctx.params.instability.stable_threshold
    for result in results:
        table(
            f"fork of {result.source} (k={result.k}, bn={result.bn})"
            + api.tables.soup_words(result),
            *api.tables.fork_table(result, threshold),
        )
    lines = [
        (name, uri)
        for r in results
        for name, uri in (("run_id", r.run_id), *[("W_T", c) for c in r.copies])
    ]
    output = results[0] if len(results) == 1 else {"forks": results}
    opts.finish(ctx, "fork.json", output, lines)


def _positive_steps(ctx, text: str | None, option: str) -> int | None:
    if text is None:
        return None
    steps = ctx.steps(step_of(text))
    if steps <= 0:
        raise LmcError(f"{option} {text} is not a positive number of steps; use e.g. 100it")
    return steps


@command(options=(*WORKSPACE, "bn"), as_json=True)
def interpolate(
    uri_a: Annotated[str, typer.Argument(help="first state (alpha = 0)")],
    uri_b: Annotated[str, typer.Argument(help="second state (alpha = 1)")],
    alphas: AlphasOpt = None,
    split: SplitsOpt = None,
    each_mask: Annotated[
        bool, typer.Option("--each-mask", help="endpoints keep their own (different) masks")
    ] = False,
    align: AlignOpt = None,
    *,
    opts: Common,
) -> None:
    """Evaluate the linear path between two states; report the error and loss barriers."""
    from lmctrack import api
    from lmctrack.config import schema

    with opts.workspace(state=uri_a) as ctx:
        if align:  # naive and aligned paths side by side (Git Re-Basin)
            both = api.connect(uri_a, uri_b, kinds=(schema.NAIVE, schema.PERMUTED), ctx=ctx)
        else:
            pair = api.interpolate(uri_a, uri_b, each_mask=each_mask, ctx=ctx)
    if align:
        from lmctrack.cli.align import connection_table

        connection_table(f"{uri_a} -> {uri_b}", both)
        opts.finish(ctx, "interpolate.json", both, [("aligned", both.aligned)])
        return
    table(
        f"{uri_a} -> {uri_b} (bn={pair.bn})",
        ["split", "error barrier (paper)", "loss barrier (Entezari)"],
        [[s, pair.error_barrier(s), pair.loss_barrier(s)] for s in pair.curves],
    )
    opts.finish(ctx, "interpolate.json", pair, [("run_id", pair.run_id)])


@command()
def instability(
    mask: Annotated[str | None, typer.Option("--mask", help="a mask applied to every Wk")] = None,
    imp: Annotated[
        bool, typer.Option("--imp", help="IMP subnetworks at every k (Figures 6, 7, 9)")
    ] = False,
    *,
    opts: Common,
) -> None:
    """The Figure-3 sweep (inits x copies per rewind step); with --imp, the sparse sweep."""
    from lmctrack import api
    from lmctrack.api import tables as report

    if imp and mask:
        raise LmcError("--imp finds its own masks at every rewind step; drop --mask")
    with opts.workspace() as ctx:
        result = api.instability(sparse=imp, mask=mask, ctx=ctx)
    if imp:
        table("IMP subnetworks vs rewind step (Figures 6, 7)", *report.sparse_table(result))
        table("Figure 9: earliest stable / matching k (median)", *report.earliest_table(result))
        typer.echo(result.claim, err=True)
    else:
        table(f"instability of {result.model} (bn={result.bn})", *report.sweep_table(result))
    name = "sparse.json" if imp else "instability.json"
    opts.finish(ctx, name, result, [("run_id", result.run_id)])


@command()
def imp(
    run_id: RunIdOpt = None,
    source: Annotated[str | None, typer.Option("--from", help="URI of Wk instead")] = None,
    rewind: RewindOpt = None,
    levels: LevelsOpt = None,
    replicates: ReplicatesOpt = None,
    one_shot: OneShotOpt = False,
    density: DensityOpt = None,
    prune_data: PruneDataOpt = None,
    *,
    opts: Common,
) -> None:
    """Algorithm 2: IMP with rewinding, replicated, with the random baselines and Table 2."""
    from lmctrack import api
    from lmctrack.api import tables as report

    prune_data_file(prune_data)
    data = {"imp.prune_data.name": "tensors", "imp.prune_data.path": str(prune_data)}
    flag = f"--prune-data {prune_data}"
    more = Overrides(data, dict.fromkeys(data, flag)) if prune_data is not None else None
    run_id = run_id_of(run_id)
    if (source is None) == (run_id is None):
        raise LmcError(
            "give either --run-id RUN (with --rewind STEP) or --from URI of Wk (not both)"
        )
    with opts.workspace(more=more, state=source, run_id=run_id) as ctx:
        if source is None:
            k = ctx.steps(ctx.params.imp.rewind)
            source = api.trained(run_id, ctx=ctx).at(k)
        result = api.imp(source, ctx=ctx)
    table(f"IMP rewinding to {result.k}it (n = {result.replicates})", *report.imp_table(result))
    if result.same_basin:
        table("same basin? consecutive levels interpolated", *report.basin_table(result))
    masks = [t for t in result.levels() if t.level > 0]
    opts.finish(
        ctx,
        "imp.json",
        result,
        [("run_id", result.run_id)]
        + [(f"mask level {t.level} density {t.density:.4f}", t.start) for t in masks],
    )


@command(options=("params", "set_"))
def prune(
    source: Annotated[str, typer.Option("--from", help="a mask (subnetwork) URI")],
    random: Annotated[
        bool, typer.Option("--random/--no-random", help="shuffle the mask (baseline)")
    ] = True,
    seed: Annotated[int, typer.Option("--seed", help="seed of the shuffle")] = 0,
    strategy: Annotated[
        str, typer.Option("--strategy", help="layerwise (each layer's density) | global")
    ] = "layerwise",
    *,
    opts: Common,
) -> None:
    """Register the random-pruning baseline of a subnetwork (same sparsity, random positions)."""
    from lmctrack import api

    if not random:
        raise LmcError("magnitude pruning is done level by level by `lmctrack imp`; use --random")
    with opts.workspace(state=source) as ctx:
        typer.echo(api.random_prune(source, seed, strategy, ctx=ctx))


@command(options=("params", "set_"))
def reinit(
    source: Annotated[str, typer.Option("--from", help="a mask (subnetwork) URI")],
    seed: Annotated[int, typer.Option("--seed", help="init seed of the fresh network")] = 1,
    *,
    opts: Common,
) -> None:
    """Register the random-reinitialization baseline: the mask on a fresh initialization."""
    from lmctrack import api

    with opts.workspace(state=source) as ctx:
        typer.echo(api.reinit(source, seed, ctx=ctx))


@app.command()
@guarded
def report(
    outputs: Annotated[Path, typer.Option("--outputs", help="the stages' --out folders")] = Path(
        "outputs"
    ),
    out: Annotated[Path, typer.Option("--out", help="where report.md goes")] = Path(
        "outputs/report"
    ),
) -> None:
    """Collect the pipeline's results into report.md and summary.json (DVC metrics)."""
    from lmctrack import api

    summary = api.report(outputs, out)
    typer.echo(str(out / "report.md"))
    table("summary", ["metric", "value"], [[k, v] for k, v in summary.items()])
