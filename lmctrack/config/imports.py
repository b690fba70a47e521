"""The user's own code by name: an import path ('package.module:Attr'), an installed plugin's
entry point (groups `lmctrack.models`, `lmctrack.datasets`, `lmctrack.pruning`), or a torchvision
model builder.

Only a name is recorded with a state (its architecture tag, its run's params), never a pickle, so
a network must be importable wherever the state is loaded: objects defined in `__main__` (a
script or a notebook cell), lambdas and local functions are refused, with the fix.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from lmctrack.errors import LmcError

MODELS_GROUP = "lmctrack.models"
DATASETS_GROUP = "lmctrack.datasets"
PRUNING_GROUP = "lmctrack.pruning"
TORCHVISION = "torchvision"
_MOVE = "move it into an importable module (a .py file on PYTHONPATH or an installed package)"


def is_user_name(name: str, group: str) -> bool:
    """Whether `name` is an import path or an installed plugin of `group`."""
    return ":" in name or any(ep.name == name for ep in entry_points(group=group))


def registry_name(name: str) -> str:
    """`name` as MLflow allows it in a registered model name (no ':' or '/')."""
    return name.replace(":", ".").replace("/", ".")


def resolve(name: str, group: str, key: str) -> Callable[..., Any]:
    """The class or factory `name` stands for; `key` is the params field that named it."""
    plugin = next((ep for ep in entry_points(group=group) if ep.name == name), None)
    if plugin is not None:
        return _loaded(plugin.value, key, lambda: plugin.load())
    module, _, attr = name.partition(":")
    if not module or not attr:
        raise LmcError(f"{key} '{name}' is not an import path; write 'package.module:Attr'")
    if module == "__main__":
        raise LmcError(f"{key} '{name}' is defined in __main__; {_MOVE}")
    if module == TORCHVISION and group == MODELS_GROUP:
        return _torchvision_builder(attr, key)
    return _loaded(name, key, lambda: _attribute(module, attr, key, name))


def _loaded(name: str, key: str, load: Callable[[], Any]) -> Callable[..., Any]:
    target = load()
    if not callable(target):
        raise LmcError(f"{key} '{name}' is a {type(target).__name__}; name a class or a factory")
    return target


def _attribute(module: str, attr: str, key: str, name: str) -> Any:
    try:
        found: Any = importlib.import_module(module)
    except ModuleNotFoundError as e:
        raise LmcError(
            f"{key} '{name}': no module named '{e.name}'; install the package that holds it "
            "(pip install -e <folder>) or add its folder to PYTHONPATH"
        ) from None
    except Exception as e:  # the user's module failed while importing
        raise LmcError(
            f"{key} '{name}': importing {module} failed ({type(e).__name__}: {e}); fix the module"
        ) from None
    for part in attr.split("."):
        if not hasattr(found, part):
            raise LmcError(
                f"{key} '{name}': {module} has no attribute '{attr}'; check the name after ':'"
            )
        found = getattr(found, part)
    return found


def _torchvision_builder(builder: str, key: str) -> Callable[..., Any]:
    """torchvision.models.get_model(builder, weights=None): random init, nothing downloaded."""
    from torchvision import models

    if builder not in models.list_models():
        raise LmcError(
            f"{key} 'torchvision:{builder}' is not a torchvision model builder; use one of "
            "torchvision.models.list_models(), e.g. 'torchvision:resnet18'"
        )

    def build(**kwargs: Any):
        if kwargs.get("weights") is not None or kwargs.get("pretrained"):
            raise LmcError(
                f"{key} 'torchvision:{builder}': lmctrack never downloads weights; remove "
                "weights/pretrained from model.kwargs (W0 is a random initialisation)"
            )
        return models.get_model(builder, **{**kwargs, "weights": None})

    return build


def import_path(obj: Callable[..., Any], key: str) -> str:
    """The 'package.module:Attr' of a class or function, checked to import back to `obj`."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not module or not qualname or "<lambda>" in qualname or "<locals>" in qualname:
        raise LmcError(f"{key} {obj!r} has no import path (a lambda or a local); {_MOVE}")
    if module == "__main__":
        raise LmcError(f"{key} {qualname} is defined in __main__ (a script or notebook); {_MOVE}")
    path = f"{module}:{qualname}"
    if _attribute(module, qualname, key, path) is not obj:
        raise LmcError(f"{key} {qualname} is not what {path} imports; {_MOVE}")
    return path
