"""Run independent trainings (the copies of Algorithm 1, IMP branches, a sweep's inits) at once.

On a CPU each training gets its own forked process with one thread: small networks are bound by
per-operation overhead, so N single-threaded processes beat one process with N threads (three
copies on two cores take 0.6 of the time of training them one after another:
benchmarks/copies.py). Forking shares the in-memory dataset without copying it. On a GPU the trainings run in spawned processes
that share the device. Same seeds give bit-identical weights in either mode.
"""

from __future__ import annotations

import importlib
import multiprocessing as mp
import os
import queue
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lmctrack.config import ModelConfig, TrainConfig
from lmctrack.progress import Board
from lmctrack.state import Mask
from lmctrack.train import Noise, train

Weights = dict[str, torch.Tensor]


@dataclass
class TrainJob:
    """One training: from `weights` (or a fresh init from `init_seed`) at `start` to `stop`."""

    key: str
    label: str
    model: ModelConfig
    train: TrainConfig
    noise: Noise
    start: int
    stop: int
    init_seed: int = 0
    weights: Weights | None = None
    mask: Mask | None = None
    snapshot_steps: Sequence[int] = ()
    eval_every: int | None = None
    checkpoint: Path | None = None
    schedule_total: int | None = None


@dataclass
class JobResult:
    weights: Weights
    snapshots: dict[int, Weights] = field(default_factory=dict)
    evaluations: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0
    resumed_from: int | None = None


def load_snapshots(folder: Path) -> dict[int, Weights]:
    """Snapshots an interrupted job already took (its checkpoint folder keeps them)."""
    return {
        int(path.stem.split("_")[1]): load_file(str(path))
        for path in sorted(folder.glob("snapshot_*.safetensors"))
    }


def _cpu_weights(model: torch.nn.Module) -> Weights:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def run_job(
    job: TrainJob, dataset, device: torch.device, report: Callable[[int, dict], None] | None
) -> JobResult:
    """Build the network, train it, and return its final weights and snapshots (on the CPU)."""
    from lmctrack.evaluate import evaluate
    from lmctrack.models import build_model

    model = build_model(job.model, dataset.num_classes, dataset.input_shape, job.init_seed)
    if job.weights is not None:
        model.load_state_dict(job.weights)
    model.to(device)
    result = JobResult(weights={})
    if job.checkpoint is not None:
        result.snapshots = load_snapshots(job.checkpoint.parent)

    def snapshot(step: int, net: torch.nn.Module) -> None:
        result.snapshots[step] = _cpu_weights(net)
        if job.checkpoint is not None:
            job.checkpoint.parent.mkdir(parents=True, exist_ok=True)
            save_file(
                result.snapshots[step], str(job.checkpoint.parent / f"snapshot_{step}.safetensors")
            )

    def evaluate_fn(net: torch.nn.Module, step: int) -> dict[str, float]:
        test = evaluate(net, dataset, "test", device=device)
        train_eval = evaluate(
            net, dataset, "train", device=device, limit=dataset.num_examples("test")
        )
        return {
            "test_loss": test.loss,
            "test_error": test.error,
            "train_loss": train_eval.loss,
            "train_error": train_eval.error,
        }

    log = train(
        model,
        dataset,
        job.train,
        start=job.start,
        stop=job.stop,
        noise=job.noise,
        mask=job.mask,
        device=device,
        at_steps=job.snapshot_steps,
        on_step=snapshot,
        eval_every=job.eval_every,
        evaluate_fn=evaluate_fn,
        checkpoint=job.checkpoint,
        progress=report,
        schedule_total=job.schedule_total,
    )
    result.weights = _cpu_weights(model)
    result.evaluations = log.evaluations
    result.seconds = log.seconds
    result.steps = log.steps
    result.resumed_from = log.resumed_from
    return result


# --- worker processes -------------------------------------------------------------------------

_worker: dict = {}


def _init_worker(dataset, device: str, reports) -> None:
    # A forked worker inherits the parent's sys.stdout/stderr, which a live rich display has
    # redirected to its console: writing there from a child could block on a lock that the
    # parent's refresh thread held at fork time, and would draw stray copies of the display.
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    torch.set_num_threads(1)
    _worker.update(dataset=dataset.to(device), device=torch.device(device), reports=reports)


def _run_in_worker(job: TrainJob) -> JobResult:
    reports = _worker["reports"]
    return run_job(
        job, _worker["dataset"], _worker["device"], lambda s, m: reports.put((job.key, s, m))
    )


def usable_cores() -> int:
    """The cores this process may run on (a container's or scheduler's CPU set, not the host's)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_workers(jobs: int, device: torch.device) -> int:
    """Enough processes to keep every core busy when the jobs come in rounds.

    More processes than cores: with equal jobs, 2 workers on 2 cores finish 3 jobs in two rounds
    (the second on one core), 3 workers share both cores throughout and finish in 3/4 the time.
    """
    if device.type == "cuda":
        return min(jobs, 4)
    return max(1, min(jobs, 2 * usable_cores() + 1))


def run_jobs(
    jobs: Sequence[TrainJob],
    dataset,
    device: torch.device,
    board: Board,
    workers: int | None = None,
) -> list[JobResult]:
    """Train all jobs, concurrently when there is more than one; results in the jobs' order."""
    for job in jobs:
        board.add(job.key, job.label, total=job.stop, completed=job.start)
    workers = workers or default_workers(len(jobs), device)
    if len(jobs) == 1 or workers == 1:
        return [
            run_job(job, dataset, device, lambda s, m, k=job.key: board.update(k, s, m))
            for job in jobs
        ]
    if device.type == "cuda":
        ctx = mp.get_context("spawn")  # CUDA cannot be used in a forked child
    else:
        ctx = mp.get_context("fork")
        # Creating any optimizer imports torch._dynamo (seconds of CPU); imported once here, the
        # forked workers inherit it instead of each importing it again at the same time.
        importlib.import_module("torch._dynamo")
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
