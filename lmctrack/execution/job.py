"""One training as a job: what it is (TrainJob), what it gives back (JobResult), and the bodies that
run it (run_job for one network, run_group for stacked copies). Every executor runs these same
bodies: a local worker process, this process, or a Ray task (lmctrack.execution.executor chooses).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from lmctrack.config import schema
from lmctrack.config.params import ModelConfig, TrainConfig
from lmctrack.engine.state import Mask, Slots, flat_slots, nested_slots
from lmctrack.engine.train import Noise, train, write_atomic
from lmctrack.errors import LmcError

Weights = dict[str, torch.Tensor]
SLOTS = "slots"  # file prefix of a snapshot's optimizer state in a checkpoint folder


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
    slots: Slots | None = None  # the optimizer state to start from (a carried copy of Wk)
    keep_slots: bool = False  # also return the optimizer state at each snapshot step


@dataclass
class JobResult:
    weights: Weights
    snapshots: dict[int, Weights] = field(default_factory=dict)
    slots: dict[int, Slots] = field(default_factory=dict)  # optimizer state by snapshot step
    evaluations: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0
    resumed_from: int | None = None


def load_snapshots(
    folder: Path, resume_step: int | None = None
) -> tuple[dict[int, Weights], dict[int, Slots]]:
    """Snapshots an interrupted job already took (its checkpoint folder keeps them), and the
    optimizer states kept with them.

    A damaged snapshot (a kill mid-write by an older version, a damaged disk) is deleted when the
    resumed training will pass its step again and take it anew; one from before `resume_step`
    cannot be retaken, which is an LmcError.
    """
    snapshots: dict[int, Weights] = {}
    kept_slots: dict[int, Slots] = {}
    for path in sorted(folder.glob("snapshot_*.safetensors")):
        step = int(path.stem.split("_")[1])
        slots_path = path.with_name(f"{SLOTS}_{step}.safetensors")
        try:
            snapshots[step] = load_file(str(path))
            if slots_path.is_file():
                kept_slots[step] = nested_slots(load_file(str(slots_path)))
        except (SafetensorError, OSError) as e:
            if resume_step is not None and step < resume_step:
                raise LmcError(
                    f"snapshot {path} is damaged ({e}) and the checkpoint is past its step; "
                    f"delete {folder} to train this job again"
                ) from None
            snapshots.pop(step, None)
            path.unlink()
            slots_path.unlink(missing_ok=True)
    return snapshots, kept_slots


def _cpu_weights(model: torch.nn.Module) -> Weights:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _metrics(test: tuple[float, float], train_split: tuple[float, float]) -> dict[str, float]:
    """The evaluation a job logs every eval_every steps, from (loss, error) pairs."""
    return {
        schema.evaluation(split, quantity): value
        for split, pair in (("test", test), ("train", train_split))
        for quantity, value in zip((schema.LOSS, schema.ERROR), pair, strict=True)
    }


def _prepare(job: TrainJob) -> tuple[JobResult, Callable, Callable | None]:
    """The job's result with the snapshots it already took, and how it keeps new ones (and the
    optimizer states with them, where the job keeps those)."""
    from lmctrack.engine.batched import checkpoint_step

    result = JobResult(weights={})
    if job.checkpoint is not None:
        step = checkpoint_step(job.checkpoint)
        result.snapshots, result.slots = load_snapshots(job.checkpoint.parent, step)

    def keep(step: int, weights: Weights) -> None:
        result.snapshots[step] = weights
        if job.checkpoint is not None:
            write_atomic(job.checkpoint.parent / f"snapshot_{step}.safetensors", weights)

    def keep_slots(step: int, slots: Slots) -> None:  # called first: written before the weights
        result.slots[step] = slots
        if job.checkpoint is not None:
            write_atomic(job.checkpoint.parent / f"{SLOTS}_{step}.safetensors", flat_slots(slots))

    return result, keep, keep_slots if job.keep_slots else None


def _finish(result: JobResult, weights: Weights, log) -> JobResult:
    result.weights = weights
    result.evaluations = log.evaluations
    result.seconds = log.seconds
    result.steps = log.steps
    result.resumed_from = log.resumed_from
    return result


def _start_weights(job: TrainJob, dataset) -> Weights:
    from lmctrack.engine.models import build_for_data

    if job.weights is not None:
        return job.weights
    return build_for_data(job.model, dataset, job.init_seed).state_dict()


def run_job(
    job: TrainJob, dataset, device: torch.device, report: Callable[[int, dict], None] | None
) -> JobResult:
    """Build the network, train it, and return its final weights and snapshots (on the CPU)."""
    from lmctrack.engine.evaluate import evaluate
    from lmctrack.engine.models import build_for_data

    model = build_for_data(job.model, dataset, job.init_seed)
    if job.weights is not None:
        model.load_state_dict(job.weights)
    model.to(device)
    result, keep, keep_slots = _prepare(job)

    def evaluate_fn(net: torch.nn.Module, step: int) -> dict[str, float]:
        test = evaluate(net, dataset, "test", device=device)
        seen = evaluate(net, dataset, "train", device=device, limit=dataset.num_examples("test"))
        return _metrics((test.loss, test.error), (seen.loss, seen.error))

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
        on_step=lambda step, net: keep(step, _cpu_weights(net)),
        eval_every=job.eval_every,
        evaluate_fn=evaluate_fn,
        checkpoint=job.checkpoint,
        progress=report,
        schedule_total=job.schedule_total,
        slots=job.slots,
        on_slots=keep_slots,
    )
    return _finish(result, _cpu_weights(model), log)


def run_group(
    jobs: Sequence[TrainJob],
    dataset,
    device: torch.device,
    reports: Sequence[Callable[[int, dict], None] | None],
) -> list[JobResult]:
    """Train jobs of one group (same _group_key) as one stacked network; results in order."""
    from lmctrack.engine.batched import Copy, evaluate_stacked, train_copies
    from lmctrack.engine.models import build_for_data

    job = jobs[0]
    template = build_for_data(job.model, dataset, job.init_seed)
    prepared = [_prepare(j) for j in jobs]
    copies = [
        Copy(
            weights=_start_weights(j, dataset),
            noise=j.noise,
            mask=j.mask,
            checkpoint=j.checkpoint,
            on_step=keep,
            progress=report,
            on_slots=keep_slots,
        )
        for j, (_, keep, keep_slots), report in zip(jobs, prepared, reports, strict=True)
    ]

    def evaluate_fn(stacked: Weights, step: int) -> list[dict[str, float]]:
        test = evaluate_stacked(template, stacked, dataset, "test", device=device)
        limit = dataset.num_examples("test")
        seen = evaluate_stacked(template, stacked, dataset, "train", device=device, limit=limit)
        return [_metrics(t, s) for t, s in zip(test, seen, strict=True)]

    weights, logs = train_copies(
        template,
        dataset,
        job.train,
        copies,
        start=job.start,
        stop=job.stop,
        device=device,
        at_steps=job.snapshot_steps,
        eval_every=job.eval_every,
        evaluate_fn=evaluate_fn,
        schedule_total=job.schedule_total,
    )
    return [_finish(p[0], w, log) for p, w, log in zip(prepared, weights, logs, strict=True)]
