"""The Hessian diagonal and trace of the training loss, by Hutchinson's estimator.

The 2023 follow-up ("Linear Mode Connectivity in Sparse Neural Networks") compares sparse
networks by their Hessian diagonal. For Rademacher z (entries +-1), E[z * Hz] = diag(H) and
E[z^T H z] = trace(H); Hz is a Hessian-vector product (forward-over-reverse with torch.func), so
the Hessian itself is never formed. For a pruned network the Hessian is that of the unmasked
weights: z is 0 on pruned entries, so their estimates are exactly 0.

The loss is the mean cross-entropy on a fixed subset of the TRAIN split (its first `limit`
examples), with BatchNorm in eval mode (running statistics), so the estimate is deterministic
given the seed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, jvp, vmap

from lmctrack.config.schema import LAYER_MEAN
from lmctrack.engine.state import Mask
from lmctrack.errors import LmcError

Params = dict[str, torch.Tensor]
HVP = Callable[[Params], Params]  # v -> H v


def loss_hvp(loss_fn: Callable[[Params], torch.Tensor], params: Params) -> HVP:
    """Hessian-vector products of a scalar loss of `params`, at `params`."""
    return lambda v: jvp(grad(loss_fn), (params,), (v,))[1]


def _rademacher(like: Params, generator: torch.Generator, mask: Mask | None) -> Params:
    """z with entries +-1 drawn on the CPU (same z on every device), 0 on pruned entries."""
    z = {}
    for name, t in like.items():
        sign = torch.randint(0, 2, t.shape, generator=generator).to(t.device, t.dtype) * 2 - 1
        z[name] = sign * mask[name].to(t.device, t.dtype) if mask and name in mask else sign
    return z


def hutchinson_diagonal(
    hvp: HVP,
    like: Params,
    *,
    samples: int,
    seed: int = 0,
    mask: Mask | None = None,
    chunk: int = 16,
) -> Params:
    """Mean of z * Hz over `samples` Rademacher vectors z shaped like `like` (on the CPU).

    Entries pruned by `mask` get z = 0 and hence exactly 0. `hvp` must be a pure torch function:
    `chunk` vectors at a time go through it under torch.func.vmap (one call per chunk, which
    saves the per-call overhead; the result does not depend on `chunk`).
    """
    if samples < 1:
        raise LmcError(f"samples={samples}: Hutchinson's estimator needs at least 1 sample")
    generator = torch.Generator().manual_seed(seed)
    batched = vmap(hvp)
    total = {name: torch.zeros(t.shape, dtype=torch.float64) for name, t in like.items()}
    for start in range(0, samples, chunk):
        zs = [_rademacher(like, generator, mask) for _ in range(min(chunk, samples - start))]
        z = {name: torch.stack([zi[name] for zi in zs]) for name in like}
        hz = batched(z)
        for name in total:
            total[name] += (z[name] * hz[name]).detach().sum(0).cpu().double()
    return {name: (t / samples).to(like[name].dtype) for name, t in total.items()}


def _model_hvp(model: nn.Module, params: Params, buffers: Params, batches: Sequence[tuple]) -> HVP:
    """HVPs of the mean cross-entropy over `batches`, summed batch by batch to bound memory."""
    count = sum(len(y) for _, y in batches)

    def batch_hvp(x: torch.Tensor, y: torch.Tensor) -> HVP:
        def loss(p: Params) -> torch.Tensor:
            logits = functional_call(model, (p, buffers), (x,))
            return F.cross_entropy(logits, y, reduction="sum") / count

        return loss_hvp(loss, params)

    per_batch = [batch_hvp(x, y) for x, y in batches]

    def hvp(v: Params) -> Params:
        parts = [f(v) for f in per_batch]
        return {name: sum(part[name] for part in parts) for name in v}

    return hvp


def hessian_diagonal(
    model: nn.Module,
    dataset,
    *,
    samples: int = 100,
    limit: int = 1000,
    batch_size: int = 500,
    mask: Mask | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> Params:
    """Estimate diag(H) of the train loss at the model's (masked) weights, per parameter tensor.

    Covers every trainable parameter (weights, biases, BatchNorm affine); pruned entries are 0.
    The model's weights, buffers and mode are left as they were.
    """
    model.to(device)
    named = dict(model.named_parameters())
    if mask:
        unknown = [name for name in mask if name not in named]
        if unknown:
            raise LmcError(
                f"mask tensor '{unknown[0]}' is not a parameter of this model; use its mask"
            )
    params = {
        name: (p.detach() * mask[name].to(p.device, p.dtype))
        if mask and name in mask
        else p.detach()
        for name, p in named.items()
    }
    buffers = {name: b.detach() for name, b in model.named_buffers()}
    batches = list(dataset.eval_batches("train", batch_size=batch_size, device=device, limit=limit))
    if not batches:
        raise LmcError("no training examples for the Hessian estimate; check the dataset and limit")
    was_training = model.training
    model.eval()
    try:
        hvp = _model_hvp(model, params, buffers, batches)
        return hutchinson_diagonal(hvp, params, samples=samples, seed=seed, mask=mask)
    finally:
        model.train(was_training)


def trace(diag: Params) -> float:
    """The trace estimate that goes with a diagonal estimate: sum_i z_i (Hz)_i = z^T H z."""
    return float(sum(t.double().sum() for t in diag.values()))


def summary(diag: Params, mask: Mask | None = None, top_k: int = 5) -> dict[str, float]:
    """Flat metrics for logging: mean / max / min / trace over unmasked entries, the `top_k`
    largest entries, and each tensor's mean (`layer_mean/<name>`, schema.LAYER_MEAN)."""
    kept = {
        name: t[mask[name].to(t.device)] if mask and name in mask else t.reshape(-1)
        for name, t in diag.items()
    }
    flat = torch.cat([t.reshape(-1).double() for t in kept.values()])
    if flat.numel() == 0:
        raise LmcError("the Hessian diagonal has no unmasked entries to summarise")
    out = {
        "mean": float(flat.mean()),
        "max": float(flat.max()),
        "min": float(flat.min()),
        "trace": float(flat.sum()),
    }
    for i, value in enumerate(torch.topk(flat, min(top_k, flat.numel())).values.tolist()):
        out[f"top_{i + 1}"] = value
    for name, t in kept.items():
        if t.numel():
            out[f"{LAYER_MEAN}{name}"] = float(t.double().mean())
    return out
