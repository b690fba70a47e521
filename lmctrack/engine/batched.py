"""Many networks of one architecture as one: stacked weights run through torch.func.vmap.

A fork's N copies (Algorithm 1) and the points of a linear path are networks of one architecture
that differ only in their weights. Stacking every state_dict tensor along a new leading dimension
(torch.func.stack_module_state's layout: name -> (N, *shape)) and calling the template network
under vmap(functional_call) runs all of them in one pass of batched kernels: N times fewer
operations, each N times larger, which is what keeps a GPU busy.

BatchNorm: the running statistics are per-network buffers, stacked like the weights. In train
mode vmap's batch-norm rule updates each network's own statistics in place, so the copies keep
their own statistics (tested against unbatched training), and the BatchNorm reset of a path is
update_bn's cumulative average computed for all networks at once.

Training (`train_copies`) steps the optimizer on the stacked parameters: SGD, Adam and AdamW are
elementwise, so one optimizer over stacked tensors is exactly one optimizer per copy (a recipe
that is not, recipe.stacking_problem, trains in processes); a checkpoint slices its state per copy
into the same file format as the unbatched engine, so either engine resumes it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap
from torch.nn.modules.batchnorm import _BatchNorm

from lmctrack.config.params import TrainConfig
from lmctrack.engine.recipe import Optimizer, make_optimizer, stacking_problem
from lmctrack.engine.state import Mask
from lmctrack.engine.train import (
    Noise,
    Progress,
    Running,
    SlotsCallback,
    TrainLog,
    cpu_slots,
    deterministic,
    load_slots,
    loop,
    read_checkpoint,
    save_checkpoint,
)
from lmctrack.errors import LmcError

Weights = dict[str, torch.Tensor]
MEMORY_BUDGET = 1 << 30  # bytes of activations and weights one evaluation pass may hold


def stack(states: Sequence[Weights], device: torch.device | str = "cpu") -> Weights:
    """name -> (N, *shape): the states side by side, in the first state's key order."""
    return {name: torch.stack([s[name] for s in states]).to(device) for name in states[0]}


def unstack(stacked: Weights, index: int) -> Weights:
    """The state of network `index`, copied to the CPU."""
    return {name: t[index].detach().to("cpu", copy=True) for name, t in stacked.items()}


def forward(template: nn.Module, stacked: Weights, x: torch.Tensor, shared: bool) -> torch.Tensor:
    """Logits (N, B, classes) of every stacked network; x is (B, ...) if shared, else (N, B, ...)."""

    def call(weights: Weights, inputs: torch.Tensor) -> torch.Tensor:
        return functional_call(template, weights, (inputs,))

    return vmap(call, in_dims=(0, None if shared else 0))(stacked, x)


def _count(stacked: Weights) -> int:
    return next(iter(stacked.values())).shape[0]


# --- evaluation -------------------------------------------------------------------------------


def evaluate_stacked(
    template: nn.Module,
    stacked: Weights,
    dataset,
    split: str,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 1000,
    limit: int | None = None,
) -> list[tuple[float, float]]:
    """(loss, error) of each stacked network on a split: what evaluate() gives each one alone."""
    n = _count(stacked)
    was_training = template.training
    template.eval()
    loss = torch.zeros(n, dtype=torch.float64, device=device)
    correct = torch.zeros(n, dtype=torch.int64, device=device)
    count = 0
    with torch.inference_mode():
        for x, y in dataset.eval_batches(split, batch_size=batch_size, device=device, limit=limit):
            logits = forward(template, stacked, x, shared=True)
            each = F.cross_entropy(logits.flatten(0, 1), y.repeat(n), reduction="none")
            loss += each.view(n, -1).sum(1, dtype=torch.float64)
            correct += (logits.argmax(2) == y).sum(1)
            count += y.shape[0]
    template.train(was_training)
    if count == 0:
        raise LmcError(f"split '{split}' has no examples to evaluate; check the dataset and limit")
    return [(s / count, 1.0 - c / count) for s, c in zip(loss.tolist(), correct.tolist())]


def _batchnorms(template: nn.Module) -> list[tuple[str, _BatchNorm]]:
    return [
        (name, m)
        for name, m in template.named_modules()
        if isinstance(m, _BatchNorm) and m.track_running_stats
    ]


def recompute_bn_stacked(
    template: nn.Module,
    stacked: Weights,
    dataset,
    *,
    device: torch.device | str = "cpu",
    limit: int | None = None,
    batch_size: int = 1000,
) -> None:
    """torch.optim.swa_utils.update_bn for every stacked network, in place.

    update_bn resets the statistics and averages them over the training batches (momentum=None:
    batch n enters with weight 1/n). Under vmap the factor cannot be read from the batched
    num_batches_tracked, so the momentum is set to 1/n per batch instead: the same factors.
    """
    norms = _batchnorms(template)
    if not norms:
        return
    for name, _ in norms:
        stacked[f"{name}.running_mean"].zero_()
        stacked[f"{name}.running_var"].fill_(1.0)
        stacked[f"{name}.num_batches_tracked"].zero_()
    momenta = [m.momentum for _, m in norms]
    was_training = template.training
    template.train()
    try:
        with torch.no_grad():
            batches = dataset.eval_batches(
                "train", batch_size=batch_size, device=device, limit=limit
            )
            for n, (x, _) in enumerate(batches, start=1):
                for _, m in norms:
                    m.momentum = 1.0 / n
                forward(template, stacked, x, shared=True)
    finally:
        for (_, m), momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        template.train(was_training)


def networks_per_pass(
    template: nn.Module, dataset, batch_size: int, device: torch.device | str
) -> int:
    """How many stacked networks one evaluation pass may hold within MEMORY_BUDGET.

    Measured, not guessed: the activations of one example (every leaf module's output, an upper
    bound on what is alive at once) times the batch, plus the network's own tensors.
    """
    sizes: list[int] = []
    leaves = [m for m in template.modules() if not list(m.children())]
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: sizes.append(out.numel() * out.element_size()))
        for m in leaves
    ]
    x, _ = next(iter(dataset.eval_batches("test", batch_size=1, device=device)))
    was_training = template.training
    try:
        template.eval()
        with torch.inference_mode():
            template(x)
    finally:
        for hook in hooks:
            hook.remove()
        template.train(was_training)
    weights = sum(t.numel() * t.element_size() for t in template.state_dict().values())
    return max(1, MEMORY_BUDGET // (sum(sizes) * batch_size + weights))


# --- training ---------------------------------------------------------------------------------


@dataclass
class Copy:
    """One network of a batched training: where it starts and what it reports."""

    weights: Weights
    noise: Noise
    mask: Mask | None = None
    checkpoint: Path | None = None
    on_step: Callable[[int, Weights], None] | None = None  # (step, CPU state) at `at_steps`
    progress: Progress | None = None
    on_slots: SlotsCallback | None = None  # (step, its optimizer state) at `at_steps`


def _holder(template: nn.Module, stacked: Weights) -> nn.Module:
    """A copy of the template whose parameters and buffers are the stacked tensors, so that
    torch.optim and prune.keep_masked work on it by the model's own names."""
    holder = copy.deepcopy(template)
    params = dict(template.named_parameters())
    for name, tensor in stacked.items():
        prefix, _, leaf = name.rpartition(".")
        module = holder.get_submodule(prefix)
        if name in params:
            setattr(module, leaf, nn.Parameter(tensor))
        else:
            module.register_buffer(leaf, tensor)
    return holder


def _stacked_mask(copies: Sequence[Copy], stacked: Weights, device) -> Mask | None:
    """Each copy's mask stacked; a dense copy (or a tensor a mask lacks) keeps everything."""
    names = sorted({name for c in copies if c.mask is not None for name in c.mask})
    if not names:
        return None
    return {
        name: torch.stack(
            [
                c.mask[name].to(torch.bool)
                if c.mask is not None and name in c.mask
                else torch.ones(stacked[name].shape[1:], dtype=torch.bool)
                for c in copies
            ]
        ).to(device)
        for name in names
    }


def _slots_of(slots: dict[int, dict], index: int) -> dict[int, dict]:
    """One copy's optimizer state: stacked tensors sliced, shared scalars (Adam's step) as is."""
    return {
        i: {k: v[index] if torch.is_tensor(v) and v.dim() > 0 else v for k, v in slot.items()}
        for i, slot in slots.items()
    }


def _stack_slots(per_copy: Sequence[dict[int, dict]]) -> dict[int, dict]:
    return {
        i: {
            k: torch.stack([s[i][k] for s in per_copy]) if torch.is_tensor(v) and v.dim() > 0 else v
            for k, v in slot.items()
        }
        for i, slot in per_copy[0].items()
    }


def checkpoint_step(path: Path | None) -> int | None:
    """The step a checkpoint was taken at (None when there is none); damage is an LmcError."""
    if path is None or not path.is_file():
        return None
    return read_checkpoint(path)[0]


def train_copies(
    template: nn.Module,
    dataset,
    cfg: TrainConfig,
    copies: Sequence[Copy],
    *,
    start: int,
    stop: int,
    device: torch.device | str = "cpu",
    at_steps: Sequence[int] = (),
    eval_every: int | None = None,
    evaluate_fn: Callable[[Weights, int], list[dict[str, float]]] | None = None,
    checkpoint_every: int = 500,
    schedule_total: int | None = None,
) -> tuple[list[Weights], list[TrainLog]]:
    """Train the copies as one stacked network from `start` to `stop`: train.train for each copy.

    Each copy draws its own batches (its own data order and augmentation), keeps its own mask
    and optimizer state; all follow one learning-rate schedule. Resume: when every copy has a
    checkpoint at the same step, the group continues from it (the runner checks this first).
    Returns each copy's final state (on the CPU) and log.
    """
    from lmctrack.engine.prune import keep_masked

    problem = stacking_problem(cfg)
    if problem is not None:
        raise LmcError(f"copies cannot train stacked: {problem}; use runner.batch_copies=off")
    device = torch.device(device)
    deterministic(device)
    template = template.to(device)
    n = len(copies)
    resumed = [
        read_checkpoint(c.checkpoint) for c in copies if checkpoint_step(c.checkpoint) is not None
    ]
    if resumed and (len(resumed) < n or len({r[0] for r in resumed}) > 1):
        raise LmcError(
            "the copies' checkpoints are at different steps; resume them with "
            "runner.batch_copies=off"
        )
    weights = [r[1] for r in resumed] if resumed else [c.weights for c in copies]
    holder = _holder(template, stack(weights, device))
    opt = make_optimizer(cfg, holder.parameters())
    step = start
    if resumed:
        load_slots(opt, _stack_slots([r[2] for r in resumed]))
        step = resumed[0][0]
    logs = [TrainLog(resumed_from=step if resumed else None) for _ in copies]
    mask = _stacked_mask(copies, dict(holder.named_parameters()), device)
    guard = keep_masked(holder, mask) if mask is not None else None
    streams = [
        dataset.train_batches(cfg.batch_size, c.noise.data_order, c.noise.augment, step, device)
        for c in copies
    ]
    progress = [c.progress for c in copies]
    stacked = _Stacked(
        template,
        opt,
        guard,
        Running(n, device),
        progress,
        holder,
        copies,
        streams,
        evaluate_fn,
        logs,
        cfg.label_smoothing,
    )
    steps, seconds = loop(
        stacked, cfg, dataset, step, stop, schedule_total, at_steps, eval_every, checkpoint_every
    )
    for log in logs:
        log.steps, log.seconds = steps, seconds
    final = holder.state_dict()
    return [unstack(final, i) for i in range(n)], logs


@dataclass
class _Stacked:
    """Stacked copies as the training loop sees them: one forward and backward for all."""

    module: nn.Module  # the template, called under vmap
    opt: Optimizer
    guard: object | None
    running: Running
    progress: list[Progress | None]
    holder: nn.Module  # its parameters are the stacked tensors the optimizer steps
    copies: Sequence[Copy]
    streams: list
    evaluate_fn: Callable[[Weights, int], list[dict[str, float]]] | None
    logs: list[TrainLog]
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        named = [*self.holder.named_parameters(), *self.holder.named_buffers()]
        self.tensors = dict(named)  # what forward and evaluate_fn read, by name

    def losses(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        xs, ys = zip(*(next(s) for s in self.streams), strict=True)
        x, y = torch.stack(xs), torch.stack(ys)
        out = forward(self.module, self.tensors, x, shared=False)
        losses = F.cross_entropy(
            out.flatten(0, 1), y.flatten(), reduction="none", label_smoothing=self.label_smoothing
        )
        return losses.view(len(self.copies), -1).mean(1), out, y

    def snapshot(self, step: int) -> None:
        stacked, slots = self.holder.state_dict(), self.opt.state_dict()["state"]
        for i, c in enumerate(self.copies):
            if c.on_slots is not None:  # first: a snapshot on disk has its optimizer state
                c.on_slots(step, cpu_slots(_slots_of(slots, i)))
            if c.on_step is not None:
                c.on_step(step, unstack(stacked, i))

    def evaluate(self, step: int) -> None:
        if self.evaluate_fn is not None:
            for log, metrics in zip(self.logs, self.evaluate_fn(self.tensors, step), strict=True):
                log.evaluations.append({"step": step, **metrics})

    def save(self, step: int) -> None:
        stacked, slots = self.holder.state_dict(), self.opt.state_dict()["state"]
        for i, c in enumerate(self.copies):
            if c.checkpoint is not None:
                weights_i = {k: v[i] for k, v in stacked.items()}
                save_checkpoint(c.checkpoint, step, weights_i, _slots_of(slots, i))
