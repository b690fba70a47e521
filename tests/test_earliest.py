"""The search for the earliest stable rewind step (lmctrack.engine.earliest), driven by fake barrier
functions: monotone, non-monotone (the violation is reported), noisy (copies are added) and a
barrier on the threshold (undecided, said so)."""

from __future__ import annotations

import math

import pytest

from lmctrack.engine.earliest import (
    CHECK,
    STABLE,
    UNDECIDED,
    UNSTABLE,
    Budget,
    bounds,
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
        d = self.spread.get(k, 0.001)
        return [self.mean[k] + d * (-1) ** i for i in range(pairs)]


def decisions(result) -> dict[int, str]:
    return {p.k: p.decision for p in result.probes}


def test_bounds_are_the_one_sided_student_t_bounds_of_the_mean():
    mean, low, high = bounds([0.01, 0.02, 0.03], 0.95)
    assert mean == pytest.approx(0.02)
    half = 2.919986 * 0.01 / math.sqrt(3)  # t at 0.95 with 2 degrees of freedom: one-sided
    assert (high - mean, mean - low) == (
        pytest.approx(half, rel=1e-5),
        pytest.approx(half, rel=1e-5),
    )
    assert bounds([0.5], 0.95)[1:] == (-math.inf, math.inf)  # one sample decides nothing
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
    # at k = 100 the mean is 1.0% with a +-1.5% pair spread: 3 pairs straddle 2%, more decide
    fake = Fake({0: 0.22, 25: 0.10, 100: 0.010, 500: 0.001}, spread={100: 0.015})
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
