"""Concurrent copies: three copies of W0 (the default network, params.yaml) trained under their own
SGD noise by lmctrack.execution.local.run_jobs, concurrently (forked single-thread workers) and one
after another in this process (one thread, as the engine uses), interleaved. Target on a 2-core CPU:
concurrent/sequential wall time <= 0.6; the copies' weights must be bit-identical between modes.

The concurrent runs happen under a live rich progress board (its refresh thread running while the
workers fork), the setting of `lmctrack fork` in a terminal; the board must see every copy finish.

    python benchmarks/copies.py [--quick] [--steps N] [--repeats R]
"""

from __future__ import annotations

import argparse
import importlib
import io
import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch
from common import default_params, interleaved, machine, median_ratio, timed
from rich.console import Console

from lmctrack.config.params import Params
from lmctrack.engine.data import TensorDataset, load_dataset
from lmctrack.engine.models import build_model
from lmctrack.engine.train import Noise
from lmctrack.execution.local import JobResult, TrainJob, default_workers, run_jobs, usable_cores
from lmctrack.execution.progress import Board, board

COPIES = 3
CPU = torch.device("cpu")


def copy_jobs(params: Params, data: TensorDataset, steps: int) -> list[TrainJob]:
    """Copies of W0 with noise seeds 0, 1, 2: Algorithm 1 at k = 0."""
    w0 = build_model(params.model, data.num_classes, data.input_shape, params.seeds.init)
    return [
        TrainJob(
            key=f"copy{seed}",
            label=f"copy seed={seed}",
            model=params.model,
            train=params.train,
            noise=Noise(seed, seed),
            start=0,
            stop=steps,
            weights=w0.state_dict(),
        )
        for seed in range(COPIES)
    ]


@dataclass
class Sample:
    """One run of the copies: wall time, CPU time of this process and its workers, the weights."""

    wall: float
    cpu: float
    results: list[JobResult]


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the pool joins its workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def measure(run: Callable[[], list[JobResult]]) -> Sample:
    cpu = cpu_seconds()
    wall, results = timed(run)
    return Sample(wall, cpu_seconds() - cpu, results)


def concurrent(jobs: list[TrainJob], data: TensorDataset) -> Sample:
    """Forked workers under lmctrack's live board, drawn as on a terminal (into a buffer)."""
    screen = Console(file=io.StringIO(), force_terminal=True, width=120)
    with board(output=screen) as live:
        sample = measure(lambda: run_jobs(jobs, data, CPU, live))
        for job in jobs:
            assert live.completed(job.key) == job.stop, f"the board lost {job.label}'s last report"
    return sample


def sequential(jobs: list[TrainJob], data: TensorDataset) -> Sample:
    return measure(lambda: run_jobs(jobs, data, CPU, Board(None), workers=1))


def stacked(jobs: list[TrainJob], data: TensorDataset) -> Sample:
    """The copies as one vmapped network in this process (runner.batch_copies = on)."""
    return measure(lambda: run_jobs(jobs, data, CPU, Board(None), batch_copies="on"))


def identical(a: list[JobResult], b: list[JobResult]) -> bool:
    return all(
        torch.equal(x.weights[name], y.weights[name])
        for x, y in zip(a, b, strict=True)
        for name in x.weights
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few steps: a smoke run")
    parser.add_argument("--steps", type=int, help="steps per copy (default: params.yaml's T)")
    parser.add_argument("--repeats", type=int, help="interleaved pairs of runs (default 3)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(machine())
    params = default_params()
    data = load_dataset(params.data)
    steps = args.steps or (
        300
        if args.quick
        else params.train.steps.iterations(data.iterations_per_epoch(params.train.batch_size))
    )
    jobs = copy_jobs(params, data, steps)
    repeats = args.repeats or 3
    importlib.import_module("torch._dynamo")  # every optimizer imports it: warm both modes alike

    samples: dict[str, list[Sample]] = {"concurrent": [], "sequential": [], "stacked": []}

    def timed_mode(mode: Callable[[list[TrainJob], TensorDataset], Sample]) -> Callable[[], float]:
        def once() -> float:
            sample = mode(jobs, data)
            samples[mode.__name__].append(sample)
            return sample.wall

        return once

    together, apart = interleaved(timed_mode(concurrent), timed_mode(sequential), repeats)
    used = statistics.median(s.cpu / s.wall for s in samples["concurrent"])
    print(
        f"concurrent/sequential wall time: {median_ratio(together, apart):.2f} "
        f"(concurrent {statistics.median(together):.1f} s with "
        f"{default_workers(COPIES, CPU)} workers, sequential {statistics.median(apart):.1f} s; "
        f"{COPIES} copies x {steps} steps, medians of {repeats} interleaved pairs)"
    )
    print(
        f"cores the concurrent runs got: {used:.2f} of {usable_cores()} (CPU time / wall time; "
        "below the core count, other work held the rest)"
    )
    batched, alone = interleaved(timed_mode(stacked), timed_mode(sequential), repeats)
    print(
        f"stacked/sequential wall time: {median_ratio(batched, alone):.2f} "
        f"(stacked {statistics.median(batched):.1f} s in one process, sequential "
        f"{statistics.median(alone):.1f} s; medians of {repeats} interleaved pairs)"
    )
    worst = max(
        float((x.weights[k] - y.weights[k]).abs().max())
        for x, y in zip(samples["stacked"][0].results, samples["sequential"][0].results)
        for k in x.weights
    )
    print(f"stacked vs sequential weights: largest difference {worst:.1e} (float tolerance)")
    runs = [s.results for s in samples["concurrent"] + samples["sequential"]]
    same = all(identical(runs[0], other) for other in runs[1:])
    print(f"copies bit-identical across modes and repeats: {'yes' if same else 'NO'}")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
