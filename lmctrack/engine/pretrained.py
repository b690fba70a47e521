"""W0 from the user's own checkpoint: fine-tuning from a pretrained network (Neyshabur et al.
2020 found such copies linearly connected; forking at k = 0 measures it).

The file is read without running code: a safetensors file, or a PyTorch state_dict read with
`weights_only`. It must be a state_dict of model.name; only the output layer may differ, when the
number of classes does: it is then replaced by the seeded one of W0 that model.init would have
made, and the replacement is reported so that the lineage records it.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from lmctrack.engine.models import output_layer_name
from lmctrack.errors import LmcError


@dataclass
class Pretrained:
    """The weights W0 starts from, and the output layer replaced (or None)."""

    weights: dict[str, torch.Tensor]
    replaced: str | None


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file or of a torch.save'd state_dict (weights_only)."""
    fix = "pass a safetensors file or a torch.save(model.state_dict()) file"
    if not path.is_file():
        raise LmcError(f"checkpoint {path} does not exist; {fix}")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, pickle.UnpicklingError, RuntimeError, EOFError, OSError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise LmcError(
            f"checkpoint {path} is not readable as a state_dict ({reason}); {fix}"
        ) from None
    if not isinstance(loaded, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        raise LmcError(
            f"checkpoint {path} holds a {type(loaded).__name__}, not a state_dict; {fix}"
        )
    return loaded


def as_w0(model: nn.Module, path: Path, name: str) -> Pretrained:
    """The checkpoint as W0 of `model` (a freshly initialised network of model.name `name`): its
    tensors, in the model's dtypes; an output layer of another class count replaced by the
    model's own, seeded one. Any other difference is an architecture mismatch."""
    loaded = read_state_dict(path)
    mine = model.state_dict()
    head = output_layer_name(model)
    missing = [k for k in mine if k not in loaded]
    extra = [k for k in loaded if k not in mine]
    if missing or extra:
        what = f"'{missing[0]}' is missing" if missing else f"'{extra[0]}' is not in {name}"
        raise LmcError(f"checkpoint {path} is not a state_dict of {name}: {what}; {_fix(name)}")
    differ = [k for k in mine if loaded[k].shape != mine[k].shape]
    body = [k for k in differ if not k.startswith(f"{head}.")]
    if body:
        k = body[0]
        raise LmcError(
            f"checkpoint {path} does not fit {name}: '{k}' has shape {tuple(loaded[k].shape)}, "
            f"{name} has {tuple(mine[k].shape)}; {_fix(name)}"
        )
    weights = {k: (mine[k] if k in differ else loaded[k]).to(mine[k].dtype) for k in mine}
    replaced = None
    if differ:
        before, after = loaded[f"{head}.weight"].shape[0], mine[f"{head}.weight"].shape[0]
        replaced = f"{head}: {before} -> {after} classes, seeded"
    return Pretrained(weights, replaced)


def _fix(name: str) -> str:
    return f"pass a checkpoint of {name}, or set model.name to the network it was saved from"
