"""The earliest stable rewind step k*, found by bisection over candidate steps instead of a grid.

Instability falls with k (the paper's Figures 3 and 9), so the earliest stable k among sorted
candidates can be bisected. At each probed k the engine asks `barriers(k, copies)` for the error
barriers of every pair of `copies` copies (in `itertools.combinations` order). Each verdict is a
one-sided claim about their mean: stable when the upper bound lies below the threshold, unstable
when the lower bound lies at or above it; while neither holds, one more copy is asked for, up to
a maximum, after which the probe is undecided.

The bounds are the `Rule`'s, which keeps the stated confidence although (1) the pairs of one
probe share copies: n copies give n(n-1)/2 pairs but carry the information of n copies, and a
copy that lands in a worse place raises every pair it is in, so a t-interval over pairs is too
narrow (it was wrong about half the time in tests/test_earliest.py's calibration); and (2) copies
are added until a bound decides, which looks at the data several times. For (1) the unit is the
copy: a jackknife over copies (leave one copy out, drop its n - 1 pairs, recompute the mean over
pairs), which estimates the variance of this U-statistic without a model of how copies and pairs
vary, costs nothing (no resampling, unlike a bootstrap, and deterministic), and needs only 3
copies. Barriers are right-skewed (a bad copy raises a few pairs a lot), so the bound is the wider
of the jackknife t-bound on the mean and on its logarithm. For (2) the error is spent
Bonferroni-style over the planned looks (start, start + step, ... up to the maximum copies): each
look uses (1 - confidence) / looks per side, so the chance that any look errs stays within
1 - confidence whatever the looks' dependence.

The first probe is the smallest candidate (a network stable at initialization costs one probe);
after k* is found the next candidate above it is checked, and instability rising with k is
reported as a violation of the assumption, never hidden. No training here: the workflow supplies
`barriers`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np

STABLE, UNSTABLE, UNDECIDED = "stable", "unstable", "undecided"
MIN_COPIES = 3  # the fewest copies whose jackknife bounds are finite
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


@dataclass(frozen=True)
class Rule:
    """The decision rule at one probe: jackknife-over-copies bounds of the mean barrier over
    pairs, the error spent Bonferroni-style over `looks` (the budget's ladder of copies)."""

    confidence: float
    looks: int
    name: str = "jackknife over copies, Bonferroni over looks"

    @property
    def label(self) -> str:
        """The rule and its confidence, as every result, metric and plot names them."""
        return f"{self.name} ({self.looks} looks) at confidence {self.confidence:.0%}"

    @property
    def quantile(self) -> float:
        """The one-sided level of each look's bound."""
        return 1 - (1 - self.confidence) / self.looks

    def bounds(self, barriers: Sequence[float]) -> tuple[float, float, float]:
        """The mean over pairs and its lower and upper bounds (fewer than MIN_COPIES: unbounded)."""
        mean, low, high = self.batch(np.asarray(barriers, dtype=float)[None])
        return float(mean[0]), float(low[0]), float(high[0])

    def batch(self, pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`bounds` of many probes at once, one row of pair barriers each (simulations)."""
        from scipy.stats import t

        n = copies_of(pairs.shape[-1])
        mean = pairs.mean(-1)
        if n < MIN_COPIES:
            return mean, np.full_like(mean, -np.inf), np.full_like(mean, np.inf)
        member = np.zeros((pairs.shape[-1], n))  # member[p, c]: pair p contains copy c
        for p, (i, j) in enumerate(combinations(range(n), 2)):
            member[p, [i, j]] = 1
        total = pairs.sum(-1, keepdims=True)
        left = (total - pairs @ member) / ((n - 1) * (n - 2) / 2)  # mean without copy c
        q = t.ppf(self.quantile, n - 1)
        half = q * jackknife_se(left)
        low, high = mean - half, mean + half
        positive = (mean > 0) & (left > 0).all(-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            log_half = q * jackknife_se(np.log(np.where(left > 0, left, 1.0)))
            low_log, high_log = mean * np.exp(-log_half), mean * np.exp(log_half)
        low = np.where(positive, np.minimum(low, low_log), low)
        high = np.where(positive, np.maximum(high, high_log), high)
        return mean, low, high


def jackknife_se(left: np.ndarray) -> np.ndarray:
    """The jackknife standard error from the leave-one-out estimates (last axis)."""
    n = left.shape[-1]
    return np.sqrt((n - 1) / n * ((left - left.mean(-1, keepdims=True)) ** 2).sum(-1))


def copies_of(pairs: int) -> int:
    """n, from the n(n-1)/2 pairs of n copies."""
    n = round((1 + math.sqrt(1 + 8 * pairs)) / 2)
    if n * (n - 1) // 2 != pairs:
        raise ValueError(f"{pairs} barriers are not every pair of some number of copies")
    return n


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
    rule: Rule
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
        level = f"{self.rule.confidence:.0%}"
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
                f"; undecided at k = {', '.join(f'{k}it' for k in self.undecided)} (its "
                f"{level} bounds still lie either side of the threshold at the most copies)"
            )
        text += "; " + "; ".join(self.violations) if self.violations else ""
        return f"{text} [{self.rule.label}]"


def decide(low: float, high: float, threshold: float) -> str:
    """Stable when the upper bound is below the threshold (schema.stable: barrier < it),
    unstable when the lower bound is at or above it, else undecided."""
    return STABLE if high < threshold else UNSTABLE if low >= threshold else UNDECIDED


def probe(
    k: int, barriers: Barriers, budget: Budget, threshold: float, rule: Rule, role: str
) -> Probe:
    """Measure k with more copies until a bound decides, or the budget is spent."""
    for copies in budget.ladder():
        values = list(barriers(k, copies))
        mean, low, high = rule.bounds(values)
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
    rule = Rule(confidence, looks=len(budget.ladder()))

    def at(index: int, role: str = SEARCH) -> Probe:
        if ks[index] not in probes:
            probes[ks[index]] = probe(ks[index], barriers, budget, threshold, rule, role)
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
        rule=rule,
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
