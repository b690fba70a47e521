"""The search for the earliest stable rewind step (lmctrack.engine.earliest), driven by fake barrier
functions: monotone, non-monotone (the violation is reported), noisy (copies are added) and a
barrier on the threshold (undecided, said so); and its rule calibrated on simulated searches."""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pytest
from scipy.stats import t

from lmctrack.engine.earliest import (
    CHECK,
    STABLE,
    UNDECIDED,
    UNSTABLE,
    Budget,
    Rule,
    decide,
    search,
)

GRID = [0, 25, 100, 500]
BUDGET = Budget(start=3, step=3, maximum=9)  # 3 copies per init, up to 3 inits


class Fake:
    """barriers(k, copies): one value per pair, mean[k] +- spread[k] alternating; records calls."""

    def __init__(self, mean: dict[int, float], spread: dict[int, float] | None = None) -> None:
        self.mean, self.spread = mean, spread or {}
        self.calls: list[tuple[int, int]] = []

    def __call__(self, k: int, copies: int) -> list[float]:
        self.calls.append((k, copies))
        pairs = copies * (copies - 1) // 2
        d = self.spread.get(k, 0.0002)
        return [self.mean[k] + d * (-1) ** i for i in range(pairs)]


def decisions(result) -> dict[int, str]:
    return {p.k: p.decision for p in result.probes}


def test_the_bounds_are_the_jackknife_over_copies_at_the_level_spent_per_look():
    # 3 copies: pairs (0,1), (0,2), (1,2); copy 2 is the bad one, raising both its pairs
    rule = Rule(0.95, looks=5)
    mean, low, high = rule.bounds([0.01, 0.04, 0.024])
    assert mean == pytest.approx(0.074 / 3)
    left = np.array([0.024, 0.04, 0.01])  # the mean over pairs without copy 0, 1, 2
    q = t.ppf(1 - 0.05 / 5, 2)
    se = math.sqrt(2 / 3 * ((left - left.mean()) ** 2).sum())
    log_se = math.sqrt(2 / 3 * ((np.log(left) - np.log(left).mean()) ** 2).sum())
    assert low == pytest.approx(mean - q * se)  # the mean-scale bound is the wider below
    assert high == pytest.approx(max(mean + q * se, mean * math.exp(q * log_se)))
    assert rule.bounds([0.5])[1:] == (-math.inf, math.inf)  # 2 copies: no copy to leave out
    assert "jackknife over copies" in rule.label and "95%" in rule.label
    with pytest.raises(ValueError):
        rule.bounds([0.1, 0.2])  # not the pairs of any number of copies
    assert decide(0.0, 0.019, 0.02) == STABLE
    assert decide(0.02, 0.05, 0.02) == UNSTABLE
    assert decide(0.01, 0.03, 0.02) == UNDECIDED


def test_monotone_instability_is_bisected_to_the_earliest_stable_step_and_checked_above():
    fake = Fake({0: 0.22, 25: 0.10, 100: 0.011, 500: 0.001})
    result = search(GRID, fake, BUDGET, threshold=0.02)
    assert result.k_star == 100
    assert result.interval == (25, 100)
    # the first probe is k = 0, then the bisection, then the check just above k*
    assert [p.k for p in result.probes] == [0, 100, 25, 500]
    assert decisions(result) == {0: UNSTABLE, 100: STABLE, 25: UNSTABLE, 500: STABLE}
    assert result.probes[-1].role == CHECK and result.checked == 500
    assert result.violations == [] and result.undecided == []
    assert all(copies == 3 for _, copies in fake.calls)  # decided at the first copies each time
    assert "earliest stable k = 100it" in result.summary()


def test_a_finer_grid_probes_fewer_candidates_than_it_has():
    ks = [0] + [2**i for i in range(10)]  # 0, 1, 2, ..., 512
    fake = Fake({k: 0.2 if k < 64 else 0.005 for k in ks})
    result = search(ks, fake, BUDGET, threshold=0.02)
    assert result.k_star == 64 and result.interval == (32, 64)
    assert len(result.probes) < len(ks) / 2
    assert result.checked == 128


def test_stable_at_the_first_candidate_stops_after_one_probe():
    fake = Fake({k: 0.003 for k in GRID})
    result = search(GRID, fake, BUDGET, threshold=0.02)
    assert result.k_star == 0 and result.interval == (None, 0)
    assert fake.calls == [(0, 3)]
    assert "stable at the first candidate" in result.summary()


def test_instability_rising_with_k_is_reported_as_a_violation():
    fake = Fake({0: 0.22, 25: 0.10, 100: 0.005, 500: 0.08})  # stable at 100, unstable at 500
    result = search(GRID, fake, BUDGET, threshold=0.02)
    assert result.k_star == 100
    assert decisions(result)[500] == UNSTABLE
    assert len(result.violations) == 1
    assert "stable at k = 100it but unstable at k = 500it" in result.violations[0]
    assert "violation" in result.summary()


def test_a_noisy_probe_adds_copies_until_the_interval_decides():
    # at k = 100 the mean is 1.0% with a +-0.5% pair spread: 3 copies straddle 2%, 6 decide
    fake = Fake({0: 0.22, 25: 0.10, 100: 0.010, 500: 0.001}, spread={100: 0.005})
    result = search(GRID, fake, BUDGET, threshold=0.02)
    at_100 = next(p for p in result.probes if p.k == 100)
    assert [c for k, c in fake.calls if k == 100] == [3, 6]
    assert at_100.copies == 6 and at_100.decision == STABLE and len(at_100.barriers) == 15
    assert at_100.high < 0.02 and result.k_star == 100


def test_a_barrier_on_the_threshold_is_undecided_and_the_interval_widens():
    fake = Fake({0: 0.22, 25: 0.10, 100: 0.02, 500: 0.001}, spread={100: 0.01})
    result = search(GRID, fake, BUDGET, threshold=0.02)
    assert decisions(result)[100] == UNDECIDED
    assert [c for k, c in fake.calls if k == 100] == [3, 6, 9]  # up to the maximum, then stop
    assert result.undecided == [100]
    assert result.k_star == 500 and result.interval == (0, 500)  # 25 and 100 not shown either way
    assert "undecided at k = 100it" in result.summary()


def test_no_stable_candidate_is_said_plainly():
    result = search(GRID, Fake({k: 0.3 for k in GRID}), BUDGET, threshold=0.02)
    assert result.k_star is None and result.interval == (500, None)
    assert "no candidate was shown stable" in result.summary()


def test_a_budget_must_start_with_a_pair():
    with pytest.raises(ValueError):
        Budget(start=1, step=1, maximum=3)


THRESHOLD = 0.02
LADDER = Budget(start=3, step=1, maximum=9)  # find-k's default: 3 copies, one more, up to 9
SIMULATIONS = 20_000  # Monte Carlo error of a 5% rate: 0.15%


def simulated_barriers(seed: int) -> np.ndarray:
    """Pair barriers (simulation, copy, copy) of 9 copies whose mean is the threshold, 2%: each
    copy's place scales every pair it is in (log-normal, log-sd 0.4) and each pair has its own
    noise (log-normal, log-sd 0.25). The shapes of the default network's stored barriers (at a
    mean of 1.3%: most pairs near 1.2%, one in ten above 2%, one in a hundred near 3%)."""
    rng = np.random.default_rng(seed)
    shape = (SIMULATIONS, LADDER.maximum)
    place = np.exp(0.4 * rng.standard_normal(shape) - 0.4**2 / 2)
    noise = np.exp(0.25 * rng.standard_normal((*shape, LADDER.maximum)) - 0.25**2 / 2)
    return THRESHOLD * (place[:, :, None] + place[:, None, :]) / 2 * noise


def verdict_rates(bounds, barriers: np.ndarray) -> tuple[float, float]:
    """The rates of "stable" and "unstable" of simulated probes that add one copy at a time
    until `bounds` (pairs -> mean, low, high per row) decides, as find-k does."""
    verdict = np.full(len(barriers), UNDECIDED, dtype=object)
    for copies in LADDER.ladder():
        i, j = np.array(list(combinations(range(copies), 2))).T
        _, low, high = bounds(barriers[:, i, j])
        undecided = verdict == UNDECIDED
        verdict[undecided & (high < THRESHOLD)] = STABLE
        verdict[undecided & (low >= THRESHOLD)] = UNSTABLE
    return float(np.mean(verdict == STABLE)), float(np.mean(verdict == UNSTABLE))


def pairs_t(pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rule before: one-sided t-bounds at 95% over the pairs, each look at full level."""
    mean, n = pairs.mean(-1), pairs.shape[-1]
    half = t.ppf(0.95, n - 1) * pairs.std(-1, ddof=1) / math.sqrt(n)
    return mean, mean - half, mean + half


def allowed(confidence: float) -> float:
    """1 - confidence, plus three Monte Carlo standard errors of that rate."""
    alpha = 1 - confidence
    return alpha + 3 * math.sqrt(alpha * confidence / SIMULATIONS)


def test_the_rule_keeps_its_confidence_when_pairs_share_copies_and_copies_are_added():
    """At a mean barrier on the threshold (the worst case of both errors), "stable" (wrong: the
    mean is not below it) and "unstable" (wrong below it) are each said at most 5% of the time
    at confidence 0.95. Measured: 4.2% and 0.6% (20,000 simulated probes, seed 0). Not covered:
    rarer, worse copies (one in ten copies 4 to 7 times the others: "stable" 46% of the time);
    no rule can see a tail that 3 to 9 copies have not sampled."""
    stable, unstable = verdict_rates(Rule(0.95, len(LADDER.ladder())).batch, simulated_barriers(0))
    assert stable <= allowed(0.95) and unstable <= allowed(0.95)
    assert stable > 0.01  # calibrated, not merely never deciding


@pytest.mark.xfail(strict=True, reason="the pairs-t rule says 'stable' about half the time")
def test_the_pairs_t_rule_did_not_keep_its_confidence():
    """The rule before this one, on the same simulated probes: "stable" at a mean on the
    threshold 47.7% of the time and "unstable" 28.9%, against the 5% that "confidence 0.95"
    promised: its pairs share copies and it looked up to 7 times at the full level."""
    stable, unstable = verdict_rates(pairs_t, simulated_barriers(0))
    assert stable <= allowed(0.95) and unstable <= allowed(0.95)
