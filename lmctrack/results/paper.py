"""Typed results that cross module boundaries: a pair's path, a fork, an IMP level, sweep rows.

Workflows build them, the store keeps them as JSON artifacts (lmctrack.results.serial: so a reused
run returns the same object, and each JSON carries its headline numbers), and the CLI, plots and
report read their fields instead of parsing string keys again.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from lmctrack.config import schema
from lmctrack.config.schema import Stats
from lmctrack.results.serial import Flat, known, to_dict
from lmctrack.results.sweeps import (
    Earliest,
    SparseRow,
    SparseSweep,
    Sweep,
    SweepRow,
    sparse_from_dict,
    sweep_from_dict,
)

# The serialisation and the sweeps' results, importable from here as before.
__all__ = [
    "Earliest",
    "Flat",
    "SparseRow",
    "SparseSweep",
    "Sweep",
    "SweepRow",
    "sparse_from_dict",
    "sweep_from_dict",
    "to_dict",
]


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
        from lmctrack.engine.interpolate import error_barrier

        return error_barrier(self.curves[split]["error"])

    def loss_barrier(self, split: str) -> float:
        from lmctrack.engine.interpolate import loss_barrier_linear

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

    def headline(self) -> dict[str, float]:
        """Its barriers per split (the paper's and Entezari's) and distances: its metrics."""
        return self.metrics()

    def plot(self, title: str = "pair"):
        """Error and loss along the path, per split (a matplotlib Figure)."""
        from lmctrack.results.plots import plot_path

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
    threshold: float = schema.STABLE_THRESHOLD  # instability.stable_threshold it was made with
    optimizer_state: str = "restart"  # the copies' optimizer at k: restarted, or carried from Wk
    soup_error: float | None = None  # the test error of the copies' uniform soup
    reused: bool = False

    @property
    def splits(self) -> list[str]:
        return list(self.pairs[0].curves)

    def barriers(self, split: str) -> list[float]:
        return [p.error_barrier(split) for p in self.pairs]

    def barrier(self, split: str) -> Stats:
        return Stats.of(self.barriers(split))

    def stable(self, split: str, threshold: float) -> bool:
        return schema.stable(self.barrier(split).mean, threshold)

    def headline(self) -> dict[str, float | bool]:
        """The error barrier over its pairs per split (mean, std, median, n), the verdict at
        its threshold, the mean of each distance, and the copies' soup against the copies: the
        fork run's metrics."""
        out: dict[str, float | bool] = {}
        for split in self.splits:
            stable = self.stable(split, self.threshold)
            out.update(schema.barrier_metrics(split, self.barrier(split), stable))
        out.update(
            {
                f"{schema.metric(schema.DISTANCE, k)}.mean": sum(v) / len(v)
                for k, v in self.distances.items()
            }
        )
        if self.soup_error is not None:
            out.update(schema.soup_metrics(self.soup_error, self.copy_errors))
        return out

    def plot(self):
        """Every pair's path (a matplotlib Figure)."""
        from lmctrack.results.plots import plot_path

        paths = {f"seeds {p.seeds[0]}-{p.seeds[1]}" if p.seeds else p.b: p for p in self.pairs}
        return plot_path(paths, f"fork of {self.source} at k={self.k}")

    def to_frame(self):
        """One row per pair: its seeds, barriers per split and distances."""
        import pandas as pd

        return pd.DataFrame([{"k": self.k, "seeds": p.seeds, **p.metrics()} for p in self.pairs])

    @classmethod
    def from_dict(cls, data: dict) -> Fork:
        data = known(cls, data)
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

    def headline(self) -> dict[str, float | bool]:
        """Each method's test accuracy over replicates, the drop and the verdict, as logged."""
        out: dict[str, float | bool] = {
            f"{m}.test_accuracy.{s}": getattr(a, s)
            for m, a in self.accuracy.items()
            for s in schema.STATS
        }
        return out | {schema.IMP_ACCURACY_DROP: self.drop, schema.IMP_MATCHING: self.matching}


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
        from lmctrack.results.plots import plot_imp_density

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
        data = known(cls, data)
        data["trainings"] = [Trained(**t) for t in data["trainings"]]
        data["rows"] = [
            ImpRow(
                **{
                    **known(ImpRow, r),
                    "accuracy": {m: Stats(**s) for m, s in r["accuracy"].items()},
                    "dense": Stats(**r["dense"]),
                }
            )
            for r in data["rows"]
        ]
        data["same_basin"] = [Pair.from_dict(p) for p in data["same_basin"]]
        return cls(**data)
