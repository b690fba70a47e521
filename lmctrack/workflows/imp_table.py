"""What IMP's trainings say: Table 2 with the matching verdict over replicates, the same-basin
check of consecutive levels, and Figures 5/8 (accuracy vs density for IMP and both baselines)."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

from lmctrack.config import schema
from lmctrack.config.schema import Stats
from lmctrack.results.paper import Imp, ImpRow, Pair, Trained
from lmctrack.workflows.common import Context
from lmctrack.workflows.imp_chain import Chain
from lmctrack.workflows.paths import interpolate_pairs, log_pair


def accuracy(trainings: list[Trained], method: str, level: int) -> Stats | None:
    values = [1 - t.test_error for t in trainings if t.method == method and t.level == level]
    return Stats.of(values) if values else None


def table(ctx: Context, trainings: list[Trained]) -> list[ImpRow]:
    """Table 2, one row per sparse level: each method's test accuracy over replicates, the drop
    of the mean vs the dense networks' mean (level 0), and the verdicts."""
    threshold = ctx.params.imp.matching_threshold
    dense = accuracy(trainings, schema.IMP, 0)
    rows = []
    for level in sorted({t.level for t in trainings if t.level > 0}):
        acc = {m: s for m in schema.METHODS if (s := accuracy(trainings, m, level)) is not None}
        density = next(t.density for t in trainings if t.level == level)
        rows.append(
            ImpRow(
                level=level,
                density=density,
                accuracy=acc,
                dense=dense,
                drop=dense.mean - acc[schema.IMP].mean,
                matching=schema.matching(dense.mean - acc[schema.IMP].mean, threshold),
                within_one_std=schema.within_one_std(acc[schema.IMP], dense),
                baselines_matching={
                    m: schema.matching(dense.mean - s.mean, threshold)
                    for m, s in acc.items()
                    if m != schema.IMP
                },
            )
        )
    return rows


def accuracy_rows(result: Imp) -> list[dict]:
    """Table 2 as plain rows, one per (level, criterion): the run's table and DVC's CSV of
    accuracy against density (the dense networks at density 1)."""
    dense = result.rows[0].dense if result.rows else None
    rows = [] if dense is None else [_row(0, 1.0, schema.IMP, dense, True)]
    for r in result.rows:
        for method, s in r.accuracy.items():
            matching = r.matching if method == schema.IMP else r.baselines_matching[method]
            rows.append(_row(r.level, r.density, method, s, matching))
    return rows


def _row(level: int, density: float, method: str, s: Stats, matching: bool) -> dict:
    return {
        schema.LEVEL: level,
        schema.DENSITY: round(density, 6),
        schema.CRITERION: method,
        "test_accuracy_mean": round(s.mean, 6),
        "test_accuracy_std": round(s.std, 6),
        "matching": matching,
    }


def same_basin(ctx: Context, parent, chain: Chain) -> list[Pair]:
    """Do consecutive IMP levels retrain into the same basin? Interpolate level n's W_T with
    level n+1's, each endpoint keeping its own mask (one replicate)."""
    if not ctx.params.imp.same_basin:
        return []
    ends = list(pairwise(chain.trained))
    states = [(ctx.store.load_state(a.trained), ctx.store.load_state(b.trained)) for a, b in ends]
    pairs = []
    for (a, b), pair in zip(ends, interpolate_pairs(ctx, states, mask_mode="each"), strict=True):
        pair.a, pair.b = a.trained, b.trained
        pairs.append(log_pair(ctx, parent, f"same basin levels {a.level}-{b.level}", pair))
        basin = {schema.metric(schema.BASIN, k): v for k, v in pair.metrics().items()}
        parent.log_metrics(basin, step=a.level)
    return pairs


def write_plots(ctx: Context, run, result: Imp, out: Path | None) -> None:
    """Figures 5/8: test accuracy vs density for IMP and both baselines, mean ± std over the
    replicates, with the dense networks' mean; logged to the run and written to `out` for DVC."""
    from lmctrack.results.plots import save

    for row in result.rows:
        for method, s in row.accuracy.items():
            run.log_metrics(
                {schema.metric(method, schema.TEST_ACCURACY_MEAN): s.mean}, step=row.level
            )
        run.log_metrics({schema.IMP_ACCURACY_DROP: row.drop}, step=row.level)
    if not result.rows:
        return
    figure = result.plot(f"{ctx.model_name}: IMP rewinding to {result.k}it vs random baselines")
    run.log_file(save(figure, ctx.scratch() / "imp.png"), "plots")
    rows = accuracy_rows(result)
    run.log_table(rows, "imp_table.json")
    if out is not None:
        save(figure, out / "imp.png")
        header = list(rows[0])
        lines = [",".join(header)] + [",".join(str(row[c]) for c in header) for row in rows]
        (out / "imp.csv").write_text("\n".join(lines) + "\n")
