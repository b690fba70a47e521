"""A State: a network's full state_dict (weights and BatchNorm buffers) plus an optional mask.

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

WEIGHTS_FILE = "state.safetensors"
MASK_FILE = "mask.safetensors"


@dataclass
class State:
    """Everything needed to rebuild a network at one point of training."""

    weights: dict[str, torch.Tensor]
    mask: Mask | None = None

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
    return files


def load_state(folder: Path) -> State:
    """Read a state written by save_state; a damaged file is a clear LmcError."""
    weights_path = folder / WEIGHTS_FILE
    if not weights_path.is_file():
        raise LmcError(f"no {WEIGHTS_FILE} in {folder}: the state was not saved by lmctrack")
    mask_path = folder / MASK_FILE
    try:
        weights = load_file(str(weights_path))
        mask = load_file(str(mask_path)) if mask_path.is_file() else None
    except (SafetensorError, OSError, ValueError) as e:
        raise LmcError(
            f"corrupted state file in {folder} ({e}); re-create it by re-running the step that "
            "produced it"
        ) from None
    return State(weights=weights, mask=mask)
