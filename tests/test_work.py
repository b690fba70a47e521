"""The bookkeeping an algorithm does not see (workflows.work): claims, reuse, runs, records, on a
real sqlite store."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from lmctrack.config import schema
from lmctrack.results.paper import Flat
from lmctrack.workflows.work import work


@dataclass
class Unit:
    key: str
    label: str
    inputs: list[str] = field(default_factory=list)
    params: dict = field(default_factory=dict)

    @property
    def claims(self) -> list[str]:
        return [self.key, f"{self.key}-part"]


@dataclass
class Answer(Flat):
    key: str
    value: float
    reused: bool = False


def test_work_computes_only_what_is_not_finished_and_records_it(new_project):
    ctx = new_project("work").context()
    units = [Unit("a" * 16, "unit a"), Unit("b" * 16, "unit b")]
    first = dict(kind=schema.KIND_FORK, artifact="answer.json", result=Answer)
    with work(ctx, units[:1], **first) as book:
        assert book.todo == units[:1]
        run = book.run(units[0])
        assert book.run(units[0]) is run  # one run per unit, opened on first use
        book.finish(units[0], Answer(units[0].key, 0.25))
    assert ctx.store.find_run(ctx.model_name, units[0].key) == run.id
    with work(ctx, units, **first) as book:
        assert book.todo == units[1:]  # the first unit's recorded answer is read back
        book.finish(units[1], Answer(units[1].key, 0.5))
    assert book.results == [Answer(units[0].key, 0.25, True), Answer(units[1].key, 0.5)]


def test_a_failed_unit_is_not_reused(new_project):
    ctx = new_project("work_failed").context()
    unit = Unit("c" * 16, "unit c")
    with (
        pytest.raises(RuntimeError),
        work(ctx, [unit], kind=schema.KIND_FORK, artifact="answer.json", result=Answer) as book,
    ):
        book.run(unit)
        raise RuntimeError("killed mid-work")
    with work(ctx, [unit], kind=schema.KIND_FORK, artifact="answer.json", result=Answer) as book:
        assert book.todo == [unit]
        book.finish(unit, Answer(unit.key, 1.0))
    assert book.results == [Answer(unit.key, 1.0)]
