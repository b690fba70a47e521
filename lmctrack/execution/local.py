"""Run independent trainings (the copies of Algorithm 1, IMP branches, a sweep's inits) at once.

`runner.batch_copies` chooses how:
- "off" (default): one process per training. On a CPU each gets a forked process with one thread
  (small networks are bound by per-operation overhead: three copies on two cores take 0.6 of the
  sequential time, benchmarks/copies.py); forking shares the in-memory dataset. On a GPU the
  trainings run in spawned processes that share the device.
- "on" / "auto": jobs differing only in start weights, noise, mask and checkpoint train as one
  vmapped network here (lmctrack.engine.batched.train_copies); a group that cannot be stacked trains
  in processes with one printed line saying why. "auto" times PROBE_STEPS stacked steps against one
  copy and keeps the decision per network, batch size, group size and device (BATCHING_DECISIONS).
Process mode is bit-identical whatever the workers; stacked mode is bit-identical with itself and
equal to process mode to float tolerance. This is the local executor; `runner.backend: ray`
sends each training to a Ray cluster instead (lmctrack.execution.cluster), running the same bodies
(lmctrack.execution.job); lmctrack.execution.executor chooses.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace

import torch

from lmctrack.engine.train import deterministic
from lmctrack.errors import LmcError
from lmctrack.execution.job import JobResult, TrainJob, run_group, run_job
from lmctrack.execution.progress import Board

BATCH_MODES = ("auto", "on", "off")
PROBE_STEPS = 10
# (model, batch size, copies, device type) -> (stacked is faster, what was measured)
BATCHING_DECISIONS: dict[tuple, tuple[bool, str]] = {}


def _group_key(job: TrainJob) -> tuple:
    """What stacked copies must share: everything but start weights, noise, mask, checkpoint."""
    return (
        job.model.model_dump_json(),
        job.train.model_dump_json(),
        job.start,
        job.stop,
        job.schedule_total,
        job.eval_every,
        tuple(sorted(job.snapshot_steps)),
    )


def _stacking_problem(jobs: Sequence[TrainJob], dataset, device: torch.device) -> str | None:
    """Why these jobs cannot train stacked (None: they can); tried, not guessed, for vmap."""
    from lmctrack.engine.batched import checkpoint_step
    from lmctrack.engine.data import TensorDataset
    from lmctrack.engine.recipe import stacking_problem

    recipe = stacking_problem(jobs[0].train)
    if recipe is not None:
        return recipe
    if any(j.slots for j in jobs):
        return "they carry the optimizer state of Wk (instability.optimizer_state=carry)"
    if not isinstance(dataset, TensorDataset):
        return f"dataset {dataset.name} is streamed from disk; only in-memory data is stacked"
    steps = {checkpoint_step(j.checkpoint) for j in jobs}
    if len(steps) > 1:
        return f"their checkpoints are at different steps ({sorted(steps, key=str)})"
    try:
        run_group(_probe(jobs[:2], 1), dataset, device, [None, None])
    except (RuntimeError, NotImplementedError) as e:
        return f"vmap cannot run {jobs[0].model.name} on {device.type} ({str(e).splitlines()[0]})"
    return None


def _probe(jobs: Sequence[TrainJob], steps: int) -> list[TrainJob]:
    """The jobs shortened to `steps` steps, leaving nothing on disk."""
    return [
        replace(j, stop=j.start + steps, checkpoint=None, snapshot_steps=(), eval_every=None)
        for j in jobs
    ]


def _stacking_pays(jobs: Sequence[TrainJob], dataset, device: torch.device) -> tuple[bool, str]:
    """auto: PROBE_STEPS steps stacked vs one copy alone, scaled to what processes achieve."""
    job = jobs[0]
    key = (job.model.model_dump_json(), job.train.batch_size, len(jobs), device.type)
    if key not in BATCHING_DECISIONS:
        probe = _probe(jobs, PROBE_STEPS)
        parallel = min(len(jobs), usable_cores()) if device.type == "cpu" else 1
        stacked = alone = float("inf")
        for _ in range(2):  # the second round runs warm
            results = run_group(probe, dataset, device, [None] * len(probe))
            stacked = min(stacked, results[0].seconds)
            alone = min(alone, run_job(probe[0], dataset, device, None).seconds)
        processes = alone * len(jobs) / parallel
        BATCHING_DECISIONS[key] = (
            stacked < processes,
            f"{PROBE_STEPS} steps of {len(jobs)} copies stacked took {stacked:.3f} s, "
            f"in processes about {processes:.3f} s",
        )
    return BATCHING_DECISIONS[key]


def stacked_groups(
    jobs: Sequence[TrainJob], dataset, device: torch.device, mode: str
) -> list[list[int]]:
    """Indices of the jobs to train stacked, group by group; printing why a group is not."""
    if mode not in BATCH_MODES:
        raise LmcError(f"runner.batch_copies='{mode}' is not known; use one of: auto, on, off")
    if mode == "off":
        return []
    by_key: dict[tuple, list[int]] = {}
    for i, job in enumerate(jobs):
        by_key.setdefault(_group_key(job), []).append(i)
    groups = []
    for group in (g for g in by_key.values() if len(g) > 1):
        members = [jobs[i] for i in group]
        name = f"{len(group)} copies of {members[0].model.name} ({members[0].label}, ...)"
        problem = _stacking_problem(members, dataset, device)
        if problem is None and mode == "auto":
            pays, measured = _stacking_pays(members, dataset, device)
            print(f"batch_copies=auto: {name} {'stacked' if pays else 'in processes'}: {measured}")
            problem = None if pays else "measured slower"
        elif problem is not None:
            print(f"batch_copies={mode}: {name} train in processes: {problem}")
        if problem is None:
            groups.append(group)
    return groups


_worker: dict = {}


def _init_worker(dataset, device: str, reports) -> None:
    # A forked worker inherits the parent's sys.stdout/stderr, which a live rich display has
    # redirected to its console: writing there from a child could block on a lock that the
    # parent's refresh thread held at fork time, and would draw stray copies of the display.
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    deterministic(torch.device(device))  # a spawned CUDA worker, before it touches the GPU
    torch.set_num_threads(1)
    _worker.update(dataset=dataset.to(device), device=torch.device(device), reports=reports)


def _run_in_worker(job: TrainJob) -> JobResult:
    reports = _worker["reports"]
    return run_job(
        job, _worker["dataset"], _worker["device"], lambda s, m: reports.put((job.key, s, m))
    )


def _call_in_worker(task: tuple[Callable, tuple]) -> object:
    fn, args = task
    return fn(_worker["dataset"], _worker["device"], *args)


def map_in_processes(fn: Callable, calls: Sequence[tuple], dataset, device: torch.device) -> list:
    """fn(dataset, device, *call) for every call, in forked CPU processes (one thread each, like
    the trainings) when there are several: the same results, in order, as one after another."""
    workers = default_workers(len(calls), device)
    if device.type != "cpu" or workers < 2:
        return [fn(dataset, device, *call) for call in calls]
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=mp.get_context("fork"),
        initializer=_init_worker,
        initargs=(dataset, str(device), None),
    ) as pool:
        return list(pool.map(_call_in_worker, [(fn, call) for call in calls]))


def usable_cores() -> int:
    """The cores this process may run on (a container's or scheduler's CPU set, not the host's)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_workers(jobs: int, device: torch.device) -> int:
    """One process per core, except when a few more jobs than cores would leave a half-empty
    last round: then one process per job, sharing the cores in a single round.

    With 2 cores, 3 equal jobs on 3 workers finish in 3/4 of the time of 2 workers; but 6 or 12
    on 5 workers cost a quarter more CPU than on 2 (interpolations most: caches thrash), so
    oversubscribing pays only for the tail (benchmarks/README.md).
    """
    if device.type == "cuda":
        return min(jobs, 4)
    cores = usable_cores()
    if cores < jobs <= 2 * cores and jobs % cores:
        return jobs
    return max(1, min(jobs, cores))


def run_jobs(
    jobs: Sequence[TrainJob],
    dataset,
    device: torch.device,
    board: Board,
    workers: int | None = None,
    batch_copies: str = "off",
) -> list[JobResult]:
    """Train all jobs, concurrently when there is more than one; results in the jobs' order.

    batch_copies: "off" (processes), "on" (stack every group that can be), "auto" (stack a group
    when measured faster); see the module docstring.
    """
    for job in jobs:
        board.add(job.key, job.label, total=job.stop, completed=job.start)
    results: dict[int, JobResult] = {}
    for group in stacked_groups(jobs, dataset, device, batch_copies):
        members = [jobs[i] for i in group]
        reports = [lambda s, m, k=j.key: board.update(k, s, m) for j in members]
        results.update(zip(group, run_group(members, dataset, device, reports), strict=True))
    rest = [i for i in range(len(jobs)) if i not in results]
    separate = _run_separately([jobs[i] for i in rest], dataset, device, board, workers)
    results.update(zip(rest, separate, strict=True))
    return [results[i] for i in range(len(jobs))]


def _run_separately(
    jobs: Sequence[TrainJob], dataset, device: torch.device, board: Board, workers: int | None
) -> list[JobResult]:
    """One training per process (or in this process, for one job or one worker)."""
    if not jobs:
        return []
    workers = workers or default_workers(len(jobs), device)
    if len(jobs) == 1 or workers == 1:
        return [
            run_job(job, dataset, device, lambda s, m, k=job.key: board.update(k, s, m))
            for job in jobs
        ]
    # CUDA cannot be used in a forked child
    ctx = mp.get_context("spawn" if device.type == "cuda" else "fork")
    reports = ctx.Queue()
    stop = threading.Event()

    def pump() -> None:
        while True:
            try:
                key, step, metrics = reports.get(timeout=0.1)
            except queue.Empty:
                if stop.is_set():
                    return
                continue
            board.update(key, step, metrics)

    listener = threading.Thread(target=pump, daemon=True)
    listener.start()
    try:
        with ProcessPoolExecutor(
            max_workers=workers,
            mp_context=ctx,
            initializer=_init_worker,
            initargs=(dataset, str(device), reports),
        ) as pool:
            return list(pool.map(_run_in_worker, jobs))
    finally:
        stop.set()
        listener.join()
