"""The training recipe: optimizer, learning-rate schedule, loss and gradient clipping, by name or
by the import path of the researcher's own.

Every learning rate is a function of the global step alone (a torch lr_scheduler class is
replayed once on an optimizer of lr 1 and read as a table of factors), so copies of Wk continue
the schedule of their run and a resumed training is bit-identical: the only state is the
optimizer's, which checkpoints keep.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Callable, Iterable
from functools import cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmctrack.config.imports import resolve
from lmctrack.config.params import TrainConfig
from lmctrack.config.user import CROSS_ENTROPY
from lmctrack.engine.sgd import SGD
from lmctrack.errors import LmcError

Optimizer = SGD | torch.optim.Optimizer
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
RECIPES_GROUP = "lmctrack.recipes"  # plugins naming an optimizer, schedule or loss
_TOTAL_NAMES = ("total_steps", "T_max", "total_iters")  # filled with T where a class takes one


def make_optimizer(cfg: TrainConfig, params: Iterable[nn.Parameter]) -> Optimizer:
    """train.optimizer over params, with train.optimizer_kwargs; lr and weight decay from cfg."""
    kwargs: dict[str, Any] = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    if cfg.optimizer == "sgd":
        target: Callable[..., Optimizer] = SGD
        kwargs |= {"momentum": cfg.momentum, "nesterov": cfg.nesterov and cfg.momentum > 0}
    elif cfg.optimizer in ("adam", "adamw"):
        target = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    else:
        target = _resolved(cfg.optimizer, "train.optimizer")
    try:
        return target(params, **(kwargs | cfg.optimizer_kwargs))
    except (TypeError, ValueError) as e:
        raise LmcError(
            f"train.optimizer {cfg.optimizer} refused {cfg.optimizer_kwargs or 'its arguments'} "
            f"({e}); fix train.optimizer_kwargs"
        ) from None


def learning_rate(cfg: TrainConfig, step: int, ipe: int, total: int) -> float:
    """The schedule's rate at `step` of `total`, times min(1, step / warmup)."""
    warmup = cfg.warmup.iterations(ipe)
    lr = cfg.lr
    if cfg.schedule == "step":
        lr *= cfg.gamma ** sum(step >= m.iterations(ipe) for m in cfg.milestones)
    elif cfg.schedule == "linear_decay":
        lr += (cfg.final_lr - cfg.lr) * min(1.0, step / max(total, 1))
    elif cfg.schedule == "cosine":  # from lr after the warmup down to final_lr at T
        done = min(1.0, max(0, step - warmup) / max(total - warmup, 1))
        lr = cfg.final_lr + (cfg.lr - cfg.final_lr) * 0.5 * (1 + math.cos(math.pi * done))
    elif ":" in cfg.schedule:
        lr *= _factor(cfg, step, total)
    if warmup > 0:
        lr *= min(1.0, step / warmup)
    return lr


@cache
def _resolved(name: str, key: str) -> Callable[..., Any]:
    """The user's code by name, looked up once per process (the loop asks every step)."""
    return resolve(name, RECIPES_GROUP, key)


def _factor(cfg: TrainConfig, step: int, total: int) -> float:
    target = _resolved(cfg.schedule, "train.schedule")
    if isinstance(target, type) and issubclass(target, torch.optim.lr_scheduler.LRScheduler):
        table = _replayed(target, json.dumps(cfg.schedule_kwargs, sort_keys=True), total)
        return table[min(step, len(table) - 1)]
    try:
        return float(target(step, total))
    except Exception as e:
        raise LmcError(
            f"train.schedule {cfg.schedule} failed at step {step} of {total} "
            f"({type(e).__name__}: {e}); make it a function (step, total) -> learning-rate factor"
        ) from None


@cache
def _replayed(scheduler: type, kwargs_json: str, total: int) -> tuple[float, ...]:
    """The lr an lr_scheduler class sets at steps 0..total-1 on an optimizer of lr 1."""
    kwargs = json.loads(kwargs_json)
    named = inspect.signature(scheduler).parameters
    kwargs |= {k: total for k in _TOTAL_NAMES if k in named and k not in kwargs}
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    try:
        schedule = scheduler(opt, **kwargs)
        rates = []
        for step in range(max(total, 1)):
            if step:
                opt.step()
                schedule.step()
            rates.append(float(opt.param_groups[0]["lr"]))
    except Exception as e:
        raise LmcError(
            f"train.schedule {scheduler.__name__} failed with train.schedule_kwargs {kwargs} "
            f"({type(e).__name__}: {e}); fix train.schedule_kwargs"
        ) from None
    return tuple(rates)


def make_loss(cfg: TrainConfig) -> Loss:
    """The mean loss of a batch: cross-entropy (with train.label_smoothing) or the user's own."""
    if cfg.loss == CROSS_ENTROPY:
        smoothing = cfg.label_smoothing
        return lambda out, y: F.cross_entropy(out, y, label_smoothing=smoothing)
    target = _resolved(cfg.loss, "train.loss")
    return target() if isinstance(target, type) else target


def clip(cfg: TrainConfig, opt: Optimizer) -> None:
    """Scale the gradients to total norm train.clip_grad_norm where they exceed it."""
    if cfg.clip_grad_norm is not None:
        params = [p for group in opt.param_groups for p in group["params"]]
        nn.utils.clip_grad_norm_(params, cfg.clip_grad_norm)


def stacking_problem(cfg: TrainConfig) -> str | None:
    """Why copies under this recipe cannot train stacked (None: they can): one optimizer over
    stacked tensors is one per copy only for elementwise optimizers and per-copy losses."""
    if cfg.optimizer not in ("sgd", "adam", "adamw"):
        return f"train.optimizer {cfg.optimizer} may not be elementwise"
    if cfg.loss != CROSS_ENTROPY:
        return f"train.loss {cfg.loss} is not split per copy"
    if cfg.clip_grad_norm is not None:
        return "train.clip_grad_norm is a norm over each copy's whole gradient"
    return None
