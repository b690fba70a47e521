"""The 2023 follow-up ("Linear Mode Connectivity in Sparse Neural Networks"): are subnetworks
found by IMP driven by distilled data more stable to SGD noise on the real data than those found
by real-data IMP?

From one Wk, IMP runs twice with the same pruning (so level L has the same density in both):
on the real data, and with its masks searched on the distilled set. At matched densities: each
subnetwork's test accuracy and matching verdict (the IMP rows); at the chosen level, the
instability on the real data (copies of (Wk, m) trained on the real data, the error barrier
between them; the dense Wk's as reference), the Hessian diagonal over the unmasked weights of the
trained subnetwork, and the loss-landscape plane through (Wk, m) and two copies. The verdict is
computed from the barriers (schema.DEFINITIONS["more_stable"]).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from lmctrack.config import schema
from lmctrack.config.params import DataConfig, config_hash
from lmctrack.config.schema import Stats
from lmctrack.errors import LmcError
from lmctrack.results.paper import Fork, Imp, to_dict
from lmctrack.workflows import jobs
from lmctrack.workflows.analyses import hessian, plane
from lmctrack.workflows.common import Context
from lmctrack.workflows.fork import fork
from lmctrack.workflows.imp import imp
from lmctrack.workflows.imp_chain import pruning_settings

FOLLOWUP_ARTIFACT = "followup.json"
FIGURE = "followup.png"
SPLIT = "test"


@dataclass
class Row:
    """One matched density: both searches' subnetworks trained on the real data."""

    level: int
    density: float
    real: Stats  # test accuracy over replicates
    distilled: Stats
    real_matching: bool
    distilled_matching: bool


@dataclass
class Side:
    """One search's subnetwork (Wk, m) at the chosen level, measured on the real data."""

    data: str  # schema.REAL_DATA or schema.DISTILLED_DATA
    imp_run: str
    mask: str  # the subnetwork (Wk, m), replicate 0
    trained: str  # its W_T trained on the real data
    fork_run: str
    copies: list[str]
    barrier: Stats  # test error barrier between the copies
    paths: list[list[float]]  # each pair's test error along the path
    hessian: dict[str, float]  # summary of diag(H) over the unmasked weights of `trained`
    hessian_run: str
    plane_run: str


@dataclass
class Followup:
    """The comparison, the table's rows and the verdict on the follow-up's claim."""

    run_id: str
    wk: str
    prune_data: str
    fingerprint: str  # of the distilled set that drove the second search
    level: int
    density: float
    rows: list[Row]
    sides: list[Side]
    dense: Stats  # test error barrier between copies of the dense Wk
    dense_fork_run: str
    more_stable: bool
    claim: str
    alphas: list[float]
    definitions: dict[str, str] = field(default_factory=lambda: dict(schema.DEFINITIONS))
    reused: bool = False

    def side(self, data: str) -> Side:
        return next(s for s in self.sides if s.data == data)

    def table(self) -> tuple[list[str], list[list]]:
        """Columns and rows: accuracy and matching at every density, stability at the fork."""
        columns = ["level", "density", "real acc", "distilled acc", "matching (real/dist.)"]
        rows = [
            [
                r.level,
                f"{r.density:.3f}",
                f"{100 * r.real.mean:.1f} ± {100 * r.real.std:.1f}%",
                f"{100 * r.distilled.mean:.1f} ± {100 * r.distilled.std:.1f}%",
                f"{_yes(r.real_matching)}/{_yes(r.distilled_matching)}",
            ]
            for r in self.rows
        ]
        columns += ["barrier real", "barrier distilled", "H trace real", "H trace distilled"]
        real, dist = self.side(schema.REAL_DATA), self.side(schema.DISTILLED_DATA)
        for row in rows:
            forked = row[0] == self.level
            row += [
                _pct(real.barrier) if forked else "",
                _pct(dist.barrier) if forked else "",
                f"{real.hessian['trace']:.3g}" if forked else "",
                f"{dist.hessian['trace']:.3g}" if forked else "",
            ]
        return columns, rows

    def plot(self):
        """Accuracy vs density, the error along the copies' paths, the Hessian diagonal."""
        from lmctrack.results.plots import _figure

        fig, axes = _figure(cols=3)
        acc, path, curv = axes[0]
        for n, data in enumerate((schema.REAL_DATA, schema.DISTILLED_DATA)):
            stats = [getattr(r, data) for r in self.rows]
            acc.errorbar(
                [r.density for r in self.rows],
                [100 * s.mean for s in stats],
                yerr=[100 * s.std for s in stats],
                marker="o",
                capsize=3,
                color=f"C{n}",
                label=f"IMP on {data} data",
            )
            side = self.side(data)
            for i, errors in enumerate(side.paths):
                path.plot(
                    self.alphas,
                    [100 * e for e in errors],
                    color=f"C{n}",
                    label=f"{data}: barrier {_pct(side.barrier)}" if i == 0 else None,
                )
        acc.set_xscale("log")
        acc.invert_xaxis()
        acc.set_xlabel("density")
        acc.set_ylabel("test accuracy (%) on the real data")
        acc.legend(fontsize="small")
        path.set_xlabel("interpolation alpha")
        path.set_ylabel("test error (%)")
        path.set_title(f"copies of (Wk, m) at density {self.density:.3f}", fontsize="medium")
        path.legend(fontsize="small")
        sides = self.sides
        curv.bar([s.data for s in sides], [s.hessian["mean"] for s in sides], color=["C0", "C1"])
        curv.set_ylabel("mean Hessian diagonal over unmasked weights")
        curv.set_title("curvature at the trained subnetwork", fontsize="medium")
        fig.suptitle(self.claim, fontsize="small", wrap=True)
        return fig

    @classmethod
    def from_dict(cls, data: dict) -> Followup:
        data = dict(data)
        data["rows"] = [
            Row(**{**r, "real": Stats(**r["real"]), "distilled": Stats(**r["distilled"])})
            for r in data["rows"]
        ]
        data["sides"] = [Side(**{**s, "barrier": Stats(**s["barrier"])}) for s in data["sides"]]
        data["dense"] = Stats(**data["dense"])
        return cls(**data)


def followup(ctx: Context, wk: str, prune_data: DataConfig) -> Followup:
    """Real-data vs distilled-data IMP from the registered state `wk` (see the module)."""
    cfg = ctx.params.followup
    search = distilled_search(ctx, prune_data)
    inst = ctx.params.instability
    key = config_hash(
        ctx.training_hash(wk, search.fingerprint(ctx)),
        cfg,
        pruning_settings(ctx.params, "fraction", "strategy"),
        [inst.alphas, inst.bn],
        schema.KIND_FOLLOWUP,
    )
    with jobs.claimed(ctx, [key]):
        if (run_id := jobs.finished(ctx, key)) is not None:
            data = json.loads(ctx.store.run_artifact(run_id, FOLLOWUP_ARTIFACT).read_text())
            return Followup.from_dict({**data, "reused": True})
        searches = _both_searches(ctx, wk, prune_data, search)
        level = cfg.level or cfg.levels
        seeds = list(range(1, cfg.copies + 1))
        dense = fork(ctx, wk, seeds=seeds)
        with _no_outputs(ctx):
            sides = [_side(ctx, data, result, level, seeds) for data, result in searches.items()]
        rows = _rows(searches)
        result = _decide(ctx, wk, prune_data, search, level, rows, sides, dense)
        with jobs.recorded(ctx, "followup", key=key, kind=schema.KIND_FOLLOWUP) as run:
            _log(ctx, run, result, search)
    return result


def _both_searches(ctx: Context, wk: str, prune_data: DataConfig, search) -> dict[str, Imp]:
    """IMP from `wk` with its masks searched on the real data, then on the distilled set."""
    from lmctrack.workflows.imp_chain import SameData

    options = {"with_baselines": False, "replicates": ctx.params.followup.replicates}
    found = {}
    for data, config, how in (
        (schema.REAL_DATA, None, SameData()),
        (schema.DISTILLED_DATA, prune_data, search),
    ):
        imp_ctx = _imp_context(ctx, config)
        try:
            found[data] = imp(imp_ctx, wk, how, **options)
        finally:
            imp_ctx.close()
    return found


def _imp_context(ctx: Context, prune_data: DataConfig | None) -> Context:
    """IMP with the follow-up's levels and replicates, its masks searched on `prune_data`; its
    files go to its own scratch folder (closing it drops them), not to --out."""
    cfg = ctx.params.followup
    imp_cfg = ctx.params.imp.model_copy(
        update={
            "levels": cfg.levels,
            "replicates": cfg.replicates,
            "one_shot": False,
            "prune_data": prune_data,
        }
    )
    params = ctx.params.model_copy(update={"imp": imp_cfg})
    return dataclasses.replace(ctx, params=params, out=None, on_close=None)


def distilled_search(ctx: Context, prune_data: DataConfig):
    """The mask search on `prune_data`, checked to fit the network as `imp --prune-data` checks
    it (callers check before training anything)."""
    from lmctrack.workflows.imp_chain import mask_search

    return mask_search(_imp_context(ctx, prune_data))


@contextmanager
def _no_outputs(ctx: Context) -> Iterator[None]:
    """The analyses write fixed file names to --out: the follow-up writes its own instead."""
    out, ctx.out = ctx.out, None
    try:
        yield
    finally:
        ctx.out = out


def _side(ctx: Context, data: str, result: Imp, level: int, seeds: list[int]) -> Side:
    """Fork (Wk, m) of replicate 0 on the real data; its Hessian and plane."""
    cfg = ctx.params.followup
    chain = {t.level: t for t in result.levels()}
    if level not in chain:
        raise LmcError(
            f"followup.level={level} but IMP ran {cfg.levels} levels; set a level from 1 to "
            f"{cfg.levels} or raise followup.levels"
        )
    trained = chain[level]
    copies: Fork = fork(ctx, trained.start, seeds=seeds)
    curvature = hessian(ctx, trained.trained, samples=cfg.hessian_samples, limit=cfg.hessian_limit)
    landscape = plane(ctx, trained.start, copies.copies[0], copies.copies[1], grid=cfg.plane_grid)
    return Side(
        data=data,
        imp_run=result.run_id,
        mask=trained.start,
        trained=trained.trained,
        fork_run=copies.run_id,
        copies=copies.copies,
        barrier=copies.barrier(SPLIT),
        paths=[p.curves[SPLIT]["error"] for p in copies.pairs],
        hessian=curvature.summary,
        hessian_run=curvature.run_id,
        plane_run=landscape.run_id,
    )


def _rows(searches: dict[str, Imp]) -> list[Row]:
    """Table 2's IMP column of both searches, level by level (the same pruning: same density)."""
    real = {r.level: r for r in searches[schema.REAL_DATA].rows}
    distilled = {r.level: r for r in searches[schema.DISTILLED_DATA].rows}
    return [
        Row(
            level=level,
            density=real[level].density,
            real=real[level].accuracy[schema.IMP],
            distilled=distilled[level].accuracy[schema.IMP],
            real_matching=real[level].matching,
            distilled_matching=distilled[level].matching,
        )
        for level in sorted(set(real) & set(distilled))
        if level > 0
    ]


def _decide(
    ctx: Context, wk, prune_data, search, level, rows: list[Row], sides: list[Side], dense: Fork
) -> Followup:
    """The verdict from the barriers: lower by more than the larger spread of the two."""
    real, distilled = sides
    gap = real.barrier.mean - distilled.barrier.mean
    spread = max(real.barrier.std, distilled.barrier.std)
    more_stable = gap > spread
    density = next(r.density for r in rows if r.level == level)
    numbers = (
        f"at density {density:.3f} the test error barrier between copies trained on the real "
        f"data is {_pct(distilled.barrier)} for the distilled-data subnetwork and "
        f"{_pct(real.barrier)} for the real-data one (dense Wk: {_pct(dense.barrier(SPLIT))}; "
        f"n = {real.barrier.n} pair(s) each)"
    )
    if more_stable:
        why = f"{numbers}: lower by {100 * gap:.2f} points, beyond the spread {100 * spread:.2f}"
    elif gap > 0:
        why = f"{numbers}: lower by only {100 * gap:.2f} points, within the spread"
    else:
        why = f"{numbers}: not lower"
    trace = f"Hessian trace {distilled.hessian['trace']:.3g} vs {real.hessian['trace']:.3g}"
    claim = (
        "distilled-data subnetworks are more stable than real-data ones: "
        f"{_yes(more_stable)}, because {why}; {trace}"
    )
    return Followup(
        run_id="",
        wk=wk,
        prune_data=str(prune_data.path),
        fingerprint=search.fingerprint(ctx),
        level=level,
        density=density,
        rows=rows,
        sides=sides,
        dense=dense.barrier(SPLIT),
        dense_fork_run=dense.run_id,
        more_stable=more_stable,
        claim=claim,
        alphas=dense.pairs[0].alphas,
    )


def _log(ctx: Context, run, result: Followup, search) -> None:
    """Inputs (the data, Wk, both subnetworks), metrics, the table, the figure, the result;
    the table, figure and JSON also to --out."""
    from lmctrack.results.plots import save

    result.run_id = run.id
    run.log_dataset(ctx.data_ref)
    run.log_dataset(search.data.data_ref)
    run.log_input_states([result.wk] + [uri for s in result.sides for uri in (s.mask, s.trained)])
    metrics = {"more_stable": float(result.more_stable), "dense.barrier": result.dense.mean}
    for side in result.sides:
        metrics[f"{side.data}.barrier"] = side.barrier.mean
        metrics[f"{side.data}.hessian_trace"] = side.hessian["trace"]
        metrics[f"{side.data}.hessian_mean"] = side.hessian["mean"]
    run.log_metrics(metrics)
    columns, rows = result.table()
    run.log_table([dict(zip(columns, row, strict=True)) for row in rows], "followup_table.json")
    figure = save(result.plot(), ctx.scratch() / run.id / FIGURE)
    run.log_file(figure, "plots")
    run.set_tags({"claim": result.claim[:5000]})
    run.log_json(to_dict(result), FOLLOWUP_ARTIFACT)
    if ctx.write_output(FOLLOWUP_ARTIFACT, to_dict(result)) is not None:
        save(result.plot(), ctx.out / FIGURE)


def _pct(stats: Stats) -> str:
    return f"{100 * stats.mean:.2f} ± {100 * stats.std:.2f}%"


def _yes(value: bool) -> str:
    return "yes" if value else "no"
