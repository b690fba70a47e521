"""Where trainings and a sweep's analyses run, chosen once from params' `runner.backend`: on this
machine (local processes or stacked copies, lmctrack.execution.local) or as Ray tasks
(lmctrack.execution.cluster).

Both run the same bodies (lmctrack.execution.job, a workflow's module-level functions) and give
results in the order asked; a workflow asks its context's executor and never the backend.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from lmctrack.config.params import RunnerConfig

if TYPE_CHECKING:
    import torch

    from lmctrack.execution.job import JobResult, TrainJob
    from lmctrack.execution.progress import Board


class Executor(Protocol):
    def train(
        self,
        jobs: Sequence[TrainJob],
        dataset,
        device: torch.device,
        board: Board,
        checkpoints: Path | None = None,
    ) -> list[JobResult]:
        """Train every job (independent of one another); results in the jobs' order.
        `checkpoints`: a folder every node reaches, where resume files move (Ray)."""
        ...

    def map(
        self, fn: Callable, calls: Sequence[tuple], dataset, device: torch.device, what: str
    ) -> list:
        """fn(dataset, device, *call) for every call (`what` names them in errors); in order."""
        ...

    def warm_up(self) -> None:
        """Start the workers' imports while this process does its own (nothing locally)."""
        ...


@dataclass
class Local:
    """This machine: one process per training or stacked copies (runner.batch_copies)."""

    runner: RunnerConfig

    def train(self, jobs, dataset, device, board, checkpoints=None) -> list[JobResult]:
        from lmctrack.execution.local import run_jobs

        return run_jobs(jobs, dataset, device, board, batch_copies=self.runner.batch_copies)

    def map(self, fn, calls, dataset, device, what: str) -> list:
        from lmctrack.execution.local import map_in_processes

        return map_in_processes(fn, calls, dataset, device)

    def warm_up(self) -> None:
        return None


@dataclass
class Ray:
    """A Ray cluster (runner.address): each training or call a task of runner.cpus / gpus."""

    runner: RunnerConfig

    def train(self, jobs, dataset, device, board, checkpoints=None) -> list[JobResult]:
        from lmctrack.execution.cluster import run_on_ray

        return run_on_ray(jobs, dataset, board, self.runner, checkpoints)

    def map(self, fn, calls, dataset, device, what: str) -> list:
        from lmctrack.execution.cluster import map_on_ray

        return map_on_ray(fn, calls, dataset, self.runner, what) if calls else []

    def warm_up(self) -> None:
        from lmctrack.execution.cluster import warm_up

        warm_up(self.runner)


def executor(runner: RunnerConfig) -> Executor:
    """The one place the backend is decided."""
    return Ray(runner) if runner.backend == "ray" else Local(runner)
