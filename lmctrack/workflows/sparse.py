"""Figures 6, 7 and 9, and the paper's claim: IMP subnetworks are matching exactly at the rewind
steps k where they are stable.

For each init and each rewind step k: IMP rewinding to k (Algorithm 2, one replicate) finds the
masks; the subnetworks (Wk, m) at the chosen levels are forked (Algorithm 1). Per density and k:
the error barrier between copies (Figure 6) and the copies' test error (Figure 7); per density,
the earliest stable and the earliest matching k, found per sample and then the median taken
(Figure 9). The dense reference of an init is the mean accuracy of its dense networks trained from
every Wk (IMP's level 0).
"""

from __future__ import annotations

from itertools import combinations

from lmctrack.config import schema
from lmctrack.config.schema import Stats
from lmctrack.results.paper import Earliest, Fork, SparseRow, SparseSweep, Trained, to_dict
from lmctrack.workflows import fork as algorithm1
from lmctrack.workflows.common import Context
from lmctrack.workflows.imp import imps
from lmctrack.workflows.imp_chain import MaskSearch
from lmctrack.workflows.instability import copy_seeds, rewind_ks, sweep_seeds
from lmctrack.workflows.training_run import train_runs
from lmctrack.workflows.work import note_reused


def sparse_instability(ctx: Context, search: MaskSearch | None = None) -> SparseSweep:
    """`lmctrack instability --imp`: IMP at every k for every init, then fork the subnetworks;
    the new IMPs' and forks' runs nested under the sweep's run."""
    sp = ctx.params.sparse
    steps = sp.rewind_steps or ctx.params.instability.rewind_steps
    runs = train_runs(ctx, sweep_seeds(ctx, sp.inits), extra_steps=steps)
    sources = {(i, k): t.at(k) for i, t in enumerate(runs) for k in rewind_ks(ctx, steps)}
    params = ctx.run_params(copies=sp.copies, bn=ctx.params.instability.bn, inits=sp.inits)
    with ctx.run(
        "sparse instability sweep", params=params, tags={schema.KIND: schema.KIND_SPARSE}
    ) as run:
        # IMP rewinding to every k of every init (one replicate each), all chains level by level
        found = imps(
            ctx, list(sources.values()), search, with_baselines=False, replicates=1, parent=run
        )
        samples, dense = subnetworks(ctx, run, dict(zip(sources, found, strict=True)), len(runs))
        forks = [f for *_, f in samples]
        note_reused(run, {schema.KIND_IMP: found, schema.KIND_FORK: forks})
        result = summarize(ctx, run.id, samples, dense)
        run.log_json(to_dict(result), "sparse_instability.json")
        run.log_table(result.to_frame().to_dict("records"), "sparse_table.json")
        for figure in write_figures(ctx, result):
            run.log_file(figure, "plots")
    return result


def subnetworks(ctx: Context, run, found: dict, inits: int) -> tuple[list, dict[int, Stats]]:
    """The subnetworks at the chosen levels forked (their runs nested under the sweep's `run`),
    as samples (init, k, IMP training, fork), and each init's dense accuracy."""
    sp = ctx.params.sparse
    levels = sp.levels or [ctx.params.imp.levels]
    chosen = {
        key: [t for t in result.levels() if t.level in levels] for key, result in found.items()
    }
    plans = [
        algorithm1.plan(ctx, t.start, seeds=copy_seeds(ctx, sp.copies))
        for subnets in chosen.values()
        for t in subnets
    ]
    it = iter(algorithm1.forks(ctx, plans, parent=run))
    samples = [(i, k, t, next(it)) for (i, k), subnets in chosen.items() for t in subnets]
    dense = {
        i: Stats.of(1 - r.levels()[0].test_error for (j, _), r in found.items() if j == i)
        for i in range(inits)
    }
    return samples, dense


def summarize(
    ctx: Context,
    run_id: str,
    samples: list[tuple[int, int, Trained, Fork]],
    dense: dict[int, Stats],
) -> SparseSweep:
    """Rows per (level, k, split), Figure 9 per level, and the claim decided from them."""
    inst, threshold = ctx.params.instability, ctx.params.imp.matching_threshold
    rows = []
    for level, k in sorted({(t.level, k) for _, k, t, _ in samples}):
        group = [(i, f) for i, kk, t, f in samples if (t.level, kk) == (level, k)]
        accuracies = [(i, 1 - e) for i, f in group for e in f.copy_errors]
        drop = _mean(dense[i].mean - a for i, a in accuracies)
        errors = Stats.of(1 - a for _, a in accuracies)
        density = next(t.density for _, _, t, _ in samples if t.level == level)
        for split in inst.splits:
            barrier = Stats.of(b for _, f in group for b in f.barriers(split))
            rows.append(
                SparseRow(
                    level,
                    density,
                    k,
                    split,
                    barrier,
                    schema.stable(barrier.mean, inst.stable_threshold),
                    errors,
                    drop,
                    schema.matching(drop, threshold),
                )
            )
    earliest = [_earliest(ctx, samples, dense, level) for level in sorted({r.level for r in rows})]
    holds, claim = _claim(rows, earliest)
    return SparseSweep(
        run_id=run_id,
        model=ctx.model_name,
        bn=inst.bn,
        rows=rows,
        earliest=earliest,
        dense_error=Stats.of(1 - d.mean for d in dense.values()),
        claim=claim,
        claim_holds=holds,
        threshold=inst.stable_threshold,
    )


def _mean(values) -> float:
    v = list(values)
    return sum(v) / len(v)


def _earliest(ctx: Context, samples, dense: dict[int, Stats], level: int) -> Earliest:
    """Figure 9: per sample (a pair of copies for stability, a copy for matching), the earliest
    k from which the verdict holds; then the median over samples."""
    inst, threshold = ctx.params.instability, ctx.params.imp.matching_threshold
    at_level = [(i, k, t, f) for i, k, t, f in samples if t.level == level]
    stable, matching = {}, {}
    for i, k, _, f in at_level:
        for (a, b), pair in zip(combinations(range(len(f.copies)), 2), f.pairs, strict=True):
            barrier = pair.error_barrier("test" if "test" in inst.splits else inst.splits[0])
            stable.setdefault((i, a, b), []).append(
                (k, schema.stable(barrier, inst.stable_threshold))
            )
        for c, error in enumerate(f.copy_errors):
            drop = dense[i].mean - (1 - error)
            matching.setdefault((i, c), []).append((k, schema.matching(drop, threshold)))
    return Earliest(
        level=level,
        density=at_level[0][2].density,
        stable_from_k=schema.median_or_none([schema.earliest(v) for v in stable.values()]),
        matching_from_k=schema.median_or_none([schema.earliest(v) for v in matching.values()]),
        samples=len(stable),
    )


def _claim(rows: list[SparseRow], earliest: list[Earliest]) -> tuple[bool | None, str]:
    """The paper's claim, decided per density from the test-split rows: the subnetworks are
    matching at exactly the rewind steps at which they are stable."""
    test = [r for r in rows if r.split == "test"] or rows
    verdicts, reasons = [], []
    for e in earliest:
        at = sorted((r for r in test if r.level == e.level), key=lambda r: r.k)
        stable_ks = [r.k for r in at if r.stable]
        matching_ks = [r.k for r in at if r.matching]
        agree = stable_ks == matching_ks
        verdicts.append(agree)
        reasons.append(
            f"at {e.density:.1%} density the subnetworks are stable at k = {_ks(stable_ks)} "
            f"and matching at k = {_ks(matching_ks)}"
        )
    if not verdicts:
        return None, "no subnetworks were forked"
    holds = all(verdicts)
    directions = "" if holds else " " + _directions(test, earliest)
    everywhere = all(r.stable and r.matching for r in test)
    caveat = (
        " (trivially: they are stable and matching at every k, so this run shows no rewind step "
        "where they are neither, the contrast the paper reports)"
        if everywhere
        else ""
    )
    return holds, (
        f"IMP subnetworks are matching exactly at the k where they are stable: "
        f"{'yes' if holds else 'no'}{caveat}, because " + "; ".join(reasons) + "." + directions
    )


def _directions(test: list[SparseRow], earliest: list[Earliest]) -> str:
    """Which half failed: the abstract's claim (matching only where stable) or its converse
    (stable subnetworks are matching; the paper's sparsity range III breaks it)."""
    at = [[r for r in test if r.level == e.level] for e in earliest]
    only = all(r.stable for rows in at for r in rows if r.matching)
    converse = all(r.matching for rows in at for r in rows if r.stable)
    return (
        f"Matching only where stable (the abstract's claim): {'yes' if only else 'no'}; "
        f"matching wherever stable: {'yes' if converse else 'no'}."
    )


def _ks(ks: list[int]) -> str:
    return "{" + ", ".join(f"{k}it" for k in ks) + "}" if ks else "none"


def write_figures(ctx: Context, result: SparseSweep) -> list:
    """Figures 6 and 7 (barrier and test error vs k, one line per density) and Figure 9."""
    from lmctrack.results.plots import save

    folder = ctx.out or ctx.scratch()
    test = [r for r in result.rows if r.split == "test"] or result.rows
    figures = [
        save(figure, folder / name)
        for name, figure in (
            ("sparse_instability.png", result.plot("barrier", test[0].split)),
            ("sparse_error.png", result.plot("error", test[0].split)),
            ("earliest.png", result.plot("earliest")),
        )
    ]
    if ctx.out is not None:
        ctx.write_output(
            "sparse_metrics.json",
            {
                "claim_holds": result.claim_holds,
                **{
                    f"level{e.level}.{name}": getattr(e, name)
                    for e in result.earliest
                    for name in ("stable_from_k", "matching_from_k")
                },
            },
        )
    return figures
