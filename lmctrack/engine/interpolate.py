"""Linear paths between two states and the barriers along them (the paper's instability).

Convention: W_alpha = (1 - alpha) * W_A + alpha * W_B, so alpha=0 is A and alpha=1 is B. The
paper writes the path the other way round; its error barrier is symmetric, so the numbers agree.

Two barrier definitions are reported, each under its own name:
- `error_barrier` (paper, Section 2): sup_alpha E(W_alpha) - mean(E(W_A), E(W_B)).
- `loss_barrier_linear` (Entezari et al. 2022): max_alpha [L(W_alpha) - ((1-alpha) L(W_A) +
  alpha L(W_B))]. The two coincide only when the endpoint values are equal.

BatchNorm policy `bn`: "interpolate" treats running_mean / running_var like weights; "reset"
recomputes them at every alpha with a pass over the training data (torch.optim.swa_utils.update_bn),
since naively interpolated statistics can create barriers that the weights do not have. "repair"
(Jordan et al. 2022, lmctrack.engine.repair) interpolates everything, then rescales every hidden
channel of W_alpha so that its mean and std on training data are the interpolation of the
endpoints'; it needs the endpoints, so it exists for paths only.

Evaluation: the points of a path are stacked and evaluated in batched passes
(lmctrack.engine.batched, vmap over the stacked W_alpha, as many points per pass as fit a memory
budget), the BatchNorm reset included; it equals the per-alpha loop (`batched=False`, the reference)
to float tolerance. A policy outside BATCHED_POLICIES runs the per-alpha loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from lmctrack.config import schema
from lmctrack.engine.batched import evaluate_stacked, networks_per_pass, recompute_bn_stacked, stack
from lmctrack.engine.data import Dataset
from lmctrack.engine.evaluate import check_fits, evaluate, first_mismatch
from lmctrack.engine.repair import Repair
from lmctrack.engine.state import State
from lmctrack.errors import LmcError

BN_POLICIES = ("interpolate", "reset")  # for any point of weight space (paths, planes)
PATH_POLICIES = (*BN_POLICIES, "repair")  # repair needs both endpoints of a path
BATCHED_POLICIES = ("interpolate", "reset")  # the others run the per-alpha loop
MASK_MODES = ("same", "each")
_RESET_VALUES = {"running_mean": 0.0, "running_var": 1.0, "num_batches_tracked": 0}


def error_barrier(errors: Sequence[float]) -> float:
    """The paper's error barrier height: the path's worst error minus the endpoints' mean."""
    if len(errors) < 2:
        raise ValueError("an error barrier needs a curve of at least two points (the endpoints)")
    return max(errors) - (errors[0] + errors[-1]) / 2


def loss_barrier_linear(losses: Sequence[float], alphas: Sequence[float]) -> float:
    """Entezari et al.'s barrier: the largest excess of the loss over the endpoints' chord."""
    if len(losses) != len(alphas) or len(alphas) < 2 or alphas[0] != 0 or alphas[-1] != 1:
        raise ValueError("losses and alphas must have equal lengths, with alphas from 0 to 1")
    start, end = losses[0], losses[-1]
    return max(loss - ((1 - a) * start + a * end) for loss, a in zip(losses, alphas, strict=True))


@dataclass
class PathResult:
    """Error and loss along a linear path, per split, with the policies that produced them."""

    alphas: list[float]
    curves: dict[str, dict[str, list[float]]]  # split -> {"error": [...], "loss": [...]}
    bn: str
    mask_mode: str

    def _curve(self, split: str, metric: str) -> list[float]:
        if split not in self.curves:
            raise LmcError(
                f"no '{split}' curve on this path (have: {', '.join(self.curves)}); "
                f"interpolate with splits including '{split}'"
            )
        return self.curves[split][metric]

    def error_barrier(self, split: str) -> float:
        return error_barrier(self._curve(split, "error"))

    def loss_barrier_linear(self, split: str) -> float:
        return loss_barrier_linear(self._curve(split, "loss"), self.alphas)

    def summary(self) -> dict[str, float]:
        """Flat metrics named '<split>.<quantity>', ready to log."""
        out: dict[str, float] = {}
        for split, curve in self.curves.items():
            named = {
                schema.ERROR_BARRIER: self.error_barrier(split),
                schema.LOSS_BARRIER: self.loss_barrier_linear(split),
                schema.ERROR_ALPHA0: curve["error"][0],
                schema.ERROR_ALPHA1: curve["error"][-1],
                schema.ERROR_MAX: max(curve["error"]),
                schema.LOSS_ALPHA0: curve["loss"][0],
                schema.LOSS_ALPHA1: curve["loss"][-1],
            }
            out.update({schema.metric(split, name): value for name, value in named.items()})
        return out


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise LmcError(f"{name}='{value}' is not known; use one of: {', '.join(allowed)}")


def _check_mask_fits(state: State, side: str) -> None:
    for name, mask in (state.mask or {}).items():
        if name not in state.weights or state.weights[name].shape != mask.shape:
            raise LmcError(
                f"the mask of {side} does not fit its weights at '{name}'; "
                "re-create the mask from this state's model"
            )


def check_compatible(a: State, b: State, mask_mode: str = "same") -> None:
    """Raise LmcError unless a straight line from A to B is meaningful.

    Both states must come from the same architecture. With mask_mode="same" both must be dense
    or carry equal masks (copies of one subnetwork); mask_mode="each" lets each endpoint keep its
    own mask (e.g. IMP level n against level n+1).
    """
    _check_choice("mask_mode", mask_mode, MASK_MODES)
    problem = first_mismatch(a.weights, b.weights, ("A", "B"))
    if problem is not None:
        raise LmcError(
            f"states are from different architectures: {problem}; "
            "interpolate states of the same model"
        )
    _check_mask_fits(a, "A")
    _check_mask_fits(b, "B")
    if mask_mode == "each" or (a.mask is None and b.mask is None):
        return
    if a.mask is None or b.mask is None:
        dense = "A" if a.mask is None else "B"
        raise LmcError(
            f"{dense} is dense but the other endpoint is masked; interpolate copies of one "
            "subnetwork, or use --each-mask (mask_mode='each') to compare different subnetworks"
        )
    problem = first_mismatch(a.mask, b.mask, ("A's mask", "B's mask"))
    if problem is None:
        problem = next(
            (
                f"'{n}' differs in {int((m != b.mask[n]).sum())} entries"
                for n, m in a.mask.items()
                if not torch.equal(m, b.mask[n])
            ),
            None,
        )
    if problem is not None:
        raise LmcError(
            f"masks differ: {problem}; interpolate copies of one subnetwork, "
            "or use --each-mask (mask_mode='each') to compare different subnetworks"
        )


def _lerp(
    wa: dict[str, torch.Tensor], wb: dict[str, torch.Tensor], alpha: float, bn: str
) -> dict[str, torch.Tensor]:
    """W_alpha of two compatible (masked) weight dicts; integer buffers are taken from A.

    torch.lerp is exact at both ends, so alpha=0 gives A and alpha=1 gives B bit for bit, and
    entries that are 0 in both endpoints (a shared mask) stay exactly 0.
    """
    out = {}
    for name, ta in wa.items():
        buffer = name.rsplit(".", 1)[-1]
        if bn == "reset" and buffer in _RESET_VALUES:
            out[name] = torch.full_like(ta, _RESET_VALUES[buffer])
        elif ta.is_floating_point():
            out[name] = torch.lerp(ta, wb[name], alpha)
        else:
            out[name] = ta
    return out


def interpolate_states(
    a: State, b: State, alpha: float, *, bn: str, mask_mode: str = "same"
) -> dict[str, torch.Tensor]:
    """The state_dict W_alpha = (1 - alpha) W_A + alpha W_B of the masked endpoints.

    With bn="reset" the BatchNorm running statistics are returned at their reset values (mean 0,
    variance 1): they are meaningless until recomputed on training data, which linear_path does.
    """
    _check_choice("bn", bn, BN_POLICIES)
    check_compatible(a, b, mask_mode)
    return _lerp(a.masked_weights(), b.masked_weights(), alpha, bn)


def linear_path(
    model: nn.Module,
    a: State,
    b: State,
    dataset: Dataset,
    *,
    alphas: int = 30,
    splits: Sequence[str] = ("test",),
    bn: str = "reset",
    mask_mode: str = "same",
    device: str | torch.device = "cpu",
    eval_limit: int | None = None,
    bn_limit: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    batched: bool | None = None,
) -> PathResult:
    """Evaluate error and loss at `alphas` evenly spaced points of [0, 1], endpoints included.

    `model` is a template of the right architecture; its weights are overwritten. `bn_limit`
    caps the training examples used to recompute BatchNorm statistics under bn="reset".
    batched=False evaluates one alpha at a time (the reference the batched passes are tested on);
    None (default) stacks the alphas on CUDA only: on a CPU the stacked passes are slower
    (grouped convolutions; benchmarks/paths.py).
    bn="repair" measures the endpoints' channel statistics on the same training examples.
    """
    _check_choice("bn", bn, PATH_POLICIES)
    if alphas < 2:
        raise LmcError(f"alphas={alphas}: a path needs at least 2 points (the endpoints)")
    if not splits:
        raise LmcError("no splits to evaluate; pass splits such as ('test', 'train')")
    check_compatible(a, b, mask_mode)
    check_fits(model, a)
    model.to(device)
    wa = {k: v.to(device) for k, v in a.masked_weights().items()}
    wb = {k: v.to(device) for k, v in b.masked_weights().items()}
    points = torch.linspace(0, 1, alphas, dtype=torch.float64).tolist()
    if batched is None:
        batched = torch.device(device).type == "cuda"
    path = _stacked_path if batched and bn in BATCHED_POLICIES else _path_per_alpha
    curves = path(
        model, wa, wb, points, dataset, splits, bn, device, eval_limit, bn_limit, progress
    )
    return PathResult(alphas=points, curves=curves, bn=bn, mask_mode=mask_mode)


Curves = dict[str, dict[str, list[float]]]


def _path_per_alpha(
    model, wa, wb, points, dataset, splits, bn, device, eval_limit, bn_limit, progress
) -> Curves:
    """Load each W_alpha into the template, apply the BatchNorm policy, evaluate."""
    curves: Curves = {split: {"error": [], "loss": []} for split in splits}
    fix = None
    if bn == "repair":  # the endpoints' statistics, measured once for the whole path
        batches = dataset.eval_batches("train", batch_size=1000, device=device, limit=bn_limit)
        fix = Repair(model, wa, wb, batches)
    for i, alpha in enumerate(points):
        weights = _lerp(wa, wb, alpha, bn)
        model.load_state_dict(weights if fix is None else fix(weights, alpha), strict=True)
        if bn == "reset":
            recompute_bn(model, dataset, device=device, limit=bn_limit)
        for split in splits:
            result = evaluate(model, dataset, split, device=device, limit=eval_limit)
            curves[split]["error"].append(result.error)
            curves[split]["loss"].append(result.loss)
        if progress is not None:
            progress(i + 1, len(points))
    return curves


def _stacked_path(
    model, wa, wb, points, dataset, splits, bn, device, eval_limit, bn_limit, progress
) -> Curves:
    """The same curves from passes over stacked W_alpha, as many alphas per pass as fit."""
    curves: Curves = {split: {"error": [], "loss": []} for split in splits}
    per_pass = networks_per_pass(model, dataset, 1000, device)
    for first in range(0, len(points), per_pass):
        chunk = points[first : first + per_pass]
        stacked = stack([_lerp(wa, wb, alpha, bn) for alpha in chunk], device)
        if bn == "reset":
            recompute_bn_stacked(model, stacked, dataset, device=device, limit=bn_limit)
        for split in splits:
            for loss, error in evaluate_stacked(
                model, stacked, dataset, split, device=device, limit=eval_limit
            ):
                curves[split]["error"].append(error)
                curves[split]["loss"].append(loss)
        if progress is not None:
            for i in range(first, first + len(chunk)):
                progress(i + 1, len(points))
    model.load_state_dict({k: v[-1] for k, v in stacked.items()})  # the template ends at alpha=1
    return curves


def recompute_bn(
    model: nn.Module,
    dataset: Dataset,
    *,
    device: str | torch.device = "cpu",
    limit: int | None = None,
    batch_size: int = 1000,
) -> None:
    """Reset and recompute BatchNorm running statistics from training data (no augmentation).

    update_bn semantics: cumulative average over batches (momentum=None) in train mode; the
    model's mode is restored. A network without BatchNorm is left untouched.
    """
    batches = dataset.eval_batches("train", batch_size=batch_size, device=device, limit=limit)
    update_bn(batches, model)
