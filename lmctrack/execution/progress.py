"""Rich progress bars for long work: one bar per training (loss, accuracy, steps/s) or sweep."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

console = Console(stderr=True)


class SpeedColumn(ProgressColumn):
    """Steps per second, the number that tells whether training is fast."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} it/s" if speed else "", style="dim")


# A bar's fields and the metrics they show; a bare step update keeps the last ones shown.
_FIELDS = {"loss": "loss", "acc": "accuracy"}


class Board:
    """A set of progress bars; `update(task, step, metrics)` is cheap enough to call every 25 steps."""

    def __init__(self, progress: Progress | None) -> None:
        self._progress = progress
        self._tasks: dict[str, int] = {}

    def add(self, key: str, description: str, total: int, completed: int = 0) -> None:
        if self._progress is not None:
            self._tasks[key] = self._progress.add_task(
                description, total=total, completed=completed, loss=float("nan"), acc=float("nan")
            )

    def update(self, key: str, completed: int, metrics: dict[str, float] | None = None) -> None:
        if self._progress is None or key not in self._tasks:
            return
        fields = {f: metrics[m] for f, m in _FIELDS.items() if metrics and m in metrics}
        self._progress.update(self._tasks[key], completed=completed, **fields)

    def shown(self, key: str) -> dict[str, float] | None:
        """What the bar of `key` shows (None on a silent board): completed, loss and acc."""
        if self._progress is None or key not in self._tasks:
            return None
        task = next(t for t in self._progress.tasks if t.id == self._tasks[key])
        return {"completed": task.completed, **task.fields}

    def completed(self, key: str) -> float | None:
        """Where the bar of `key` stands (None on a silent board): what the user last saw."""
        shown = self.shown(key)
        return None if shown is None else shown["completed"]

    def advance(self, key: str, amount: int = 1) -> None:
        if self._progress is not None and key in self._tasks:
            self._progress.advance(self._tasks[key], amount)


@contextmanager
def board(enabled: bool = True, output: Console = console) -> Iterator[Board]:
    """A live progress display on stderr or on `output` (a benchmark's buffer); silent if disabled."""
    if not enabled:
        yield Board(None)
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f} acc {task.fields[acc]:.3f}"),
        SpeedColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=output,
        transient=False,
    )
    with progress:
        yield Board(progress)
