"""`lmctrack find-k`: the earliest stable rewind step k* of this network (or of its IMP subnetwork
at one density), by the search of lmctrack.engine.earliest, forking only the candidates it probes.

One training (the base seeds) registers Wk at every candidate (a finished run is extended, not
retrained). A probe forks `instability.copies` copies of Wk and adds one copy at a time while
neither bound of the mean barrier over pairs decides (the rule of lmctrack.engine.earliest:
copies as the unit, the error spent over the looks), up to `instability.max_copies`
(by default inits x copies: never more trainings at one k than the grid spends there). At k = 0
the training itself is one of the copies: W0 trained under the run's own noise. The
samples are the pairs of one init's copies, not the grid's inits x pairs: the search answers for
this training's Wk. Its forks are `lmctrack fork --seeds N` forks, the copies registered states
whose trainings a later `instability` sweep reuses (the first `copies` seeds are the sweep's).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from lmctrack.config import schema
from lmctrack.config.overrides import Overrides
from lmctrack.config.params import Params, Step
from lmctrack.engine import earliest
from lmctrack.engine.earliest import Budget, Search
from lmctrack.errors import LmcError
from lmctrack.results.paper import Fork, to_dict
from lmctrack.workflows import fork as algorithm1
from lmctrack.workflows.common import Context
from lmctrack.workflows.imp import cfg_levels, imps
from lmctrack.workflows.instability import copy_seeds, sweep_seeds
from lmctrack.workflows.training_run import TrainedRun, train_runs
from lmctrack.workflows.work import note_links


@dataclass
class Subnetwork:
    """--imp: the IMP subnetwork forked at each probed k, and its accuracy drop vs dense there."""

    level: int
    density: float
    drop: dict[int, float]  # k -> mean dense accuracy - mean accuracy of the subnetwork's copies
    threshold: float  # imp.matching_threshold

    def matching(self, k: int) -> bool:
        return schema.matching(self.drop[k], self.threshold)


@dataclass
class FindK:
    """The earliest stable k and what it cost: `trainings` (every training the answer needs,
    W0 -> W_T included, counted once when it is also one of k = 0's copies: `run_as_copy`) vs
    `grid_trainings`, the `instability` sweep of every candidate (whose k = 0 forks seeds 1..N)."""

    run_id: str
    model: str
    split: str
    bn: str
    search: Search
    copies: int  # copies a probe starts with (instability.copies)
    max_copies: int
    trainings: int
    grid_trainings: int
    train_run: str
    fork_runs: list[str]
    subnetwork: Subnetwork | None = None
    run_as_copy: bool = False
    definitions: dict[str, str] = field(default_factory=lambda: dict(schema.DEFINITIONS))

    @property
    def k_star(self) -> int | None:
        return self.search.k_star

    @property
    def fraction(self) -> float:
        return self.trainings / self.grid_trainings

    def summary(self) -> str:
        text = self.search.summary()
        net = self.subnetwork
        if net is not None and self.k_star is not None:
            verdict = "matching" if net.matching(self.k_star) else "not matching"
            text += (
                f"; at k* the {net.density:.1%}-density IMP subnetwork is {verdict} "
                f"(accuracy drop {net.drop[self.k_star]:.2%} vs {net.threshold:.1%})"
            )
        return text

    def cost(self) -> str:
        own = "; the run W0 -> W_T is one of k = 0's copies" if self.run_as_copy else ""
        return (
            f"trainings: {self.trainings} of the {self.grid_trainings} the full grid of "
            f"{len(self.search.candidates)} candidates would take ({self.fraction:.0%}){own}"
        )

    def plot(self):
        """The probed points (mean and bounds) over the candidate axis, with k*."""
        return plot_search(self)

    def to_frame(self):
        """One row per probe: k, role, copies, pairs, mean, its bounds, decision."""
        import pandas as pd

        return pd.DataFrame(rows(self))


def candidates(ctx: Context) -> list[int]:
    """instability.candidates as iterations, or 0 and 2^i up to T/2; each must lie before T."""
    steps = ctx.params.instability.candidates
    total = ctx.total_steps
    if steps is None:
        return [0] + [2**i for i in range(total.bit_length()) if 2**i <= total // 2]
    ks = sorted({ctx.steps(s) for s in steps})
    if not ks or ks[-1] >= total:
        raise LmcError(
            f"instability.candidates {[str(s) for s in steps]} must be non-empty rewind steps "
            f"before T = {total}it; drop the late ones or set it to null (0 and 2^i up to T/2)"
        )
    return ks


def budget(ctx: Context) -> Budget:
    inst = ctx.params.instability
    maximum = inst.max_copies or inst.inits * inst.copies
    if maximum < inst.copies:
        raise LmcError(
            f"instability.max_copies ({maximum}) is below instability.copies ({inst.copies}), "
            "the copies a probe starts with; raise it or set it to null (inits x copies)"
        )
    if maximum < earliest.MIN_COPIES:
        raise LmcError(
            f"find-k decides from at least {earliest.MIN_COPIES} copies per probe (its bounds "
            f"are a jackknife over copies) and instability.max_copies is {maximum}; set "
            f"instability.max_copies to {earliest.MIN_COPIES} or more"
        )
    return Budget(start=inst.copies, step=1, maximum=maximum)


def density_sets(params: Params, density: float | None) -> Overrides:
    """--density as the IMP level whose density (1 - imp.fraction)^level is nearest to it."""
    if density is None:
        return Overrides()
    if not 0 < density < 1:
        raise LmcError(f"--density {density} is not a fraction of weights kept; use e.g. 0.33")
    level = max(1, round(math.log(density) / math.log(1 - params.imp.fraction)))
    return Overrides({"imp.levels": level}, {"imp.levels": f"--density {density}"})


class Probing:
    """The barriers the search asks for: `copies` copies of Wk of one training (the base seeds;
    or of IMP's subnetwork of that Wk), noise seeds 1..copies, as `lmctrack fork --seeds`. A
    probe that needs more samples adds one copy, which brings as many new pairs as there are
    copies already: the cheapest samples there are (a new init costs a training from W0 and
    two copies for one pair)."""

    def __init__(self, ctx: Context, ks: list[int], search=None) -> None:
        self.ctx, self.ks, self.search = ctx, ks, search  # search: IMP's mask search (--imp)
        inst = ctx.params.instability
        self.split = "test" if "test" in inst.splits else inst.splits[0]
        track = ctx.steps(inst.track_every) if inst.track_every else None
        self.options = {"reset_schedule": inst.reset_schedule, "track_every": track}
        self.run: TrainedRun | None = None
        self.taken: dict[int, int] = {}  # k -> copies that are the run's own training
        self.forks: dict[int, Fork] = {}
        self.drops: dict[int, float] = {}
        self.density: float | None = None

    def barriers(self, k: int, copies: int) -> list[float]:
        if self.run is None:  # one training, W0 -> W_T, registering Wk at every candidate
            steps = [Step(it=c) for c in self.ks]
            self.run = train_runs(self.ctx, sweep_seeds(self.ctx, 1), extra_steps=steps)[0]
        source, dense = self.run.at(k), None
        if self.search is not None:
            source, dense = self._subnetwork(source)
        seeds, trained_by = self._seeds(k, copies)
        self.taken[k] = len(trained_by)
        fork = self.forks[k] = algorithm1.fork(
            self.ctx, source, seeds=seeds, trained_by=trained_by, **self.options
        )
        if dense is not None:
            self.drops[k] = statistics.fmean(dense - (1 - e) for e in fork.copy_errors)
        return fork.barriers(self.split)

    def _seeds(self, k: int, copies: int) -> tuple[list[int], dict[int, str]]:
        """The copies' noise seeds, and those the run already trained. At k = 0 the run is W0
        trained under its noise; when that noise is one seed s (data order = augmentation, as by
        default) it is, bit for bit, the copy with seed s, so that copy is taken, not trained
        (tests/test_find_k.py checks the bits). Not for a subnetwork, nor a changed schedule or
        tracked copies: the run is none of those."""
        s, augment = self.ctx.params.seeds.data_order, self.ctx.params.seeds.augment
        if k or self.search is not None or any(self.options.values()) or s != augment:
            return copy_seeds(self.ctx, copies), {}
        others = [c for c in copy_seeds(self.ctx, copies) if c != s][: copies - 1]
        return [s, *others], {s: self.run.run_id}

    def _subnetwork(self, wk: str) -> tuple[str, float]:
        """IMP from Wk (one replicate, as the sparse sweep): its last level's subnetwork
        (Wk, m) and the dense accuracy it is compared with (IMP's level 0, trained from Wk)."""
        found = imps(self.ctx, [wk], self.search, with_baselines=False, replicates=1)[0]
        subnetwork = found.levels()[-1]
        self.density = subnetwork.density
        return subnetwork.start, 1 - found.levels()[0].test_error

    def imp_trainings(self) -> int:
        return cfg_levels(self.ctx.params.imp) + 1 if self.search is not None else 0

    def trainings(self, search: Search) -> int:
        """Every training the answer needs: the one run, IMP's levels, the copies (but those that
        are the run itself)."""
        own = sum(self.taken.values())
        return 1 + sum(p.copies + self.imp_trainings() for p in search.probes) - own

    def grid_trainings(self) -> int:
        """The full grid: the `instability` sweep of every candidate (inits x copies each)."""
        inst = self.ctx.params.instability
        return inst.inits + len(self.ks) * inst.inits * (inst.copies + self.imp_trainings())


def find_k(ctx: Context, search=None) -> FindK:
    """The search over this network's candidates; with IMP's mask `search`, over its subnetwork
    at the last IMP level (imp.levels). Finished trainings and forks are reused."""
    inst = ctx.params.instability
    ks = candidates(ctx)
    probing = Probing(ctx, ks, search)
    found = earliest.search(
        ks,
        probing.barriers,
        budget(ctx),
        threshold=inst.stable_threshold,
        confidence=inst.confidence,
    )
    subnetwork = None
    if search is not None:
        level, threshold = cfg_levels(ctx.params.imp), ctx.params.imp.matching_threshold
        subnetwork = Subnetwork(level, probing.density, probing.drops, threshold)
    with ctx.run(
        "find-k" + (" imp" if search is not None else ""),
        params={
            schema.INIT_SEED: ctx.params.seeds.init,
            schema.BN: inst.bn,
            "candidates": ",".join(map(str, ks)),
            "copies": inst.copies,
            "max_copies": budget(ctx).maximum,
            "confidence": inst.confidence,
            "rule": found.rule.name,
            "looks": found.rule.looks,
        },
        tags={schema.KIND: schema.KIND_FIND_K},
    ) as run:
        result = FindK(
            run_id=run.id,
            model=ctx.model_name,
            split=probing.split,
            bn=inst.bn,
            search=found,
            copies=inst.copies,
            max_copies=budget(ctx).maximum,
            trainings=probing.trainings(found),
            grid_trainings=probing.grid_trainings(),
            train_run=probing.run.run_id,
            fork_runs=[probing.forks[k].run_id for k in sorted(probing.forks)],
            subnetwork=subnetwork,
            run_as_copy=any(probing.taken.values()),
        )
        if search is not None:
            run.log_params({schema.DENSITY: probing.density})
        probed = [(f"fork k={k}", probing.forks[k].run_id) for k in sorted(probing.forks)]
        note_links(
            run,
            "The training and forks it probed (made before this run):",
            [("train", probing.run.run_id), *probed],
        )
        for p in found.probes:
            name = schema.metric(result.split, schema.ERROR_BARRIER)
            run.log_metrics({f"{name}.mean": p.mean, "copies": p.copies}, step=p.k)
        run.log_metrics({"trainings": result.trainings, "grid_trainings": result.grid_trainings})
        run.log_json(to_dict(result), "find_k.json")
        for path in write_outputs(ctx, result):
            run.log_file(path, "plots")
    return result


def rows(result: FindK) -> list[dict]:
    net = result.subnetwork
    return [
        {
            "k": p.k,
            "role": p.role,
            "copies": p.copies,
            "pairs": len(p.barriers),
            "mean": p.mean,
            "low": p.low,
            "high": p.high,
            "decision": p.decision,
            **({"accuracy_drop": net.drop[p.k]} if net is not None else {}),
        }
        for p in result.search.probes
    ]


def write_outputs(ctx: Context, result: FindK) -> list:
    """The plot (logged on the run) and, with --out, the CSV and headline metrics for DVC."""
    from lmctrack.results.plots import save

    folder = ctx.out or ctx.scratch()
    figure = save(result.plot(), folder / "find_k.png")
    if ctx.out is not None:
        table = rows(result)
        lines = [",".join(table[0])] + [
            ",".join(f"{v:.6f}" if isinstance(v, float) else str(v) for v in row.values())
            for row in table
        ]
        (ctx.out / "find_k.csv").write_text("\n".join(lines) + "\n")
        lower, upper = result.search.interval
        ctx.write_output(
            "find_k_metrics.json",
            {
                "k_star": result.k_star,
                "lower": lower,
                "trainings": result.trainings,
                "grid_trainings": result.grid_trainings,
                "fraction": result.fraction,
                "violations": len(result.search.violations),
                "undecided": len(result.search.undecided),
                "confidence": result.search.rule.confidence,
                "rule": result.search.rule.label,
            },
        )
    return [figure]


COLORS = {
    earliest.STABLE: "tab:green",
    earliest.UNSTABLE: "tab:red",
    earliest.UNDECIDED: "tab:orange",
}


def plot_search(result: FindK):
    """Each probed k: the mean barrier and its bounds by the search's rule, colored by the verdict (a square: the
    check above k*); dotted: the candidates left unprobed; the band: where k* lies."""
    from matplotlib.ticker import NullLocator, PercentFormatter

    from lmctrack.results.plots import _figure, _rewind_axis

    s = result.search
    fig, axes = _figure(size=(7.0, 4.5))
    ax = axes[0][0]
    for p in s.probes:
        low = p.low if math.isfinite(p.low) else p.mean
        high = p.high if math.isfinite(p.high) else p.mean
        ax.errorbar(
            [p.k],
            [p.mean],
            yerr=[[p.mean - low], [high - p.mean]],
            fmt="s" if p.role == earliest.CHECK else "o",
            color=COLORS[p.decision],
            capsize=4,
            markersize=6,
        )
        label = f"{len(p.barriers)} pairs"
        ax.annotate(label, (p.k, p.mean), xytext=(6, 4), textcoords="offset points", fontsize=7)
    probed = {p.k for p in s.probes}
    for k in s.candidates:
        style = "-" if k in probed else ":"
        ax.axvline(k, color="darkgray", linewidth=0.8, zorder=0, linestyle=style)
    lower, upper = s.interval
    if upper is not None:
        left = lower if lower is not None else upper
        ax.axvspan(left, upper, color="tab:green", alpha=0.12, label=f"k* = {upper}it lies here")
    ax.axhline(s.threshold, color="gray", linestyle="--", label=f"stable below {s.threshold:.0%}")
    for decision, color in COLORS.items():
        ax.plot([], [], "o", color=color, label=decision)
    ax.plot([], [], "s", color="gray", label="check above k*")
    _rewind_axis(ax, s.candidates)
    ax.set_xlabel("rewind step k (iterations; symlog axis; dotted: candidates not probed)")
    first = min([k for k in s.candidates if k > 0], default=1)
    ax.set_xlim(-0.4 * first, s.candidates[-1] * 1.5 if s.candidates[-1] else 1)
    ax.set_xticks(s.candidates, [str(k) for k in s.candidates], fontsize=7)
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_yscale("symlog", linthresh=s.threshold / 2)
    ends = [v for p in s.probes for v in (p.low, p.mean, p.high) if math.isfinite(v)]
    low, high = min(0.0, *ends) - s.threshold / 10, max(s.threshold, *ends) * 1.6
    ax.set_ylim(low, high)
    marks = [0, s.threshold / 4, s.threshold / 2, s.threshold, 0.05, 0.1, 0.2, 0.5, 1.0]
    ax.set_yticks([y for y in marks if low <= y <= high])
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=1))
    ax.set_ylabel(f"{result.split} error barrier (symlog)")
    ax.legend(fontsize="x-small", loc="best")
    ax.set_title(
        f"{result.model}: the earliest stable rewind step (find-k)\n"
        f"{len(s.probes)} of {len(s.candidates)} candidates probed: mean over pairs and its\n"
        f"bounds by {s.rule.label}\n"
        f"{result.trainings} trainings, the full grid {result.grid_trainings}",
        fontsize="medium",
    )
    return fig
