"""Figures 6, 7 and 9: instability and accuracy of IMP subnetworks as a function of rewind step.

For each init and each rewind step k: IMP rewinding to k finds one mask per level; every
subnetwork (Wk, m) is forked into copies trained under different SGD noise and interpolated.
Per density and k this gives the error barrier (Figure 6) and the copies' test error (Figure 7);
per density, the earliest k at which the subnetworks are stable and at which they are matching,
from medians over inits x copies (Figure 9).
"""

from __future__ import annotations

import statistics

from lmctrack.workflows.common import Context
from lmctrack.workflows.fork import plan_fork, run_forks, sample_stats
from lmctrack.workflows.imp import run_imp
from lmctrack.workflows.instability import copy_seeds, sweep_seeds
from lmctrack.workflows.train import train_runs


def sparse_rows(
    samples: list[dict], splits: list[str], stable: float, matching: float
) -> list[dict]:
    """One row per (density level, k, split) from the per-fork samples."""
    rows = []
    for level, k in sorted({(s["level"], s["k"]) for s in samples}):
        group = [s for s in samples if (s["level"], s["k"]) == (level, k)]
        drops = [d for s in group for d in s["accuracy_drops"]]
        errors = [e for s in group for e in s["errors"]]
        for split in splits:
            values = [b for s in group for b in s["barriers"][split]]
            barrier = {**sample_stats(values), "n": len(values)}
            rows.append(
                {
                    "level": level,
                    "density": group[0]["density"],
                    "k": k,
                    "split": split,
                    **barrier,
                    "stable": barrier["median"] < stable,
                    "test_error": statistics.fmean(errors),
                    "test_error_std": statistics.pstdev(errors) if len(errors) > 1 else 0.0,
                    "accuracy_drop_median": statistics.median(drops),
                    "matching": statistics.median(drops) < matching,
                }
            )
    return rows


def earliest(rows: list[dict]) -> list[dict]:
    """Figure 9: per density, the first rewind step at which the subnetworks are stable / matching."""
    out = []
    for level in sorted({r["level"] for r in rows}):
        test = sorted(
            (r for r in rows if r["level"] == level and r["split"] == "test"), key=lambda r: r["k"]
        )
        out.append(
            {
                "level": level,
                "density": test[0]["density"] if test else None,
                "stable_from_k": next((r["k"] for r in test if r["stable"]), None),
                "matching_from_k": next((r["k"] for r in test if r["matching"]), None),
            }
        )
    return out


def sparse_instability(ctx: Context, search: Context | None = None) -> dict:
    """`lmctrack instability --imp`: IMP at every k for every init, then fork every subnetwork.

    `search`: another dataset (imp.prune_data) that drives the mask search.
    """
    from lmctrack.evaluate import evaluate, load_into
    from lmctrack.plots import plot_imp_rewind

    inst, cfg = ctx.params.instability, ctx.params.imp
    runs = train_runs(ctx, sweep_seeds(ctx), extra_steps=inst.rewind_steps)
    ks = sorted({ctx.steps(s) for s in inst.rewind_steps})
    plans, meta = [], []
    for run in runs:
        dense = evaluate(
            load_into(ctx.template(), ctx.store.load_state(run.final)),
            ctx.dataset,
            "test",
            device=ctx.device,
        )
        for k in ks:
            imp = run_imp(ctx, run, k, search, with_baselines=False)
            for level in imp["levels"]:
                plans.append(plan_fork(ctx, level["mask_uri"], seeds=copy_seeds(ctx)))
                meta.append(
                    {
                        "level": level["level"],
                        "density": level["density"],
                        "k": k,
                        "dense_error": dense.error,
                    }
                )
    forks = run_forks(ctx, plans)
    samples = []
    for m, f in zip(meta, forks):
        errors = sorted(
            {p["summary"][f"test.error_alpha{end}"] for p in f["pairs"] for end in (0, 1)}
        )
        samples.append(
            {
                **m,
                "barriers": {
                    s: [p["summary"][f"{s}.error_barrier"] for p in f["pairs"]] for s in inst.splits
                },
                "errors": errors,
                "accuracy_drops": [e - m["dense_error"] for e in errors],
            }
        )
    rows = sparse_rows(samples, list(inst.splits), inst.stable_threshold, cfg.matching_threshold)
    summary = earliest(rows)
    test_rows = [r for r in rows if r["split"] == "test"]
    figures = {
        "imp_instability.png": (test_rows, "test error barrier (sup - endpoint mean)", None),
        "imp_error.png": (
            [{**r, "mean": r["test_error"], "std": r["test_error_std"]} for r in test_rows],
            "test error of the trained subnetworks",
            statistics.fmean(m["dense_error"] for m in meta),
        ),
    }
    with ctx.store.run(
        ctx.model_name,
        "sparse instability sweep",
        params={
            "ks": ",".join(map(str, ks)),
            "inits": inst.inits,
            "copies": inst.copies,
            "levels": cfg.levels,
            "bn": inst.bn,
        },
        tags={"kind": "sparse-instability"},
    ) as run:
        run.log_table(rows, "sparse_instability.json")
        run.log_table(summary, "earliest.json")
        for name, (points, metric, dense) in figures.items():
            title = f"{ctx.model_name}: IMP subnetworks vs rewind step (bn={inst.bn})"
            run.log_file(
                plot_imp_rewind(points, ctx.scratch() / name, title, metric=metric, dense=dense),
                "plots",
            )
            if ctx.out is not None:
                plot_imp_rewind(points, ctx.out / name, title, metric=metric, dense=dense)
        result = {
            "run_id": run.id,
            "model": ctx.model_name,
            "barrier": "error_barrier: sup_a E(a) - mean(E(0), E(1)); stable when the median < threshold",
            "matching": f"median test accuracy drop vs the init's dense network < {cfg.matching_threshold:.2%}",
            "bn": inst.bn,
            "rows": rows,
            "earliest": summary,
        }
        run.log_json(result, "sparse_instability_result.json")
    ctx.write_output("sparse_instability.json", result)
    return result
