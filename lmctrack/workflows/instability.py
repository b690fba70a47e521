"""The sweep of Figure 3: instability of Wk for every rewind step k, over inits x data orders.

For each of `inits` initializations: train W0 -> W_T (registering every Wk), then fork each Wk
into `copies` copies and interpolate every pair. The barrier of every pair of every init is one
sample; the figure shows mean and std per k (the paper's 3 inits x 3 data orders), and the table
adds the median (Figure 9) and the stable verdict (< 2%).
"""

from __future__ import annotations

import statistics

from lmctrack.config import SeedConfig
from lmctrack.workflows.common import Context
from lmctrack.workflows.fork import plan_fork, run_forks, sample_stats
from lmctrack.workflows.train import train_runs


def sweep_seeds(ctx: Context) -> list[SeedConfig]:
    """Init seeds base, base+1, ...; the base run's data order for W0 -> Wk."""
    base = ctx.params.seeds
    return [
        base.model_copy(update={"init": base.init + i}) for i in range(ctx.params.instability.inits)
    ]


def copy_seeds(ctx: Context) -> list[int]:
    """The copies' noise seeds 1..N (as `lmctrack fork --seeds N`), distinct from the base run's 0."""
    return list(range(1, ctx.params.instability.copies + 1))


def aggregate(forks: list[dict], splits: list[str], threshold: float) -> list[dict]:
    """One row per (k, split): the error barrier over every pair of every init."""
    rows = []
    for k in sorted({f["k"] for f in forks}):
        at_k = [f for f in forks if f["k"] == k]
        for split in splits:
            barriers = [p["summary"][f"{split}.error_barrier"] for f in at_k for p in f["pairs"]]
            errors = [
                p["summary"][f"{split}.error_alpha{end}"]
                for f in at_k
                for p in f["pairs"]
                for end in (0, 1)
            ]
            stats = sample_stats(barriers)
            rows.append(
                {
                    "k": k,
                    "split": split,
                    "n": len(barriers),
                    **stats,
                    "endpoint_error": statistics.fmean(errors),
                    "stable": stats["mean"] < threshold,
                }
            )
    return rows


def instability(ctx: Context, *, mask: str | None = None) -> dict:
    """`lmctrack instability`: the whole sweep; finished trainings and forks are reused."""
    from lmctrack.plots import plot_instability

    inst = ctx.params.instability
    runs = train_runs(ctx, sweep_seeds(ctx), extra_steps=inst.rewind_steps)
    ks = sorted({ctx.steps(s) for s in inst.rewind_steps})
    track = ctx.steps(inst.track_every) if inst.track_every else None
    plans = [
        plan_fork(
            ctx,
            run.at(k),
            seeds=copy_seeds(ctx),
            mask=mask,
            reset_schedule=inst.reset_schedule,
            track_every=track,
        )
        for run in runs
        for k in ks
    ]
    forks = run_forks(ctx, plans)
    rows = aggregate(forks, list(inst.splits), inst.stable_threshold)
    title = (
        f"{ctx.model_name}: instability vs rewind step\n"
        f"error barrier (paper definition), {inst.inits} inits x {inst.copies} copies"
    )
    with ctx.store.run(
        ctx.model_name,
        "instability sweep",
        params={
            "ks": ",".join(map(str, ks)),
            "inits": inst.inits,
            "copies": inst.copies,
            "bn": inst.bn,
            "alphas": inst.alphas,
            "mask": mask or "",
            "reset_schedule": inst.reset_schedule,
        },
        tags={"kind": "instability"},
    ) as run:
        for row in rows:
            run.log_metrics(
                {
                    f"{row['split']}.error_barrier.mean": row["mean"],
                    f"{row['split']}.error_barrier.std": row["std"],
                },
                step=row["k"],
            )
        run.log_table(rows, "instability.json")
        figure = ctx.scratch() / "instability.png"
        plot_instability(rows, figure, title, bn=inst.bn, threshold=inst.stable_threshold)
        run.log_file(figure, "plots")
        result = {
            "run_id": run.id,
            "model": ctx.model_name,
            "barrier": "error_barrier: sup_a E(a) - mean(E(0), E(1)) (Frankle et al. 2020)",
            "bn": inst.bn,
            "inits": [s.init for s in sweep_seeds(ctx)],
            "copy_seeds": copy_seeds(ctx),
            "threshold": inst.stable_threshold,
            "rows": rows,
            "train_runs": [r.run_id for r in runs],
            "fork_runs": [f["run_id"] for f in forks],
            "reused_forks": sum(bool(f.get("reused")) for f in forks),
        }
        run.log_json(result, "instability_result.json")
    if ctx.out is not None:
        ctx.out.mkdir(parents=True, exist_ok=True)
        plot_instability(
            rows, ctx.out / "instability.png", title, bn=inst.bn, threshold=inst.stable_threshold
        )
        lines = ["k,split,mean,std,median,endpoint_error,stable"]
        lines += [
            f"{r['k']},{r['split']},{r['mean']:.6f},{r['std']:.6f},{r['median']:.6f},{r['endpoint_error']:.6f},{r['stable']}"
            for r in rows
        ]
        (ctx.out / "instability.csv").write_text("\n".join(lines) + "\n")
        ctx.write_output(
            "instability_metrics.json",
            {f"k{r['k']}.{r['split']}.{s}": r[s] for r in rows for s in ("mean", "std", "median")},
        )
    return result
