"""The one training loop: from a state at step `start` to step `stop` under one sample of SGD noise.

The learning rate and the data order are functions of the step alone, so training from Wk with a
given noise seed continues exactly where a run from W0 with that seed would have been (rewinding),
and an interrupted run resumes bit-identically from its last checkpoint.
"""

from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from lmctrack.config.params import TrainConfig
from lmctrack.engine.recipe import Loss, Optimizer, clip, learning_rate, make_loss, make_optimizer
from lmctrack.engine.state import Mask, Slots, flat_slots, nested_slots
from lmctrack.errors import LmcError


@dataclass(frozen=True)
class Noise:
    """One sample of SGD noise: the seeds of the data order and of the augmentation."""

    data_order: int
    augment: int


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise LmcError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    resolved = torch.device(device)
    deterministic(resolved)
    return resolved


def deterministic(device: torch.device) -> None:
    """Make training on `device` repeatable: same seeds, same weights.

    On CUDA: deterministic algorithms (cuDNN's deterministic kernels, no benchmark autotuning) and
    cuBLAS's fixed workspace (CUBLAS_WORKSPACE_CONFIG must be set before cuBLAS starts, so this
    runs when the device is resolved and in every worker). An op without a deterministic CUDA
    implementation warns instead of failing (warn_only). Bit-identity holds on the same machine,
    the same device type and the same `runner.batch_copies` mode; the batched (vmap) path computes
    the same functions with other kernels, so it agrees with the unbatched one to float tolerance.
    On the CPU the kernels are deterministic already.
    """
    if device.type != "cuda":
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


# --- checkpoints: plain safetensors files, so resuming never unpickles --------------------------


def write_atomic(
    path: Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None
) -> None:
    """Write a safetensors file via a temporary file and a rename: a kill never leaves half a file.

    A full disk is a one-line LmcError (the temporary file is removed).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(save(tensors, metadata=metadata))
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise LmcError(
                f"disk full while writing {path}; free space and run again (training resumes "
                "from the last checkpoint)"
            ) from None
        raise
    tmp.replace(path)


def save_checkpoint(path: Path, step: int, weights: dict[str, torch.Tensor], slots: Slots) -> None:
    """Write weights and optimizer slots (torch.optim state_dict()["state"]) at `step`."""
    tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in weights.items()}
    tensors |= {f"opt/{k}": v for k, v in flat_slots(slots).items()}
    write_atomic(path, tensors, {"step": str(step)})


def read_checkpoint(path: Path) -> tuple[int, dict[str, torch.Tensor], Slots]:
    """(step, weights, optimizer slots) of a checkpoint, on the CPU; damage is an LmcError."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise LmcError(
            f"corrupted checkpoint {path} ({e}); delete it to train from the start"
        ) from None
    slots = nested_slots({k[4:]: v for k, v in tensors.items() if k.startswith("opt/")})
    for key, value in json.loads(meta.get("scalars", "{}")).items():  # written before 0a1aad1
        index, name = key.split("/", 1)
        slots.setdefault(int(index), {})[name] = value
    weights = {k[6:]: v for k, v in tensors.items() if k.startswith("model/")}
    return int(meta["step"]), weights, slots


def load_checkpoint(path: Path, model: nn.Module, opt: Optimizer) -> int:
    """Restore model and optimizer from `path`; returns the step it was taken at."""
    step, weights, slots = read_checkpoint(path)
    model.load_state_dict(weights)
    load_slots(opt, slots)
    return step


def load_slots(opt: Optimizer, slots: Slots) -> None:
    """Give `opt` a copy of these per-parameter slots: load_state_dict keeps a tensor already on
    the parameters' device as it is, and stepping would then change the caller's slots (copies
    of one Wk, in processes: the same shared memory)."""
    state = opt.state_dict()
    state["state"] = cpu_slots(slots)
    try:
        opt.load_state_dict(state)
    except (KeyError, ValueError, RuntimeError) as e:
        raise LmcError(
            f"the optimizer state does not fit train.optimizer {type(opt).__name__} ({e}); "
            "use the recipe it was saved with or instability.optimizer_state=restart"
        ) from None


def cpu_slots(slots: Slots) -> Slots:
    """A copy of optimizer slots on the CPU, unaffected by further steps."""
    return {
        i: {k: v.detach().to("cpu", copy=True) if torch.is_tensor(v) else v for k, v in s.items()}
        for i, s in slots.items()
    }


# --- the loop ----------------------------------------------------------------------------------


@dataclass
class TrainLog:
    """What one training produced besides the weights: evaluations and throughput."""

    evaluations: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    resumed_from: int | None = None


StepCallback = Callable[[int, nn.Module], None]
SlotsCallback = Callable[[int, Slots], None]  # the optimizer's state at a snapshot step
Progress = Callable[[int, dict[str, float]], None]
REPORT_EVERY = 25


class Running:
    """Training loss and accuracy of one or several stacked networks, summed on the device and
    read every REPORT_EVERY steps (no per-step synchronisation), for the progress display."""

    def __init__(self, networks: int | None, device: torch.device) -> None:
        shape = () if networks is None else (networks,)
        self.loss = torch.zeros(shape, device=device)
        self.correct = torch.zeros(shape, device=device)
        self.seen = 0

    def add(self, loss: torch.Tensor, out: torch.Tensor, y: torch.Tensor) -> None:
        """`loss` is the mean over the batch (per network); the batch is the last dim of y."""
        self.loss.add_(loss.detach(), alpha=y.shape[-1])
        self.correct.add_((out.detach().argmax(-1) == y).sum(-1))
        self.seen += y.shape[-1]

    def report(self, step: int, stop: int, lr: float, progress: list[Progress | None]) -> None:
        """Send each network's averages to its progress callback every REPORT_EVERY steps."""
        if step % REPORT_EVERY and step != stop:
            return
        losses, correct = self.loss.reshape(-1).tolist(), self.correct.reshape(-1).tolist()
        for callback, loss, right in zip(progress, losses, correct, strict=True):
            if callback is not None:
                metrics = {"loss": loss / self.seen, "accuracy": right / self.seen, "lr": lr}
                callback(step, metrics)
        self.loss.zero_()
        self.correct.zero_()
        self.seen = 0


class Networks(Protocol):
    """What the loop trains: one network, or stacked copies stepped as one (batched.py)."""

    module: nn.Module  # put back in train mode after a snapshot or an evaluation
    opt: Optimizer
    guard: object | None  # prune.keep_masked's guard of the mask(s), if any
    running: Running
    progress: list[Progress | None]

    def losses(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One step's batch: each network's mean loss, its logits and the labels."""
        ...

    def snapshot(self, step: int) -> None: ...

    def evaluate(self, step: int) -> None: ...

    def save(self, step: int) -> None:
        """Write the resume checkpoint(s) at `step` (nothing where none was asked for)."""
        ...


def schedule(cfg: TrainConfig, dataset, schedule_total: int | None) -> tuple[int, int]:
    """Iterations per epoch and the T the learning-rate schedule runs to."""
    ipe = dataset.iterations_per_epoch(cfg.batch_size)
    return ipe, schedule_total if schedule_total is not None else cfg.steps.iterations(ipe)


def loop(
    nets: Networks,
    cfg: TrainConfig,
    dataset,
    step: int,
    stop: int,
    schedule_total: int | None,
    at_steps: Iterable[int],
    eval_every: int | None,
    checkpoint_every: int,
) -> tuple[int, float]:
    """The steps of every training, one network or many: snapshots at `at_steps`, evaluations
    every `eval_every`, checkpoints every `checkpoint_every` and at the end, the learning rate
    of the global step. Returns the steps taken and their seconds."""
    ipe, total = schedule(cfg, dataset, schedule_total)
    wanted = {t for t in at_steps if step <= t <= stop}
    opt, guard, running, progress = nets.opt, nets.guard, nets.running, nets.progress
    report = any(callback is not None for callback in progress)
    first, began = step, time.perf_counter()
    try:
        nets.module.train()
        while True:
            if step in wanted:
                nets.snapshot(step)
                nets.module.train()
            if eval_every and step % eval_every == 0 and step > first:
                nets.evaluate(step)
                nets.module.train()
            if step > first and step % checkpoint_every == 0:
                nets.save(step)
            if step >= stop:
                break
            lr = learning_rate(cfg, step, ipe, total)
            for group in opt.param_groups:
                group["lr"] = lr
            losses, out, y = nets.losses()
            opt.zero_grad(set_to_none=True)
            losses.sum().backward()  # stacked copies are independent: each its own gradient
            clip(cfg, opt)
            opt.step()
            if guard is not None:
                guard.after_step()
            step += 1
            if report:
                running.add(losses, out, y)
                running.report(step, stop, lr, progress)
    finally:
        if guard is not None:
            guard.remove()
    seconds = time.perf_counter() - began
    nets.save(step)  # kept until the result is registered
    return step - first, seconds


@dataclass
class _One:
    """One network as the loop sees it."""

    module: nn.Module
    opt: Optimizer
    guard: object | None
    running: Running
    progress: list[Progress | None]
    batches: Iterator
    on_step: StepCallback | None
    evaluate_fn: Callable[[nn.Module, int], dict[str, float]] | None
    checkpoint: Path | None
    log: TrainLog
    loss_fn: Loss
    on_slots: SlotsCallback | None

    def losses(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y = next(self.batches)
        out = self.module(x)
        return self.loss_fn(out, y), out, y

    def snapshot(self, step: int) -> None:
        if self.on_slots is not None:  # first: a snapshot on disk has its optimizer state
            self.on_slots(step, cpu_slots(self.opt.state_dict()["state"]))
        if self.on_step is not None:
            self.on_step(step, self.module)

    def evaluate(self, step: int) -> None:
        if self.evaluate_fn is not None:
            self.log.evaluations.append({"step": step, **self.evaluate_fn(self.module, step)})

    def save(self, step: int) -> None:
        if self.checkpoint is not None:
            state = self.opt.state_dict()["state"]
            save_checkpoint(self.checkpoint, step, self.module.state_dict(), state)


def train(
    model: nn.Module,
    dataset,
    cfg: TrainConfig,
    *,
    start: int,
    stop: int,
    noise: Noise,
    mask: Mask | None = None,
    device: torch.device | str = "cpu",
    at_steps: Iterable[int] = (),
    on_step: StepCallback | None = None,
    eval_every: int | None = None,
    evaluate_fn: Callable[[nn.Module, int], dict[str, float]] | None = None,
    checkpoint: Path | None = None,
    checkpoint_every: int = 500,
    progress: Progress | None = None,
    schedule_total: int | None = None,
    slots: Slots | None = None,
    on_slots: SlotsCallback | None = None,
) -> TrainLog:
    """Train `model` in place from iteration `start` to `stop` (exclusive of further steps).

    `on_step(t, model)` is called with the state after t iterations for every t in `at_steps`
    within [start, stop] (e.g. to register W0 and each Wk). The LR schedule is evaluated at the
    global step t, so copies of Wk continue the schedule of the run they came from.
    `slots`: the optimizer state to start from (the training's at `start`: a carried copy);
    `on_slots(t, slots)` receives the optimizer state at each t in `at_steps`.
    """
    from lmctrack.engine.prune import keep_masked

    device = torch.device(device)
    deterministic(device)
    model.to(device)
    opt = make_optimizer(cfg, model.parameters())
    log = TrainLog()
    step = start
    if slots is not None:
        load_slots(opt, slots)
    if checkpoint is not None and checkpoint.is_file():
        step = load_checkpoint(checkpoint, model, opt)
        if not start <= step <= stop:
            raise LmcError(
                f"checkpoint {checkpoint} is at step {step}, outside {start}..{stop}; delete it"
            )
        log.resumed_from = step
    guard = keep_masked(model, mask) if mask is not None else None
    batches = dataset.train_batches(
        cfg.batch_size, noise.data_order, noise.augment, start_step=step, device=device
    )
    running = Running(None, device)
    one = _One(
        model,
        opt,
        guard,
        running,
        [progress],
        batches,
        on_step,
        evaluate_fn,
        checkpoint,
        log,
        make_loss(cfg),
        on_slots,
    )
    log.steps, log.seconds = loop(
        one, cfg, dataset, step, stop, schedule_total, at_steps, eval_every, checkpoint_every
    )
    return log
