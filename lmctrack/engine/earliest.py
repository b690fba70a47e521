"""The earliest stable rewind step k*, found by bisection over candidate steps instead of a grid.

Instability falls with k (the paper's Figures 3 and 9), so the earliest stable k among sorted
candidates can be bisected. At each probed k the engine asks `barriers(k, copies)` for the error
barriers of every pair of `copies` copies. Each verdict is a one-sided claim about their mean, so
each is decided by a one-sided bound at the confidence level: stable when the upper bound lies
below the threshold, unstable when the lower bound lies at or above it (each a one-sided t-test;
together the two bounds are the two-sided interval at level 2 * confidence - 1, as in an
equivalence test). While neither holds, more copies are asked for, up to a maximum, after which
the probe is undecided. The first probe is the smallest candidate (a network stable at
initialization costs one probe); after k* is found the next candidate above it is checked, and
instability rising with k is reported as a violation of the assumption, never hidden. No training here: the workflow supplies `barriers`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

STABLE, UNSTABLE, UNDECIDED = "stable", "unstable", "undecided"
SEARCH, CHECK = "search", "check"  # a probe of the bisection, or the check above k*

Barriers = Callable[[int, int], list[float]]  # (k, copies) -> the barrier of every pair


@dataclass(frozen=True)
class Budget:
    """Copies forked at a probe: `start` first, `step` more while undecided, at most `maximum`."""

    start: int
    step: int
    maximum: int

    def __post_init__(self) -> None:
        if not 2 <= self.start <= self.maximum or self.step < 1:
            raise ValueError(f"a budget needs 2 <= start <= maximum and step >= 1: {self}")

    def ladder(self) -> list[int]:
        return list(range(self.start, self.maximum + 1, self.step))


@dataclass
class Probe:
    """One probed candidate: the barriers at the copies it took, their mean, its one-sided lower
    and upper confidence bounds, and the verdict."""

    k: int
    copies: int
    barriers: list[float]
    mean: float
    low: float
    high: float
    decision: str
    role: str = SEARCH


@dataclass
class Search:
    """The search's outcome: k* (None: no candidate shown stable), the candidates it lies in,
    (lower, upper]: lower the highest candidate below it shown unstable (None: none), every
    probe in order, and the assumption's violations found."""

    candidates: list[int]
    threshold: float
    confidence: float
    probes: list[Probe]
    k_star: int | None
    interval: tuple[int | None, int | None]
    violations: list[str] = field(default_factory=list)

    @property
    def undecided(self) -> list[int]:
        return sorted({p.k for p in self.probes if p.decision == UNDECIDED})

    @property
    def checked(self) -> int | None:
        """The candidate above k* checked for the monotonicity assumption (None: none)."""
        above = [c for c in self.candidates if self.k_star is not None and c > self.k_star]
        return above[0] if above and any(p.k == above[0] for p in self.probes) else None

    def summary(self) -> str:
        """The answer in one sentence, with every reason to doubt it."""
        level = f"{self.confidence:.0%}"
        lower, upper = self.interval
        if self.k_star is None:
            text = f"no candidate was shown stable (up to {self.candidates[-1]}it)"
        elif lower is None and self.k_star == self.candidates[0]:
            text = f"earliest stable k = {self.k_star}it: stable at the first candidate"
        else:
            low = "below" if lower is None else f"{lower}it <"
            text = f"earliest stable k = {self.k_star}it (k* in {low} k <= {upper}it)"
        if self.k_star == self.candidates[0] and len(self.candidates) > 1:
            text += "; the search stopped there: no candidate above it was probed"
        if self.undecided:
            text += (
                f"; undecided at k = {', '.join(f'{k}it' for k in self.undecided)} (its one-sided "
                f"{level} bounds still lie either side of the threshold at the most copies)"
            )
        return text + ("; " + "; ".join(self.violations) if self.violations else "")


def bounds(values: Sequence[float], confidence: float) -> tuple[float, float, float]:
    """The mean and its one-sided Student-t lower and upper confidence bounds at `confidence`
    (one sample: unbounded)."""
    from scipy.stats import t

    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, -math.inf, math.inf
    half = t.ppf(confidence, len(values) - 1) * statistics.stdev(values)
    half /= math.sqrt(len(values))
    return mean, mean - half, mean + half


def decide(low: float, high: float, threshold: float) -> str:
    """Stable when the upper bound is below the threshold (schema.stable: barrier < it),
    unstable when the lower bound is at or above it, else undecided."""
    return STABLE if high < threshold else UNSTABLE if low >= threshold else UNDECIDED


def probe(
    k: int, barriers: Barriers, budget: Budget, threshold: float, confidence: float, role: str
) -> Probe:
    """Measure k with more copies until a bound decides, or the budget is spent."""
    for copies in budget.ladder():
        values = list(barriers(k, copies))
        mean, low, high = bounds(values, confidence)
        decision = decide(low, high, threshold)
        if decision != UNDECIDED:
            break
    return Probe(k, copies, values, mean, low, high, decision, role)


def search(
    candidates: Sequence[int],
    barriers: Barriers,
    budget: Budget,
    *,
    threshold: float,
    confidence: float = 0.95,
) -> Search:
    """Bisect the sorted candidates for the earliest stable k; an undecided probe counts as not
    shown stable (the search moves up, and the interval it reports widens to include it)."""
    ks = sorted(set(candidates))
    if not ks:
        raise ValueError("no candidate rewind steps to search")
    probes: dict[int, Probe] = {}

    def at(index: int, role: str = SEARCH) -> Probe:
        if ks[index] not in probes:
            probes[ks[index]] = probe(ks[index], barriers, budget, threshold, confidence, role)
        return probes[ks[index]]

    lo, hi = 0, len(ks)  # ks[lo] not shown stable; ks[hi:] stable (by the assumption)
    if at(0).decision == STABLE:
        hi = 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if at(mid).decision == STABLE:
            hi = mid
        else:
            lo = mid
    if 0 < hi < len(ks) - 1:  # the assumption checked where it was used: just above k*
        at(hi + 1, CHECK)
    k_star = ks[hi] if hi < len(ks) else None
    found = list(probes.values())
    unstable = [p.k for p in found if p.decision == UNSTABLE and (k_star is None or p.k < k_star)]
    return Search(
        candidates=ks,
        threshold=threshold,
        confidence=confidence,
        probes=found,
        k_star=k_star,
        interval=(max(unstable, default=None), k_star),
        violations=violations(found),
    )


def violations(probes: Sequence[Probe]) -> list[str]:
    """Every decided pair of probes where instability rose with k: stable at a, unstable at b > a."""
    stable = sorted(p.k for p in probes if p.decision == STABLE)
    return [
        f"violation: stable at k = {a}it but unstable at k = {p.k}it (instability rose with k, "
        "so the bisection's answer is not trustworthy; run the full grid, `lmctrack instability`)"
        for p in sorted(probes, key=lambda p: p.k)
        if p.decision == UNSTABLE
        for a in stable
        if a < p.k
    ]
