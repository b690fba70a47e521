"""The MLmodel file that makes a registered state a plain MLflow pyfunc model, without pickle.

The state's folder holds its safetensors files and lmctrack.json (the architecture: network
name or import path, width, the kwargs of the user's own network, number of classes, input
shape). The MLmodel written next to them names the loader
module lmctrack.mlflow_model, so `mlflow.pyfunc.load_model("models:/<name>/<version>")` rebuilds
the network from that description and reads the files; nothing is unpickled. The signature
(inputs of the dataset's shape and dtype: float32, or int64 tokens; float32 logits) and a small
input example make the UI
show the version's schema. Writing all this costs a few milliseconds per state.
"""

from __future__ import annotations

import json
import math
import sys
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.models import Model, ModelSignature
from mlflow.types import Schema, TensorSpec

from lmctrack.errors import LmcError

LOADER_MODULE = "lmctrack.mlflow_model"
ARCHITECTURE_KEYS = ("name", "width", "num_classes", "input_shape")
INT64 = "int64"
_EXAMPLE_FILE = "input_example.json"
_SERVING_FILE = "serving_input_example.json"
_EXAMPLE_LIMIT = 4096  # numbers in the input example; larger inputs (ImageNet) get none
_REQUIREMENTS = ("lmctrack", "mlflow", "torch", "safetensors")


def architecture(arch: dict[str, Any]) -> dict[str, Any]:
    """The architecture facts, checked and in JSON form (input_shape a list of ints)."""
    missing = [k for k in ARCHITECTURE_KEYS if k not in arch]
    if missing:
        raise LmcError(
            f"the architecture given to save_state lacks {', '.join(missing)}; pass "
            "name, width, num_classes and input_shape of the network"
        )
    width = arch["width"]
    kwargs = arch.get("kwargs") or {}
    return {
        "name": str(arch["name"]),
        "width": None if width is None else int(width),
        **({"kwargs": json.loads(json.dumps(kwargs))} if kwargs else {}),
        "num_classes": int(arch["num_classes"]),
        "input_shape": [int(n) for n in arch["input_shape"]],
        **({"input_dtype": INT64} if arch.get("input_dtype") == INT64 else {}),  # tokens
    }


def input_dtype(arch: dict[str, Any]) -> str:
    """The inputs' dtype: int64 (tokens) where recorded, else float32 (every earlier state)."""
    return arch.get("input_dtype", "float32")


def write_mlmodel(
    folder: Path, arch: dict[str, Any], *, name: str, run_id: str, model_id: str
) -> list[Path]:
    """Write MLmodel, requirements.txt and (for small inputs) the input example into folder."""
    shape = tuple(arch["input_shape"])
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(input_dtype(arch)), (-1, *shape))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, arch["num_classes"]), "logits")]),
    )
    model = Model(
        artifact_path=name,
        run_id=run_id,
        model_id=model_id,
        signature=signature,
        metadata={"lmctrack_architecture": arch},
    )
    model.add_flavor(
        "python_function",
        loader_module=LOADER_MODULE,
        python_version=".".join(map(str, sys.version_info[:3])),
    )
    files = [folder / "MLmodel", folder / "requirements.txt"]
    if math.prod(shape) <= _EXAMPLE_LIMIT:
        example = np.zeros((1, *shape), dtype=input_dtype(arch)).tolist()
        (folder / _EXAMPLE_FILE).write_text(json.dumps(example))
        (folder / _SERVING_FILE).write_text(json.dumps({"inputs": example}))
        model.saved_input_example_info = {
            "artifact_path": _EXAMPLE_FILE,
            "type": "ndarray",
            "serving_input_path": _SERVING_FILE,
        }
        files += [folder / _EXAMPLE_FILE, folder / _SERVING_FILE]
    model.save(str(files[0]))
    files[1].write_text("".join(f"{line}\n" for line in _requirements()))
    return files


@cache
def _requirements() -> tuple[str, ...]:
    """Pinned versions of what loading needs, so MLflow warns when they differ at load time."""
    pins = []
    for package in _REQUIREMENTS:
        try:
            pins.append(f"{package}=={metadata.version(package)}")
        except metadata.PackageNotFoundError:
            pins.append(package)
    return tuple(pins)
