"""How many worker processes a batch of equal jobs should get (runner.default_workers).

Two batches of the default network (params.yaml): 2 x cores interpolation paths (30 alphas, train
and test, bn=reset; map_in_processes) and 2 x cores trainings of 300 iterations (run_jobs), each
on one process per core vs 2 x cores + 1 processes (the previous rule), interleaved. Prints wall
and child-CPU medians and the ratio oversubscribed / one per core (> 1: oversubscribing is slower).

    python benchmarks/workers.py [--repeats R]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from collections.abc import Callable

import torch
from common import default_params, interleaved, machine, median_ratio

import lmctrack.execution.local as runner
from lmctrack.engine.data import load_dataset
from lmctrack.engine.models import build_model
from lmctrack.engine.state import State
from lmctrack.engine.train import Noise
from lmctrack.execution.progress import board
from lmctrack.workflows.paths import PathSettings, path_between

CPU = torch.device("cpu")


def measured(fn: Callable[[int], object], workers: int, cpu: list[float]) -> Callable[[], float]:
    """Wall seconds of fn(workers); the children's CPU seconds go to `cpu`."""

    def run() -> float:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        began = time.perf_counter()
        fn(workers)
        wall = time.perf_counter() - began
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        return wall

    return run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    params = default_params()
    data = load_dataset(params.data)
    cores = runner.usable_cores()
    n = 2 * cores
    states = [
        State(build_model(params.model, data.num_classes, data.input_shape, s).state_dict())
        for s in range(n + 1)
    ]
    settings = PathSettings(params.model, params.instability)
    calls = [(settings, states[i], states[i + 1]) for i in range(n)]
    jobs = [
        runner.TrainJob(f"j{s}", f"j{s}", params.model, params.train, Noise(s, s), 0, 300)
        for s in range(n)
    ]

    def paths(workers: int) -> None:
        runner.default_workers = lambda *_: workers
        runner.map_in_processes(path_between, calls, data, CPU)

    def trainings(workers: int) -> None:
        with board(enabled=False) as quiet:
            runner.run_jobs(jobs, data, CPU, quiet, workers=workers)

    print(machine())
    for name, fn in (("interpolation paths", paths), ("trainings of 300 it", trainings)):
        cpu_one, cpu_over = [], []
        one, over = interleaved(
            measured(fn, cores, cpu_one), measured(fn, 2 * cores + 1, cpu_over), args.repeats
        )
        print(
            f"{n} {name}: {cores} workers {statistics.median(one):.1f} s wall, "
            f"{statistics.median(cpu_one):.1f} s CPU; {2 * cores + 1} workers "
            f"{statistics.median(over):.1f} s wall, {statistics.median(cpu_over):.1f} s CPU; "
            f"ratio (oversubscribed / one per core) wall {median_ratio(over, one):.2f}, "
            f"CPU {median_ratio(cpu_over, cpu_one):.2f}"
        )


if __name__ == "__main__":
    main()
