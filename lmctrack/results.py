"""Typed results that cross module boundaries: a pair's path, a fork, an IMP level, sweep rows.

Workflows build them, the store keeps them as JSON artifacts (so a reused run returns the same
object), and the CLI, plots and report read their fields instead of parsing string keys again.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

from lmctrack import schema
from lmctrack.schema import Stats

R = TypeVar("R", bound="Flat")


def to_dict(result: Any) -> dict:
    """A result as plain JSON-able data (nested dataclasses included)."""
    return dataclasses.asdict(result)


class Flat:
    """A result whose JSON holds plain values only: its fields are the constructor's arguments."""

    @classmethod
    def from_dict(cls: type[R], data: dict) -> R:
        return cls(**data)


@dataclass
class Pair(Flat):
    """Two states, the linear path between them (per split) and their distances."""

    a: str
    b: str
    bn: str
    mask_mode: str
    alphas: list[float]
    curves: dict[str, dict[str, list[float]]]  # split -> {"error": [...], "loss": [...]}
    distances: dict[str, float]
    run_id: str | None = None
    seeds: list[int] = field(default_factory=list)  # the copies' noise seeds, for a fork's pair

    def error_barrier(self, split: str) -> float:
        from lmctrack.interpolate import error_barrier

        return error_barrier(self.curves[split]["error"])

    def loss_barrier(self, split: str) -> float:
        from lmctrack.interpolate import loss_barrier_linear

        return loss_barrier_linear(self.curves[split]["loss"], self.alphas)

    def endpoint_errors(self, split: str) -> tuple[float, float]:
        errors = self.curves[split]["error"]
        return errors[0], errors[-1]

    def metrics(self) -> dict[str, float]:
        """Flat metrics named '<split>.<quantity>' (and 'distance.<name>'), ready to log."""
        out: dict[str, float] = {}
        for split, curve in self.curves.items():
            out[schema.metric(split, schema.ERROR_BARRIER)] = self.error_barrier(split)
            out[schema.metric(split, schema.LOSS_BARRIER)] = self.loss_barrier(split)
            out[schema.metric(split, schema.ERROR_ALPHA0)] = curve["error"][0]
            out[schema.metric(split, schema.ERROR_ALPHA1)] = curve["error"][-1]
            out[schema.metric(split, schema.ERROR_MAX)] = max(curve["error"])
        out.update({schema.metric(schema.DISTANCE, k): float(v) for k, v in self.distances.items()})
        return out

    def plot(self, title: str = "pair"):
        """Error and loss along the path, per split (a matplotlib Figure)."""
        from lmctrack.plots import plot_path

        return plot_path({title: self}, f"{title} (bn={self.bn})")

    def to_frame(self):
        """One row per (split, alpha): error and loss (a pandas DataFrame)."""
        import pandas as pd

        return pd.DataFrame(
            [
                {"split": split, "alpha": a, "error": c["error"][i], "loss": c["loss"][i]}
                for split, c in self.curves.items()
                for i, a in enumerate(self.alphas)
            ]
        )


@dataclass
class Fork:
    """Algorithm 1's outcome for one state: its copies W_T and every pair interpolated."""

    run_id: str
    source: str
    mask: str | None
    k: int
    total: int
    seeds: list[int]
    reset_schedule: bool
    bn: str
    copies: list[str]
    pairs: list[Pair]
    distances: dict[str, list[float]]  # e.g. "Wk_to_W_T": one per copy, "W0_to_Wk": [d]
    tracked: dict[int, dict[str, Stats]] = field(default_factory=dict)  # Appendix C
    copy_errors: list[float] = field(default_factory=list)  # each copy's test error, in order
    reused: bool = False

    def barriers(self, split: str) -> list[float]:
        return [p.error_barrier(split) for p in self.pairs]

    def barrier(self, split: str) -> Stats:
        return Stats.of(self.barriers(split))

    def stable(self, split: str, threshold: float) -> bool:
        return schema.stable(self.barrier(split).mean, threshold)

    def plot(self):
        """Every pair's path (a matplotlib Figure)."""
        from lmctrack.plots import plot_path

        paths = {f"seeds {p.seeds[0]}-{p.seeds[1]}" if p.seeds else p.b: p for p in self.pairs}
        return plot_path(paths, f"fork of {self.source} at k={self.k}")

    def to_frame(self):
        """One row per pair: its seeds, barriers per split and distances."""
        import pandas as pd

        return pd.DataFrame([{"k": self.k, "seeds": p.seeds, **p.metrics()} for p in self.pairs])

    @classmethod
    def from_dict(cls, data: dict) -> Fork:
        data = dict(data)
        data["pairs"] = [Pair.from_dict(p) for p in data["pairs"]]
        data["tracked"] = {
            int(step): {name: Stats(**s) for name, s in stats.items()}
            for step, stats in data.get("tracked", {}).items()
        }
        return cls(**data)


@dataclass
class Trained:
    """One training of an IMP chain or a baseline: which subnetwork, with which noise, its error."""

    method: str  # schema.IMP, RANDOM_PRUNE or RANDOM_REINIT
    replicate: int
    level: int
    density: float
    start: str  # URI of the state it trained from: (Wk, m), the shuffled mask, or the reinit
    trained: str  # URI of its W_T
    noise_seed: int
    start_step: int
    test_error: float


@dataclass
class ImpRow:
    """Table 2 for one level: each method's test accuracy over replicates and the verdicts."""

    level: int
    density: float
    accuracy: dict[str, Stats]  # method -> test accuracy over replicates
    dense: Stats
    drop: float  # mean dense accuracy - mean IMP accuracy
    matching: bool
    within_one_std: bool
    baselines_matching: dict[str, bool]


@dataclass
class Imp:
    """Algorithm 2's outcome: every level of every replicate, the baselines and Table 2."""

    run_id: str
    source: str
    k: int
    replicates: int
    trainings: list[Trained]
    rows: list[ImpRow]
    same_basin: list[Pair]
    matching_rule: str
    reused: bool = False

    def plot(self, title: str | None = None):
        """Figures 5/8: test accuracy vs density per method, mean ± std over replicates."""
        from lmctrack.plots import plot_imp_density

        points = [
            {
                "method": schema.METHOD_LABELS[m],
                "density": r.density,
                "mean": s.mean,
                "std": s.std,
                "n": s.n,
            }
            for r in self.rows
            for m, s in r.accuracy.items()
        ]
        dense = self.rows[0].dense if self.rows else None
        return plot_imp_density(
            points,
            title or f"IMP rewinding to {self.k}it vs random baselines",
            dense=dense.mean if dense else None,
            dense_std=dense.std if dense else 0.0,
        )

    def to_frame(self):
        """One row per training: method, replicate, level, density, noise seed, test error."""
        import pandas as pd

        return pd.DataFrame([dataclasses.asdict(t) for t in self.trainings])

    def levels(self, replicate: int = 0, method: str = schema.IMP) -> list[Trained]:
        return sorted(
            (t for t in self.trainings if t.method == method and t.replicate == replicate),
            key=lambda t: t.level,
        )

    @classmethod
    def from_dict(cls, data: dict) -> Imp:
        data = dict(data)
        data["trainings"] = [Trained(**t) for t in data["trainings"]]
        data["rows"] = [
            ImpRow(
                **{
                    **r,
                    "accuracy": {m: Stats(**s) for m, s in r["accuracy"].items()},
                    "dense": Stats(**r["dense"]),
                }
            )
            for r in data["rows"]
        ]
        data["same_basin"] = [Pair.from_dict(p) for p in data["same_basin"]]
        return cls(**data)


@dataclass
class SweepRow:
    """Figure 3 at one rewind step and split: the error barrier over inits x pairs."""

    k: int
    split: str
    barrier: Stats
    endpoint_error: float
    stable: bool


@dataclass
class Sweep:
    """The instability sweep (Figure 3, or Figure 4 with reset schedule)."""

    run_id: str
    model: str
    bn: str
    inits: list[int]
    copy_seeds: list[int]
    threshold: float
    rows: list[SweepRow]
    train_runs: list[str]
    fork_runs: list[str]
    reused_forks: int
    wk_errors: dict[int, Stats] = field(default_factory=dict)  # Figure 11: test error of Wk itself
    definitions: dict[str, str] = field(default_factory=lambda: dict(schema.DEFINITIONS))

    def earliest_stable(self, split: str = "test") -> int | None:
        return schema.earliest([(r.k, r.stable) for r in self.rows if r.split == split])

    def plot(self, kind: str = "barrier"):
        """Figure 3 (`barrier`) or Figure 11 (`wk_error`)."""
        from lmctrack.plots import plot_instability, plot_wk_error

        if kind == "wk_error":
            return plot_wk_error(self.wk_errors, f"{self.model}: error of Wk (Figure 11)")
        title = (
            f"{self.model}: instability vs rewind step\n"
            f"{len(self.inits)} inits x {len(self.copy_seeds)} copies"
        )
        return plot_instability(self.rows, title, bn=self.bn, threshold=self.threshold)

    def to_frame(self):
        """One row per (k, split): barrier statistics, endpoint error, verdict."""
        import pandas as pd

        return pd.DataFrame(
            [
                {
                    "k": r.k,
                    "split": r.split,
                    **dataclasses.asdict(r.barrier),
                    "endpoint_error": r.endpoint_error,
                    "stable": r.stable,
                }
                for r in self.rows
            ]
        )


@dataclass
class SparseRow:
    """Figures 6 and 7 at one density, rewind step and split."""

    level: int
    density: float
    k: int
    split: str
    barrier: Stats
    stable: bool
    test_error: Stats  # of the subnetworks' copies
    drop: float  # mean dense accuracy - mean accuracy of the copies
    matching: bool


@dataclass
class Earliest:
    """Figure 9 for one density: median over samples of the earliest stable / matching k."""

    level: int
    density: float
    stable_from_k: float | None
    matching_from_k: float | None
    samples: int


@dataclass
class SparseSweep:
    """Figures 6, 7 and 9, and the paper's claim decided from them."""

    run_id: str
    model: str
    bn: str
    rows: list[SparseRow]
    earliest: list[Earliest]
    dense_error: Stats
    claim: str
    claim_holds: bool | None
    threshold: float = schema.STABLE_THRESHOLD
    definitions: dict[str, str] = field(default_factory=lambda: dict(schema.DEFINITIONS))

    def plot(self, kind: str = "barrier", split: str = "test"):
        """Figure 6 (`barrier`), Figure 7 (`error`) or Figure 9 (`earliest`)."""
        from lmctrack.plots import plot_earliest, plot_imp_rewind

        if kind == "earliest":
            return plot_earliest(self.earliest, f"{self.model}: Figure 9")
        rows = [r for r in self.rows if r.split == split]
        title = f"{self.model}: IMP subnetworks vs rewind step (bn={self.bn})"
        if kind == "error":
            series = [(r.density, r.k, r.test_error) for r in rows]
            metric, reference = "test error of the subnetworks' copies", self.dense_error.mean
        else:
            series = [(r.density, r.k, r.barrier) for r in rows]
            metric, reference = f"{split} error barrier", self.threshold
        return plot_imp_rewind(series, title, metric=metric, reference=reference)

    def to_frame(self):
        """One row per (density, k, split): barrier, error, drop and the verdicts."""
        import pandas as pd

        return pd.DataFrame(
            [
                {
                    "level": r.level,
                    "density": r.density,
                    "k": r.k,
                    "split": r.split,
                    "barrier_mean": r.barrier.mean,
                    "barrier_std": r.barrier.std,
                    "n": r.barrier.n,
                    "stable": r.stable,
                    "test_error": r.test_error.mean,
                    "drop": r.drop,
                    "matching": r.matching,
                }
                for r in self.rows
            ]
        )


def sweep_from_dict(data: dict) -> Sweep:
    data = dict(data)
    data["rows"] = [SweepRow(**{**r, "barrier": Stats(**r["barrier"])}) for r in data["rows"]]
    data["wk_errors"] = {int(k): Stats(**s) for k, s in data.get("wk_errors", {}).items()}
    return Sweep(**data)


def sparse_from_dict(data: dict) -> SparseSweep:
    data = dict(data)
    data["rows"] = [
        SparseRow(**{**r, "barrier": Stats(**r["barrier"]), "test_error": Stats(**r["test_error"])})
        for r in data["rows"]
    ]
    data["earliest"] = [Earliest(**e) for e in data["earliest"]]
    data["dense_error"] = Stats(**data["dense_error"])
    return SparseSweep(**data)
