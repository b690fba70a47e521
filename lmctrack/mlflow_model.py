"""What plain MLflow runs to load a registered lmctrack state, without unpickling anything.

A state's MLmodel names this module as its loader (`loader_module: lmctrack.mlflow_model`), so
with lmctrack installed, `mlflow.pyfunc.load_model("models:/<name>/<version>").predict(x)` calls
_load_pyfunc on the state's folder: the network is rebuilt from the architecture recorded with
the state (lmctrack.json; the user's own network wherever its package is importable), the
safetensors files are checked against their recorded sha256 and loaded with the mask applied,
and predict returns the logits (BatchNorm in eval mode).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmctrack.config.params import ModelConfig
from lmctrack.engine.models import build_model
from lmctrack.engine.state import load_state
from lmctrack.errors import LmcError

DESCRIPTION_FILE = "lmctrack.json"


class StateModel:
    """The network of one state as a pyfunc model: inputs of its dtype in (float32, or int64
    tokens), logits out."""

    def __init__(self, network: nn.Module, dtype: torch.dtype = torch.float32) -> None:
        self.network = network.eval()
        self.dtype = dtype

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> Any:
        x = torch.as_tensor(model_input, dtype=self.dtype)
        with torch.no_grad():
            return self.network(x).numpy()


def load_network(folder: Path) -> nn.Module:
    """The network of the state stored in folder, its masked weights loaded, in eval mode."""
    description = json.loads((folder / DESCRIPTION_FILE).read_text())
    arch = description.get("architecture")
    if arch is None:
        raise LmcError(
            f"the state in {folder} was registered without its architecture; load it with "
            "lmctrack (lmctrack.load) or re-register it with a current lmctrack"
        )
    for name, expected in description.get("sha256", {}).items():
        if hashlib.sha256((folder / name).read_bytes()).hexdigest() != expected:
            raise LmcError(f"{folder / name} does not match its recorded sha256; re-create it")
    cfg = ModelConfig(name=arch["name"], width=arch["width"], kwargs=arch.get("kwargs", {}))
    shape = tuple(arch["input_shape"])
    example = torch.zeros(2, *shape, dtype=input_dtype(arch))
    network = build_model(cfg, arch["num_classes"], shape, init_seed=0, example=example)
    network.load_state_dict(load_state(folder).masked_weights(), strict=True)
    return network.eval()


def input_dtype(arch: dict[str, Any]) -> torch.dtype:
    """int64 for a network on tokens (its architecture says so), else float32."""
    return torch.int64 if arch.get("input_dtype") == "int64" else torch.float32


def _load_pyfunc(data_path: str) -> StateModel:
    """MLflow's loader-module entry point: data_path is the state's folder."""
    folder = Path(data_path)
    arch = json.loads((folder / DESCRIPTION_FILE).read_text()).get("architecture") or {}
    return StateModel(load_network(folder), input_dtype(arch))
