"""The sweep of Figure 3 (Figure 4 with the reset schedule): instability of Wk for every rewind
step k, over inits x data orders, and Figure 11: the error of Wk itself.

For each of `inits` initializations: train W0 -> W_T (registering every Wk), fork each Wk into
`copies` copies and interpolate every pair. Every pair of every init is one sample: the table
gives mean, std and median per k, and the verdict (schema.stable on the mean).
"""

from __future__ import annotations

import statistics

from lmctrack.config import schema
from lmctrack.config.params import SeedConfig
from lmctrack.config.schema import Stats
from lmctrack.results.paper import Fork, Sweep, SweepRow, to_dict
from lmctrack.results.sweeps import SoupRow
from lmctrack.workflows import fork as algorithm1
from lmctrack.workflows.common import Context
from lmctrack.workflows.training_run import train_runs
from lmctrack.workflows.work import note_reused


def instability(ctx: Context, *, mask: str | None = None) -> Sweep:
    """`lmctrack instability`: the whole sweep; finished trainings and forks are reused, the new
    forks' runs nested under the sweep's run."""
    inst = ctx.params.instability
    runs = train_runs(ctx, sweep_seeds(ctx), extra_steps=inst.rewind_steps)
    ks = rewind_ks(ctx)
    track = ctx.steps(inst.track_every) if inst.track_every else None
    options = {"mask": mask, "reset_schedule": inst.reset_schedule, "track_every": track}
    plans = [
        algorithm1.plan(ctx, run.at(k), seeds=copy_seeds(ctx), **options)
        for run in runs
        for k in ks
    ]
    params = {
        "ks": ",".join(map(str, ks)),
        "inits": inst.inits,
        "alphas": inst.alphas,
        "mask": mask or "",
        "reset_schedule": inst.reset_schedule,
    }
    with ctx.run(
        "instability sweep",
        params=ctx.run_params(copies=inst.copies, bn=inst.bn, **params),
        tags={schema.KIND: schema.KIND_INSTABILITY},
    ) as run:
        forks = algorithm1.forks(ctx, plans, parent=run)
        note_reused(run, {schema.KIND_FORK: forks})
        wk_errors = {
            k: Stats.of(ctx.error(ctx.store.load_state(t.at(k))) for t in runs) for k in ks
        }
        result = Sweep(
            run_id=run.id,
            model=ctx.model_name,
            bn=inst.bn,
            inits=[s.init for s in sweep_seeds(ctx)],
            copy_seeds=copy_seeds(ctx),
            threshold=inst.stable_threshold,
            rows=rows(forks, list(inst.splits), inst.stable_threshold),
            train_runs=[r.run_id for r in runs],
            fork_runs=[f.run_id for f in forks],
            reused_forks=sum(f.reused for f in forks),
            wk_errors=wk_errors,
            soups=soup_rows(forks, ctx.params.imp.matching_threshold),
            matching_threshold=ctx.params.imp.matching_threshold,
        )
        for row in result.rows:
            name = schema.metric(row.split, schema.ERROR_BARRIER)
            run.log_metrics(
                {f"{name}.mean": row.barrier.mean, f"{name}.std": row.barrier.std}, step=row.k
            )
        for k, stats in wk_errors.items():
            run.log_metrics({schema.WK_TEST_ERROR: stats.mean}, step=k)
        for soup in result.soups:
            run.log_metrics(soup.headline(), step=soup.k)
        run.log_json(to_dict(result), "instability_result.json")
        run.log_table(result.to_frame().to_dict("records"), "instability_table.json")
        for figure in write_figures(ctx, result):
            run.log_file(figure, "plots")
    return result


def sweep_seeds(ctx: Context, inits: int | None = None) -> list[SeedConfig]:
    """Init seeds base, base+1, ...; the base run's data order for W0 -> Wk."""
    base = ctx.params.seeds
    n = ctx.params.instability.inits if inits is None else inits
    return [base.model_copy(update={"init": base.init + i}) for i in range(n)]


def copy_seeds(ctx: Context, copies: int | None = None) -> list[int]:
    """The copies' noise seeds 1..N (as `lmctrack fork --seeds N`), distinct from the base run's 0."""
    n = ctx.params.instability.copies if copies is None else copies
    return list(range(1, n + 1))


def rewind_ks(ctx: Context, steps=None) -> list[int]:
    return sorted({ctx.steps(s) for s in (steps or ctx.params.instability.rewind_steps)})


def rows(forks: list[Fork], splits: list[str], threshold: float) -> list[SweepRow]:
    """One row per (k, split): the error barrier over every pair of every init."""
    out = []
    for k in sorted({f.k for f in forks}):
        at_k = [f for f in forks if f.k == k]
        for split in splits:
            barrier = Stats.of(b for f in at_k for b in f.barriers(split))
            ends = [e for f in at_k for p in f.pairs for e in p.endpoint_errors(split)]
            out.append(
                SweepRow(
                    k,
                    split,
                    barrier,
                    statistics.fmean(ends),
                    schema.stable(barrier.mean, threshold),
                )
            )
    return out


def barrier_vs_k(result: Sweep) -> str:
    """Figure 3's lines as a CSV for DVC's plot: per k, the mean error barrier on each split."""
    splits = list(dict.fromkeys(r.split for r in result.rows))
    mean = {(r.k, r.split): r.barrier.mean for r in result.rows}
    lines = [",".join(["k", *(schema.metric(s, schema.ERROR_BARRIER) for s in splits)])]
    for k in sorted({r.k for r in result.rows}):
        lines.append(",".join([str(k), *(f"{mean[k, s]:.6f}" for s in splits)]))
    return "\n".join(lines) + "\n"


def soup_rows(forks: list[Fork], threshold: float) -> list[SoupRow]:
    """At each k: the copies' soup, their mean and best test error over inits, and whether the
    soup matches the mean copy (forks made before soups existed have none)."""
    out = []
    for k in sorted({f.k for f in forks}):
        at_k = [f for f in forks if f.k == k and f.soup_error is not None]
        if not at_k:
            continue
        soup = Stats.of(f.soup_error for f in at_k)
        mean = Stats.of(statistics.fmean(f.copy_errors) for f in at_k)
        best = Stats.of(min(f.copy_errors) for f in at_k)
        matching = schema.soup_matches(soup.mean, mean.mean, threshold)
        out.append(SoupRow(k, soup, mean, best, matching))
    return out


def write_figures(ctx: Context, result: Sweep) -> list:
    """Figure 3 (and Figure 11) as PNG, and the CSV and metrics JSON that DVC declares."""
    from lmctrack.results.plots import save

    folder = ctx.out or ctx.scratch()
    figures = [
        save(result.plot(), folder / "instability.png"),
        save(result.plot("wk_error"), folder / "wk_error.png"),
    ]
    if result.soups:
        figures.append(save(result.plot("soup"), folder / "soup.png"))
    if ctx.out is not None:
        lines = ["k,split,mean,std,median,n,endpoint_error,stable"]
        lines += [
            f"{r.k},{r.split},{r.barrier.mean:.6f},{r.barrier.std:.6f},{r.barrier.median:.6f},"
            f"{r.barrier.n},{r.endpoint_error:.6f},{r.stable}"
            for r in result.rows
        ]
        (ctx.out / "instability.csv").write_text("\n".join(lines) + "\n")
        (ctx.out / "barrier.csv").write_text(barrier_vs_k(result))
        ctx.write_output(
            "instability_metrics.json",
            {
                f"k{r.k}.{r.split}.{stat}": getattr(r.barrier, stat)
                for r in result.rows
                for stat in ("mean", "std", "median")
            },
        )
    return figures
