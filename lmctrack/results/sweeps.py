"""Typed results of the sweeps: the instability sweep (Figures 3, 4 and 11) and the sparse sweep
(Figures 6, 7 and 9, and the paper's claim decided from them). As lmctrack.results.paper: kept as
JSON with their headline numbers (lmctrack.results.serial), read back with sweep_from_dict /
sparse_from_dict.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from lmctrack.config import schema
from lmctrack.config.schema import Stats
from lmctrack.results.serial import known


@dataclass
class SweepRow:
    """Figure 3 at one rewind step and split: the error barrier over inits x pairs."""

    k: int
    split: str
    barrier: Stats
    endpoint_error: float
    stable: bool

    def headline(self) -> dict[str, float | bool]:
        """The barrier's statistics and the verdict, named as the sweep's metrics at step k."""
        return schema.barrier_metrics(self.split, self.barrier, self.stable)


@dataclass
class SoupRow:
    """At one rewind step: the test error of the uniform soup of each fork's copies, beside the
    copies' mean and best (each over inits), and the second verdict: the soup matches the mean
    copy (its test error at most imp.matching_threshold above it)."""

    k: int
    soup: Stats
    mean_copy: Stats
    best_copy: Stats
    matching: bool

    def headline(self) -> dict[str, float | bool]:
        return {
            schema.SOUP_ERROR: self.soup.mean,
            schema.COPIES_MEAN_ERROR: self.mean_copy.mean,
            schema.COPIES_BEST_ERROR: self.best_copy.mean,
            schema.SOUP_MATCHING: self.matching,
        }


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
    soups: list[SoupRow] = field(default_factory=list)  # the copies' soup at every k
    matching_threshold: float = schema.MATCHING_THRESHOLD

    def earliest_stable(self, split: str = "test") -> int | None:
        return schema.earliest([(r.k, r.stable) for r in self.rows if r.split == split])

    def soup_claim(self) -> tuple[str, bool | None]:
        """The second verdict in the paper's words, decided from the measured numbers: the soup
        matches the mean copy exactly at the k where the copies are stable (on test)."""
        stable = {r.k: r.stable for r in self.rows if r.split == "test"}
        soups = [s for s in self.soups if s.k in stable]
        if not soups:
            return "no soup was measured on the test split", None
        holds = all(s.matching == stable[s.k] for s in soups)
        ks = [s.k for s in soups]
        claim = (
            "The uniform soup of the copies matches the mean copy exactly at the k where the "
            f"copies are stable: {'yes' if holds else 'no'}, because the copies are stable at "
            f"k = {_ks([k for k in ks if stable[k]])} and the soup's test error is at most "
            f"{self.matching_threshold:.1%} above the mean copy's at k = "
            f"{_ks([s.k for s in soups if s.matching])}."
        )
        return claim, holds

    def headline(self) -> dict[str, int | None]:
        """Per split, the earliest rewind step from which Wk is stable (None: never)."""
        splits = dict.fromkeys(r.split for r in self.rows)
        return {schema.metric(s, "earliest_stable_k"): self.earliest_stable(s) for s in splits}

    def plot(self, kind: str = "barrier"):
        """Figure 3 (`barrier`), Figure 11 (`wk_error`) or the copies' soup (`soup`)."""
        from lmctrack.results.plots import plot_instability, plot_soup, plot_wk_error

        if kind == "wk_error":
            return plot_wk_error(self.wk_errors, f"{self.model}: error of Wk (Figure 11)")
        if kind == "soup":
            return plot_soup(self.soups, f"{self.model}: the copies' soup vs rewind step")
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

    def headline(self) -> dict[str, float | bool]:
        """The barrier's statistics and both verdicts (stable, matching) at this density and k."""
        numbers = schema.barrier_metrics(self.split, self.barrier, self.stable)
        return numbers | {schema.IMP_ACCURACY_DROP: self.drop, schema.IMP_MATCHING: self.matching}


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
        from lmctrack.results.plots import plot_earliest, plot_imp_rewind

        if kind == "earliest":
            return plot_earliest(self.earliest, f"{self.model}: earliest stable and matching k")
        rows = [r for r in self.rows if r.split == split]
        title = f"{self.model}: IMP subnetworks vs rewind step (bn={self.bn})"
        if kind == "error":
            series = [(r.density, r.k, r.test_error) for r in rows]
            metric = "test error of the subnetworks' copies"
            return plot_imp_rewind(series, title, metric=metric, dense=self.dense_error.mean)
        series = [(r.density, r.k, r.barrier) for r in rows]
        metric = f"{split} error barrier"
        return plot_imp_rewind(series, title, metric=metric, threshold=self.threshold)

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
                    schema.TEST_ERROR: r.test_error.mean,
                    "drop": r.drop,
                    "matching": r.matching,
                }
                for r in self.rows
            ]
        )


def sweep_from_dict(data: dict) -> Sweep:
    data = known(Sweep, data)
    data["rows"] = [
        SweepRow(**{**known(SweepRow, r), "barrier": Stats(**r["barrier"])}) for r in data["rows"]
    ]
    data["wk_errors"] = {int(k): Stats(**s) for k, s in data.get("wk_errors", {}).items()}
    stats = ("soup", "mean_copy", "best_copy")
    data["soups"] = [
        SoupRow(**{**known(SoupRow, r), **{n: Stats(**r[n]) for n in stats}})
        for r in data.get("soups", [])
    ]
    return Sweep(**data)


def _ks(ks: list[int]) -> str:
    return ", ".join(f"{k}it" for k in ks) or "none"


def sparse_from_dict(data: dict) -> SparseSweep:
    data = known(SparseSweep, data)
    data["rows"] = [
        SparseRow(
            **{
                **known(SparseRow, r),
                "barrier": Stats(**r["barrier"]),
                "test_error": Stats(**r["test_error"]),
            }
        )
        for r in data["rows"]
    ]
    data["earliest"] = [Earliest(**e) for e in data["earliest"]]
    data["dense_error"] = Stats(**data["dense_error"])
    return SparseSweep(**data)
