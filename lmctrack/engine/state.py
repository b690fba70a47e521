"""A State: a network's full state_dict (weights and BatchNorm buffers) plus an optional mask,
and for a rewind state Wk the optimizer's state at k (instability.optimizer_state: carry).

States are stored as safetensors files so that loading one never executes code. Each file is
written to a temporary name and renamed, so a kill mid-write never leaves a truncated file under
the real name; files get 0666 minus the umask (0644 usually), like the rest of a store.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from lmctrack.errors import LmcError

Mask = dict[str, torch.Tensor]  # prunable parameter name -> bool tensor (True = kept)
Slots = dict[int, dict]  # torch.optim's state_dict()["state"]: parameter index -> its slots

WEIGHTS_FILE = "state.safetensors"
MASK_FILE = "mask.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
_SCALAR = "#scalar"  # a slot that is a Python number, kept as a 0-dim tensor in the file


@dataclass
class State:
    """Everything needed to rebuild a network at one point of training."""

    weights: dict[str, torch.Tensor]
    mask: Mask | None = None
    optimizer: Slots | None = None  # the training's optimizer state at this step, if kept

    def density(self) -> float | None:
        """Fraction of prunable weights kept by the mask (None for a dense state)."""
        if self.mask is None:
            return None
        kept = sum(int(m.sum()) for m in self.mask.values())
        total = sum(m.numel() for m in self.mask.values())
        return kept / total

    def masked_weights(self) -> dict[str, torch.Tensor]:
        """The weights with the mask applied (pruned entries exactly 0)."""
        if self.mask is None:
            return dict(self.weights)
        return {
            k: v * self.mask[k].to(v.dtype) if k in self.mask else v
            for k, v in self.weights.items()
        }


def non_finite(state: State) -> str | None:
    """The name of the first floating tensor holding NaN or inf, else None: such weights are a
    diverged training or a damaged file, never a result."""
    for name, tensor in state.weights.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def flat_slots(slots: Slots) -> dict[str, torch.Tensor]:
    """Optimizer slots as safetensors holds them: '<index>/<name>' -> tensor (numbers 0-dim)."""
    flat = {}
    for index, slot in slots.items():
        for name, value in slot.items():
            if torch.is_tensor(value):
                flat[f"{index}/{name}"] = value.detach().cpu().contiguous()
            else:
                flat[f"{index}/{name}{_SCALAR}"] = torch.tensor(value)
    return flat


def nested_slots(flat: dict[str, torch.Tensor]) -> Slots:
    """flat_slots undone, bit for bit (numbers back to Python numbers)."""
    slots: Slots = {}
    for key, value in flat.items():
        index, name = key.split("/", 1)
        if name.endswith(_SCALAR):
            slots.setdefault(int(index), {})[name.removesuffix(_SCALAR)] = value.item()
        else:
            slots.setdefault(int(index), {})[name] = value
    return slots


def _write(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Write a safetensors file whole or not at all (temp file, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(save(tensors))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_state(state: State, folder: Path) -> list[Path]:
    """Write the state as safetensors files into folder; returns the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / WEIGHTS_FILE]
    _write({k: v.detach().cpu().contiguous() for k, v in state.weights.items()}, files[0])
    if state.mask is not None:
        files.append(folder / MASK_FILE)
        _write({k: v.cpu().to(torch.bool).contiguous() for k, v in state.mask.items()}, files[1])
    if state.optimizer is not None:
        files.append(folder / OPTIMIZER_FILE)
        _write(flat_slots(state.optimizer), files[-1])
    return files


def load_state(folder: Path) -> State:
    """Read a state written by save_state; a damaged file is a clear LmcError."""
    weights_path = folder / WEIGHTS_FILE
    if not weights_path.is_file():
        raise LmcError(f"no {WEIGHTS_FILE} in {folder}: the state was not saved by lmctrack")
    mask_path, optimizer_path = folder / MASK_FILE, folder / OPTIMIZER_FILE
    try:
        weights = load_file(str(weights_path))
        mask = load_file(str(mask_path)) if mask_path.is_file() else None
        optimizer = load_file(str(optimizer_path)) if optimizer_path.is_file() else None
    except (SafetensorError, OSError, ValueError) as e:
        raise LmcError(
            f"corrupted state file in {folder} ({e}); re-create it by re-running the step that "
            "produced it"
        ) from None
    slots = None if optimizer is None else nested_slots(optimizer)
    return State(weights=weights, mask=mask, optimizer=slots)
