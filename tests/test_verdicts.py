"""The verdict rules, defined once in lmctrack.config.schema, and the sparse sweep's use of them:
stable, matching, within one std, the earliest k per sample and its median (Figure 9)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from lmctrack.config import schema
from lmctrack.config.params import Params
from lmctrack.config.schema import Stats
from lmctrack.results.paper import Fork, Pair, Trained, sparse_from_dict, to_dict
from lmctrack.workflows.sparse import summarize


def test_stable_and_matching_are_strict_thresholds():
    assert schema.stable(0.0199, 0.02) and not schema.stable(0.02, 0.02)
    assert schema.matching(0.0019, 0.002) and schema.matching(-0.01, 0.002)
    assert not schema.matching(0.002, 0.002) and not schema.matching(0.004, 0.003)


def test_within_one_std_of_the_dense_network():
    dense = Stats(mean=0.95, std=0.004, median=0.95, n=3)
    assert schema.within_one_std(Stats(0.947, 0.01, 0.947, 3), dense)
    assert not schema.within_one_std(Stats(0.945, 0.01, 0.945, 3), dense)


def test_earliest_k_is_where_the_verdict_starts_to_hold_for_good():
    assert schema.earliest([(0, False), (25, True), (100, True)]) == 25
    assert schema.earliest([(100, True), (0, False), (25, False)]) == 100
    assert schema.earliest([(0, True), (25, False), (100, True)]) == 100  # not at 0: it lapses
    assert schema.earliest([(0, False), (25, False)]) is None


def test_median_counts_samples_that_never_hold_as_latest():
    assert schema.median_or_none([0, 25, 100]) == 25
    assert schema.median_or_none([25, None, 100]) == 100
    assert schema.median_or_none([0, None, None]) is None
    assert schema.median_or_none([0, 100, None, None]) is None
    assert schema.median_or_none([0, 25, 100, None]) == pytest.approx(62.5)


def _pair(barrier: float) -> Pair:
    errors = [0.1, 0.1 + barrier, 0.1]
    return Pair(
        "a", "b", "reset", "same", [0, 0.5, 1], {"test": {"error": errors, "loss": [1, 1, 1]}}, {}
    )


def _fork(k: int, barriers: list[float], errors: list[float]) -> Fork:
    return Fork(
        "run",
        "src",
        None,
        k,
        100,
        [1, 2, 3],
        False,
        "reset",
        ["c1", "c2", "c3"],
        [_pair(b) for b in barriers],
        {},
        copy_errors=errors,
    )


def _ctx() -> SimpleNamespace:
    params = Params.model_validate({"instability": {"splits": ["test"]}})
    return SimpleNamespace(params=params, model_name="net_data", out=None)


def _trained(level: int = 3) -> Trained:
    return Trained("imp", 0, level, 0.512, "mask", "wt", 7, 0, 0.1)


def _at(k: int, barrier: float, error: float) -> tuple:
    """A sample at rewind step k: three copies with this error, every pair with this barrier."""
    return (0, k, _trained(), _fork(k, [barrier] * 3, [error] * 3))


def test_figure_9_takes_the_median_of_per_sample_earliest_k_not_of_barriers():
    """Three pairs, each stable at two of the three rewind steps, a different one unstable. The
    mean (and median) barrier is below 2% at every k, so "the median barrier first" would say
    stable from k = 0. Per sample the earliest k from which the pair stays stable are 100, 25 and
    never; their median is 100."""
    samples = [
        (0, 0, _trained(), _fork(0, [0.01, 0.03, 0.01], [0.1] * 3)),
        (0, 25, _trained(), _fork(25, [0.03, 0.01, 0.01], [0.1] * 3)),
        (0, 100, _trained(), _fork(100, [0.01, 0.01, 0.03], [0.1] * 3)),
    ]
    result = summarize(_ctx(), "run", samples, {0: Stats(0.9, 0.0, 0.9, 3)})
    assert all(r.stable for r in result.rows)
    (e,) = result.earliest
    assert e.stable_from_k == 100 and e.samples == 3


def test_copies_with_equal_errors_all_count_in_accuracy_and_matching():
    """Copy errors are multiples of 1/N on N test examples, so equal values are common; each copy
    is a sample (a set would merge them and skew the mean)."""
    samples = [(0, 100, _trained(), _fork(100, [0.0, 0.0, 0.0], [0.10, 0.10, 0.16]))]
    dense = {0: Stats(0.9, 0.0, 0.9, 3)}
    result = summarize(_ctx(), "run", samples, dense)
    (row,) = result.rows
    assert row.test_error.n == 3 and row.test_error.mean == pytest.approx(0.12)
    assert row.drop == pytest.approx(0.9 - 0.88) and not row.matching


def test_the_claim_is_decided_from_the_rows():
    dense = {0: Stats(0.9, 0.0, 0.9, 3)}
    good = [
        _at(0, 0.1, 0.2),
        _at(100, 0.0, 0.1),
    ]
    result = summarize(_ctx(), "run", good, dense)
    assert result.claim_holds is True and "yes" in result.claim and "{100it}" in result.claim
    bad = [
        _at(0, 0.1, 0.1),  # matching but unstable
        _at(100, 0.0, 0.1),
    ]
    result = summarize(_ctx(), "run", bad, dense)
    assert result.claim_holds is False and "no, because" in result.claim


def test_a_claim_that_holds_at_every_k_says_it_shows_no_contrast():
    dense = {0: Stats(0.9, 0.0, 0.9, 3)}
    flat = [
        _at(0, 0.0, 0.1),
        _at(100, 0.0, 0.1),
    ]
    result = summarize(_ctx(), "run", flat, dense)
    assert result.claim_holds is True and "trivially" in result.claim
    contrast = [
        _at(0, 0.1, 0.2),
        _at(100, 0.0, 0.1),
    ]
    assert "trivially" not in summarize(_ctx(), "run", contrast, dense).claim


def test_a_failed_claim_says_which_half_failed():
    """Matching but unstable breaks the abstract's claim (matching only where stable); stable
    but not matching (the paper's sparsity range III) breaks only its converse."""
    dense = {0: Stats(0.9, 0.0, 0.9, 3)}
    unstable_matching = [_at(0, 0.1, 0.1)]
    claim = summarize(_ctx(), "run", unstable_matching, dense).claim
    assert "matching only where stable (the abstract's claim): no" in claim.lower()
    assert "matching wherever stable: yes" in claim
    stable_not_matching = [_at(0, 0.0, 0.2)]
    claim = summarize(_ctx(), "run", stable_not_matching, dense).claim
    assert "matching only where stable (the abstract's claim): yes" in claim.lower()
    assert "matching wherever stable: no" in claim


def test_every_result_json_carries_its_headline_and_reads_back_without_it():
    """A fork's and a sparse sweep's JSON hold the barriers, their statistics and verdicts under
    the metric names; reading the JSON back (reuse) ignores them and rebuilds the same result."""
    fork = _fork(100, [0.01, 0.05, 0.03], [0.1] * 3)
    data = json.loads(json.dumps(to_dict(fork)))
    assert data["headline"]["test.error_barrier.mean"] == pytest.approx(0.03)
    assert data["headline"]["test.error_barrier.median"] == pytest.approx(0.03)
    assert (
        data["headline"]["test.error_barrier.n"] == 3 and data["headline"]["test.stable"] is False
    )
    assert [p["headline"]["test.error_barrier"] for p in data["pairs"]] == pytest.approx(
        [0.01, 0.05, 0.03]
    )
    assert data["definitions"]["error_barrier"] == schema.DEFINITIONS["error_barrier"]
    assert Fork.from_dict(data) == fork
    sweep = summarize(
        _ctx(), "run", [_at(0, 0.05, 0.1), _at(25, 0.01, 0.1)], {0: Stats(0.9, 0, 0.9, 3)}
    )
    data = json.loads(json.dumps(to_dict(sweep)))
    assert [r["headline"]["test.stable"] for r in data["rows"]] == [False, True]
    assert "imp.matching" in data["rows"][0]["headline"]
    assert sparse_from_dict(data) == sweep
