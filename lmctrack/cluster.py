"""Trainings as Ray tasks (`runner.backend: ray`): one task per TrainJob, on any Ray cluster.

Why Ray and not a scheduler of our own: a lab already runs one (a multi-GPU server, a cluster),
and Ray gives what a sweep needs: resources per task (fractional GPUs, so small networks share
one), retries of a task whose worker died, and an object store that ships the dataset once.

- The same `runner.run_job` runs inside the task as in a local worker process, with one thread
  per CPU asked for, so the same seeds give bit-identical weights on CPUs.
- The dataset is put in the object store once; each worker process unpacks it once and keeps it
  for the tasks it runs after that (Ray reuses worker processes).
- A worker killed mid-training (kill -9, a lost node) is retried up to MAX_RETRIES times; the
  retry resumes from the job's checkpoint when it reaches the same folder (the store's checkpoint
  folder on one machine, or a shared folder given as `checkpoints` on a cluster).
- Progress reaches the driver's board through a small actor the workers report to.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from lmctrack.config import RunnerConfig
from lmctrack.errors import LmcError
from lmctrack.progress import Board
from lmctrack.runner import JobResult, TrainJob, run_job

MAX_RETRIES = 3
POLL_SECONDS = 0.2
_datasets: dict[str, object] = {}  # per worker process: the dataset of the latest sweep


def _ray():
    try:
        import ray
    except ImportError:
        raise LmcError(
            'runner.backend=ray needs Ray; install it with pip install -e ".[cluster]"'
        ) from None
    return ray


def connect(address: str | None) -> str:
    """Join the cluster at `address` ('auto', 'host:port', 'ray://host:10001') or start a local
    Ray (None); a process already connected stays connected. Returns what was joined."""
    ray = _ray()
    if not ray.is_initialized():
        try:
            local = {"_node_ip_address": "127.0.0.1"} if address is None else {}  # loopback only
            ray.init(
                address=address,
                **local,
                include_dashboard=False if address is None else None,
                log_to_driver=False,
                configure_logging=False,
            )
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = address or "a local Ray"
            raise LmcError(
                f"cannot reach the Ray cluster at {where} ({str(e).splitlines()[0]}); start it "
                "with `ray start --head` or fix runner.address"
            ) from None
    return address or "a local Ray"


def _dataset(boxed: list):
    """The sweep's dataset in this worker process, fetched from the object store once."""
    ray = _ray()
    ref = boxed[0]
    if ref.hex() not in _datasets:
        _datasets.clear()
        _datasets[ref.hex()] = ray.get(ref)
    return _datasets[ref.hex()]


def _train(job: TrainJob, boxed: list, device: str, threads: int, reports) -> JobResult:
    """The body of one Ray task: the same run_job a local worker runs."""
    from lmctrack.train import deterministic

    torch.set_num_threads(threads)
    dev = torch.device(device)
    deterministic(dev)
    if job.checkpoint is not None:
        job.checkpoint.parent.mkdir(parents=True, exist_ok=True)  # a node that never saw it
    dataset = _dataset(boxed).to(dev)
    return run_job(job, dataset, dev, lambda s, m: reports.put.remote(job.key, s, m))


class _Reports:
    """Latest progress per training, reported by workers, collected by the driver."""

    def __init__(self) -> None:
        self._latest: dict[str, tuple[int, dict]] = {}

    def put(self, key: str, step: int, metrics: dict) -> None:
        self._latest[key] = (step, metrics)

    def drain(self) -> dict[str, tuple[int, dict]]:
        latest, self._latest = self._latest, {}
        return latest


def shared_checkpoint(job: TrainJob, folder: Path | None) -> TrainJob:
    """The job with its checkpoint moved into `folder` (a path every node mounts), keeping the
    key folder and file name, so a retry on another node resumes; None keeps the path."""
    if folder is None or job.checkpoint is None:
        return job
    return replace(job, checkpoint=folder / job.checkpoint.parent.name / job.checkpoint.name)


def run_on_ray(
    jobs: Sequence[TrainJob],
    dataset,
    board: Board,
    runner: RunnerConfig,
    checkpoints: Path | None = None,
) -> list[JobResult]:
    """Train every job as a Ray task with runner.cpus / runner.gpus each; results in order.

    Workers train on a GPU when runner.gpus > 0, else on their CPUs with int(runner.cpus)
    threads. A job that raises fails the sweep (its error is raised here, the others are
    cancelled); a job whose worker died more than MAX_RETRIES times fails with an LmcError.
    """
    ray = _ray()
    where = connect(runner.address)
    device = "cuda" if runner.gpus > 0 else "cpu"
    threads = max(1, int(runner.cpus))
    task = ray.remote(_train).options(
        num_cpus=runner.cpus,
        num_gpus=runner.gpus,
        max_retries=MAX_RETRIES,
        retry_exceptions=False,
    )
    reports = ray.remote(_Reports).options(num_cpus=0).remote()
    boxed = [ray.put(dataset.to("cpu"))]  # boxed: tasks get the reference, not the data
    print(
        f"runner.backend=ray: {len(jobs)} trainings on {where} "
        f"({runner.cpus:g} CPU, {runner.gpus:g} GPU each, on {device})",
        file=sys.stderr,
    )
    for job in jobs:
        board.add(job.key, job.label, total=job.stop, completed=job.start)
    pending = {
        task.remote(shared_checkpoint(job, checkpoints), boxed, device, threads, reports): i
        for i, job in enumerate(jobs)
    }
    results: dict[int, JobResult] = {}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_SECONDS)
            for key, (step, metrics) in ray.get(reports.drain.remote()).items():
                board.update(key, step, metrics)
            for ref in done:
                i = pending.pop(ref)
                results[i] = _result(ray, ref, jobs[i])
                board.update(jobs[i].key, jobs[i].stop)
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        ray.kill(reports)
    return [results[i] for i in range(len(jobs))]


def _result(ray, ref, job: TrainJob) -> JobResult:
    """The task's result; its own error raised as it is, a lost worker as an LmcError."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        raise e.cause from None
    except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError) as e:
        raise LmcError(
            f"training {job.label} lost its Ray worker {MAX_RETRIES + 1} times "
            f"({type(e).__name__}); check the workers' memory and logs, then re-run to resume"
        ) from None
