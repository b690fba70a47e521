"""Trainings and a sweep's analyses as Ray tasks (`runner.backend: ray`), on any Ray cluster.

Why Ray and not a scheduler of our own: a lab already runs one (a multi-GPU server, a cluster),
and Ray gives what a sweep needs: resources per task (fractional GPUs, so small networks share
one), retries of a task whose worker died, and an object store that ships the dataset once.

- The same `training_job.run_job` runs inside a training task as in a local worker process,
  with one thread per CPU asked for, so the same seeds give bit-identical weights on CPUs;
  `map_on_ray` runs any other function that reads the dataset the same way (the
  interpolations of a sweep). lmctrack.execution.executor chooses between this and the local runner.
- The dataset is put in the object store once per driver; each worker process unpacks it once
  and keeps it for the tasks it runs after that (Ray reuses worker processes).
- A worker killed mid-task (kill -9, a lost node) is retried up to MAX_RETRIES times; a
  training's retry resumes from its checkpoint when it reaches the same folder (the store's
  checkpoint folder on one machine, or a shared folder given as `checkpoints` on a cluster).
- A command that trains connects first and has the workers import torch and lmctrack while
  the driver imports its own (warm_up): a Ray job's workers are fresh processes, and their
  imports would otherwise start only with the first tasks, after the driver's.
- Progress reaches the driver's board through one small actor per driver, which the workers
  report to. Every actor is a process of its own: this module imports neither torch nor the
  rest of lmctrack at its top, so that the actor's process starts without them.
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmctrack.errors import LmcError

if TYPE_CHECKING:
    from lmctrack.config.params import RunnerConfig
    from lmctrack.execution.job import JobResult, TrainJob
    from lmctrack.execution.progress import Board

MAX_RETRIES = 3
RAY_AUTH_VARIABLES = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
POLL_SECONDS = 0.2
WARM_TASKS = 16  # at most this many workers warmed up before a command's first tasks
_datasets: dict[tuple[str, str], object] = {}  # per worker: the latest dataset, on its device
_driver: dict[str, Any] = {}  # per driver and Ray job: the progress relay, the dataset put


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
        if address is None and not any(k in os.environ for k in RAY_AUTH_VARIABLES):
            # Ray's default token authentication, with a token this process tree alone holds:
            # the one Ray would write to ~/.ray/auth_token turns on token authentication in every
            # later `ray start --head` there, which then refuses drivers that lack it.
            os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(16)
        try:
            local = {"_node_ip_address": "127.0.0.1"} if address is None else {}  # loopback only
            ray.init(
                address=address,
                **local,
                include_dashboard=False if address is None else None,
                log_to_driver=False,
                configure_logging=False,
            )
        except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as e:
            where = address or "a local Ray"
            if isinstance(e, ray.exceptions.AuthenticationError) or _refuses_token(ray, address):
                raise LmcError(
                    f"the Ray cluster at {where} refused this driver's authentication token "
                    "(its head uses token authentication, which Ray turns on when ~/.ray/auth_token "
                    "exists, e.g. left by an earlier local Ray); run lmctrack with "
                    "RAY_AUTH_MODE=token and the head's token (in ~/.ray/auth_token, or "
                    "RAY_AUTH_TOKEN_PATH=FILE), or restart the head with RAY_AUTH_MODE=disabled"
                ) from None
            raise LmcError(
                f"cannot reach the Ray cluster at {where} ({str(e).splitlines()[0]}); start it "
                "with `ray start --head` or fix runner.address"
            ) from None
    return address or "a local Ray"


def _refuses_token(ray, address: str | None) -> bool:
    """Whether the head at `address` (host:port) answers with an authentication error: ray.init
    says only "Failed to connect" (the cause is in its log), one direct call to the head says why."""
    if address is None or "://" in address or address == "auto":
        return False
    try:
        from ray._raylet import GcsClient

        GcsClient(address=address).internal_kv_keys(b"", None, timeout=5)
    except ray.exceptions.AuthenticationError:
        return True
    except Exception:  # unreachable, or another Ray: not an authentication answer
        return False
    return False


def warm_up(runner: RunnerConfig) -> list:
    """Connect, and start one task per slot of runner.cpus / runner.gpus (up to WARM_TASKS) that
    imports what trainings and interpolations run; returns their references. Not waited for:
    the workers import while the driver goes on, and the sweep's tasks reuse them."""
    ray = _ray()
    connect(runner.address)
    kind, each = ("GPU", runner.gpus) if runner.gpus > 0 else ("CPU", runner.cpus)
    slots = min(WARM_TASKS, int(ray.cluster_resources().get(kind, 0) // each))
    task = ray.remote(_warm).options(num_cpus=runner.cpus, num_gpus=runner.gpus)
    return [task.remote() for _ in range(slots)]


# ---- inside a worker ---------------------------------------------------------------------------


def _warm() -> None:
    """The body of a warm-up task: the imports of every task's body."""
    import lmctrack.engine.interpolate  # noqa: F401
    import lmctrack.execution.job  # noqa: F401


def _setup(device: str, threads: int, boxed: list):
    """This worker's torch settings for the task, and the sweep's dataset on `device`, fetched
    from the object store once per worker process."""
    import torch

    from lmctrack.engine.train import deterministic

    torch.set_num_threads(threads)
    dev = torch.device(device)
    deterministic(dev)
    key = (boxed[0].hex(), device)
    if key not in _datasets:
        _datasets.clear()
        _datasets[key] = _ray().get(boxed[0]).to(dev)
    return _datasets[key], dev


def _train(job: TrainJob, boxed: list, device: str, threads: int, reports) -> JobResult:
    """The body of one training task: the same run_job a local worker runs."""
    from lmctrack.execution.job import run_job

    dataset, dev = _setup(device, threads, boxed)
    if job.checkpoint is not None:
        job.checkpoint.parent.mkdir(parents=True, exist_ok=True)  # a node that never saw it
    sent = -POLL_SECONDS

    def report(step: int, metrics: dict) -> None:
        """Each report is a call to the relay: at most one per poll of the driver, and the last."""
        nonlocal sent
        if step >= job.stop or time.monotonic() - sent >= POLL_SECONDS:
            sent = time.monotonic()
            reports.put.remote(job.key, step, metrics)

    return run_job(job, dataset, dev, report)


def _call(fn: Callable, args: tuple, boxed: list, device: str, threads: int):
    """The body of any other task: fn(dataset, device, *args)."""
    dataset, dev = _setup(device, threads, boxed)
    return fn(dataset, dev, *args)


class _Reports:
    """Latest progress per training, reported by workers, collected by the driver."""

    def __init__(self) -> None:
        self._latest: dict[str, tuple[int, dict]] = {}

    def put(self, key: str, step: int, metrics: dict) -> None:
        self._latest[key] = (step, metrics)

    def drain(self) -> dict[str, tuple[int, dict]]:
        latest, self._latest = self._latest, {}
        return latest


# ---- in the driver -----------------------------------------------------------------------------


def _session(ray, dataset) -> tuple[list, Any]:
    """The dataset's object-store reference (boxed: tasks get the reference, not the data) and
    the progress relay, both made once per driver and Ray job: each put ships the dataset, and
    each actor is a process to start."""
    job = ray.get_runtime_context().get_job_id()
    if _driver.get("job") != job:
        _driver.clear()
        relay = ray.remote(_Reports).options(num_cpus=0, max_restarts=-1, max_task_retries=-1)
        _driver.update(job=job, relay=relay.remote())  # restarted if its process dies
    if _driver.get("dataset") is not dataset:
        _driver.update(dataset=dataset, boxed=[ray.put(dataset.to("cpu"))])
    return _driver["boxed"], _driver["relay"]


def _options(ray, body: Callable, runner: RunnerConfig):
    """A Ray task running `body` with the runner's resources, retried when its worker dies;
    with the device and threads it works with (CUDA when runner.gpus > 0, else CPU threads)."""
    task = ray.remote(body).options(
        num_cpus=runner.cpus,
        num_gpus=runner.gpus,
        max_retries=MAX_RETRIES,
        retry_exceptions=False,
    )
    return task, "cuda" if runner.gpus > 0 else "cpu", max(1, int(runner.cpus))


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

    A job that raises fails the sweep (its error is raised here, the others are cancelled); a
    job whose worker died more than MAX_RETRIES times fails with an LmcError.
    """
    ray = _ray()
    where = connect(runner.address)
    boxed, relay = _session(ray, dataset)
    task, device, threads = _options(ray, _train, runner)
    print(
        f"runner.backend=ray: {len(jobs)} trainings on {where} "
        f"({runner.cpus:g} CPU, {runner.gpus:g} GPU each, on {device})",
        file=sys.stderr,
    )
    ray.get(relay.drain.remote())  # what tasks of an earlier, failed sweep reported late
    for job in jobs:
        board.add(job.key, job.label, total=job.stop, completed=job.start)
    refs = [
        task.remote(shared_checkpoint(job, checkpoints), boxed, device, threads, relay)
        for job in jobs
    ]

    def report() -> None:
        for key, (step, metrics) in ray.get(relay.drain.remote()).items():
            board.update(key, step, metrics)

    def finished(i: int) -> None:
        board.update(jobs[i].key, jobs[i].stop)

    return _gather(ray, refs, [f"training {job.label}" for job in jobs], report, finished)


def map_on_ray(
    fn: Callable, calls: Sequence[tuple], dataset, runner: RunnerConfig, what: str
) -> list:
    """fn(dataset, device, *call) for every call, each a Ray task with runner.cpus /
    runner.gpus as a training gets (a sweep's analysis spreads like its trainings); results in
    order. `fn` must be importable by the workers (a module-level function of lmctrack)."""
    ray = _ray()
    connect(runner.address)
    boxed, _ = _session(ray, dataset)
    task, device, threads = _options(ray, _call, runner)
    refs = [task.remote(fn, call, boxed, device, threads) for call in calls]
    labels = [f"{what} {i + 1} of {len(calls)}" for i in range(len(calls))]
    return _gather(ray, refs, labels)


def _gather(
    ray,
    refs: list,
    labels: list[str],
    poll: Callable[[], None] | None = None,
    finished: Callable[[int], None] | None = None,
) -> list:
    """The tasks' results in order, calling `poll` every POLL_SECONDS and `finished(i)` as each
    ends; the first error cancels the tasks still running."""
    pending = {ref: i for i, ref in enumerate(refs)}
    results: dict[int, Any] = {}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=POLL_SECONDS)
            if poll is not None:
                poll()
            for ref in done:
                i = pending.pop(ref)
                results[i] = _result(ray, ref, labels[i])
                if finished is not None:
                    finished(i)
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
    return [results[i] for i in range(len(refs))]


def _result(ray, ref, label: str):
    """The task's result; its own error raised as it is, a lost worker as an LmcError."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        raise e.cause from None
    except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError) as e:
        raise LmcError(
            f"{label} lost its Ray worker {MAX_RETRIES + 1} times ({type(e).__name__}); "
            "check the workers' memory and logs, then re-run to resume"
        ) from None
