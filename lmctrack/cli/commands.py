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
    prune_data_file,
    run_id_of,
    step_of,
    table,
)
from lmctrack.errors import LmcError


@command()
def train(opts: Common) -> None:
    """Train W0 to W_T; register W0, every rewind state Wk, and W_T as model versions."""
    from lmctrack.workflows.train import state_name, train_run

    with opts.workspace() as ctx:
        run = train_run(ctx)
    states = {state_name(s, run.total): uri for s, uri in sorted(run.states.items())}
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
    seeds: Annotated[int, typer.Option("--seeds", help="number of copies (noise seeds 1..N)")] = 2,
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
    from lmctrack.workflows.report import fork_table
    from lmctrack.workflows.train import registered_run

    if seeds < 2:
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
            run = registered_run(ctx.store, run_id, ctx.total_steps)
            if step == ["all"]:
                sources = run.rewind_states
            else:
                sources = [run.at(ctx.steps(step_of(s))) for s in step]
        else:
            sources = [source]
        track = _positive_steps(ctx, track_every, "--track-every")
        results = api.forks(
            sources, seeds, mask=mask, reset_schedule=reset_schedule, track_every=track, ctx=ctx
        )
        threshold = ctx.params.instability.stable_threshold
    for result in results:
        table(
            f"fork of {result.source} (k={result.k}, bn={result.bn})",
            *fork_table(result, threshold),
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
    alphas: Annotated[
        int | None, typer.Option("--alphas", help="points, both ends included")
    ] = None,
    split: Annotated[list[str] | None, typer.Option("--split", help="test and/or train")] = None,
    each_mask: Annotated[
        bool, typer.Option("--each-mask", help="endpoints keep their own (different) masks")
    ] = False,
    align: Annotated[
        str | None, typer.Option("--align", help="weight | activation: also B aligned to A")
    ] = None,
    *,
    opts: Common,
) -> None:
    """Evaluate the linear path between two states; report the error and loss barriers."""
    from lmctrack import api

    sets = [f"instability.alphas={alphas}"] if alphas is not None else []
    sets += [f"instability.splits=[{','.join(split)}]"] if split else []
    sets += [f"align.method={align}"] if align else []
    with opts.workspace(more=sets, state=uri_a) as ctx:
        if align:  # naive and aligned paths side by side (Git Re-Basin)
            from lmctrack import schema
            from lmctrack.workflows.connect import connect_two

            both = connect_two(ctx, uri_a, uri_b, kinds=(schema.NAIVE, schema.PERMUTED))
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
    from lmctrack.workflows import report

    if imp and mask:
        raise LmcError("--imp finds its own masks at every rewind step; drop --mask")
    with opts.workspace() as ctx:
        if imp:
            from lmctrack.workflows.imp_chain import mask_search
            from lmctrack.workflows.sparse import sparse_instability

            result = sparse_instability(ctx, mask_search(ctx))
        else:
            from lmctrack.workflows.instability import instability as sweep

            result = sweep(ctx, mask=mask)
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
    rewind: Annotated[
        str | None, typer.Option("--rewind", help="rewind step k, e.g. 500it")
    ] = None,
    levels: Annotated[int | None, typer.Option("--levels", help="levels (density 0.8^L)")] = None,
    replicates: Annotated[
        int | None, typer.Option("--replicates", help="IMP runs, each with its own noise")
    ] = None,
    one_shot: Annotated[
        bool, typer.Option("--one-shot", help="prune to --density at once")
    ] = False,
    density: Annotated[float | None, typer.Option("--density", help="one-shot: kept")] = None,
    prune_data: PruneDataOpt = None,
    *,
    opts: Common,
) -> None:
    """Algorithm 2: IMP with rewinding, replicated, with the random baselines and Table 2."""
    from lmctrack.workflows import report
    from lmctrack.workflows.imp import imp as algorithm2
    from lmctrack.workflows.imp_chain import mask_search
    from lmctrack.workflows.train import registered_run

    sets = []
    for key, value in (
        ("levels", levels),
        ("replicates", replicates),
        ("density", density),
        ("rewind", rewind),
    ):
        sets += [f"imp.{key}={value}"] if value is not None else []
    sets += ["imp.one_shot=true"] if one_shot else []
    prune_data_file(prune_data)
    if prune_data is not None:
        sets += ["imp.prune_data.name=tensors", f"imp.prune_data.path={prune_data}"]
    run_id = run_id_of(run_id)
    if (source is None) == (run_id is None):
        raise LmcError(
            "give either --run-id RUN (with --rewind STEP) or --from URI of Wk (not both)"
        )
    with opts.workspace(more=sets, state=source, run_id=run_id) as ctx:
        if source is None:
            k = ctx.steps(ctx.params.imp.rewind)
            source = registered_run(ctx.store, run_id, ctx.total_steps).at(k)
        result = algorithm2(ctx, source, mask_search(ctx))
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
    from lmctrack.workflows.baselines import register_random_prune

    if not random:
        raise LmcError("magnitude pruning is done level by level by `lmctrack imp`; use --random")
    with opts.workspace(state=source) as ctx:
        typer.echo(register_random_prune(ctx, source, seed, strategy))


@command(options=("params", "set_"))
def reinit(
    source: Annotated[str, typer.Option("--from", help="a mask (subnetwork) URI")],
    seed: Annotated[int, typer.Option("--seed", help="init seed of the fresh network")] = 1,
    *,
    opts: Common,
) -> None:
    """Register the random-reinitialization baseline: the mask on a fresh initialization."""
    from lmctrack.workflows.baselines import register_reinit

    with opts.workspace(state=source) as ctx:
        typer.echo(register_reinit(ctx, source, seed))


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
    from lmctrack.workflows.report import report as write_report

    summary = write_report(outputs, out)
    typer.echo(str(out / "report.md"))
    table("summary", ["metric", "value"], [[k, v] for k, v in summary.items()])
