"""The bookkeeping around an algorithm, kept out of it: claim its units of work, reuse the
finished ones, open a run for each of the others, and record each result on its run.

An algorithm (Algorithm 1's `forks`, Algorithm 2's `imps`) names its units of work (each with a
key, a label and the states it reads), then computes only `todo`; `finish` records a result, and
`results` answers every unit in order, reused or computed. Every key stays claimed until the
block ends, so an identical request made at the same time waits, then reuses the results.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Generic, Protocol, TypeVar

from lmctrack.results.paper import to_dict
from lmctrack.workflows import jobs
from lmctrack.workflows.common import Context


class Unit(Protocol):
    """A unit of work: its key, its run's label and params, the keys it claims and the states it
    reads."""

    key: str
    label: str
    params: dict

    @property
    def claims(self) -> list[str]: ...

    @property
    def inputs(self) -> list[str]: ...


U = TypeVar("U", bound=Unit)
R = TypeVar("R")


class Book(Generic[U, R]):
    """The units still to compute, their runs (opened on first use) and every unit's result."""

    def __init__(
        self, ctx: Context, units: Sequence[U], kind: str, artifact: str, stack, parent=None
    ) -> None:
        self.ctx, self.units, self.kind, self.artifact = ctx, list(units), kind, artifact
        self._stack, self._runs, self.parent = stack, {}, parent
        self.done: dict[str, R | None] = {}
        self.todo: list[U] = []

    def run(self, unit: U):
        """The run that records `unit` (tagged with its key and kind, its params and inputs
        logged), nested under the book's parent run (a sweep's) if any."""
        if unit.key not in self._runs:
            recorded = jobs.recorded(
                self.ctx,
                unit.label,
                key=unit.key,
                kind=self.kind,
                parent=self.parent,
                params=unit.params,
                inputs=unit.inputs,
            )
            self._runs[unit.key] = self._stack.enter_context(recorded)
        return self._runs[unit.key]

    def finish(self, unit: U, result: R) -> R:
        """Record `result` on the unit's run, where a later identical request reuses it."""
        self.run(unit).log_json(to_dict(result), self.artifact)
        self.done[unit.key] = result
        return result

    @property
    def results(self) -> list[R]:
        return [self.done[unit.key] for unit in self.units]


def note_reused(run, results: dict[str, Sequence]) -> None:
    """Link, in a sweep run's description, the runs it reused (`results` by kind, each with
    run_id, k and reused): they are nested under the request that made them, not this one."""
    reused = [
        (f"{kind} k={r.k}", r.run_id) for kind, done in results.items() for r in done if r.reused
    ]
    note_links(run, "Reused runs (made by an earlier request):", reused)


def note_links(run, heading: str, runs: Sequence[tuple[str, str]]) -> None:
    """The run's description: `heading` and a link to each (label, run id) of its experiment,
    for runs a person should reach from this one but that are not nested under it."""
    if runs:
        links = [f"- [{label}](#/experiments/{run.experiment_id}/runs/{i})" for label, i in runs]
        run.note(heading + "\n\n" + "\n".join(links))


@contextmanager
def work(
    ctx: Context, units: Sequence[U], *, kind: str, artifact: str, result: type[R], parent=None
) -> Iterator[Book[U, R]]:
    """Claim every unit's keys, read back the finished ones (`result` from `artifact`), and open
    the others' runs as they are used (nested under `parent`, a sweep's run, if given); the runs
    close (and the claims go) when the block ends."""
    with jobs.claimed(ctx, [key for unit in units for key in unit.claims]), ExitStack() as stack:
        book: Book[U, R] = Book(ctx, units, kind, artifact, stack, parent)
        book.done = {unit.key: jobs.reused(ctx, unit.key, artifact, result) for unit in units}
        book.todo = [unit for unit in units if book.done[unit.key] is None]
        yield book
