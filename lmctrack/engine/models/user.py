"""A network lmctrack did not define (the user's class or factory, a plugin, a torchvision
builder): built from its name and `model.kwargs`, and what the paper's procedures need derived
from it rather than declared.

The output layer is the last conv / linear layer one forward pass calls (for a global-pool head
or a classifier registered early, the module order would be wrong); IMP prunes every conv and
linear weight but the output layer's, as the paper does. The same forward pass, on a real batch
of the user's data (integer tokens stay integers), checks that the network takes the data's
inputs and returns (batch, num_classes) logits, so a mismatch is one line at build time instead
of a shape error deep inside training. A forward returning a tuple, a dict or an object with
`.logits` (Hugging Face's convention) is refused with the fix: every analysis reads one tensor.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from lmctrack.config.imports import MODELS_GROUP, resolve
from lmctrack.config.params import ModelConfig
from lmctrack.errors import LmcError

LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_OUTPUT = "_lmctrack_output_layer"  # set on each network built here, read by output_layer()


def build(
    cfg: ModelConfig, num_classes: int, input_shape: tuple[int, ...], example: torch.Tensor
) -> nn.Module:
    """Call the class or factory `cfg.name` with `cfg.kwargs`, plus num_classes, input_shape and
    width where its signature names them and kwargs do not; probed on `example` inputs."""
    target = resolve(cfg.name, MODELS_GROUP, "model.name")
    named = _parameter_names(target)
    kwargs = dict(cfg.kwargs)
    if cfg.width is not None and "width" not in named:
        raise LmcError(
            f"model {cfg.name} takes no 'width' argument; remove model.width or pass the size "
            "in model.kwargs"
        )
    given = {"num_classes": num_classes, "input_shape": input_shape, "width": cfg.width}
    kwargs |= {k: v for k, v in given.items() if k in named and k not in kwargs and v is not None}
    try:
        model = target(**kwargs)
    except LmcError:
        raise
    except Exception as e:
        raise LmcError(
            f"model {cfg.name} failed to build with {kwargs} ({type(e).__name__}: {e}); fix "
            "model.kwargs"
        ) from None
    if not isinstance(model, nn.Module):
        raise LmcError(
            f"model {cfg.name} returned a {type(model).__name__}, not a torch.nn.Module; make "
            "it return the network"
        )
    setattr(model, _OUTPUT, _last_layer_called(model, cfg.name, num_classes, example))
    return model


def _parameter_names(target: Any) -> set[str]:
    try:
        return set(inspect.signature(target).parameters)
    except (TypeError, ValueError):  # builtins without a signature take what kwargs say
        return set()


def _last_layer_called(model: nn.Module, name: str, num_classes: int, example: torch.Tensor) -> str:
    """One forward pass in eval mode (statistics untouched): the output layer, and the checks."""
    calls: list[str] = []
    hooks = [
        module.register_forward_hook(lambda *_, layer=layer: calls.append(layer))
        for layer, module in model.named_modules()
        if isinstance(module, LAYERS)
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(example)
    except Exception as e:
        raise LmcError(
            f"model {name} fails on the data's inputs ({inputs(example)}) ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); fix model.kwargs or use data it takes"
        ) from None
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    if not isinstance(out, torch.Tensor):
        got = "an object with .logits" if hasattr(out, "logits") else f"a {type(out).__name__}"
        raise LmcError(
            f"model {name} returns {got}; lmctrack needs one tensor of logits: make forward "
            "return the class scores only (e.g. a wrapper module returning out.logits or out[0])"
        )
    if tuple(out.shape) != (len(example), num_classes):
        raise LmcError(
            f"model {name} returns {tuple(out.shape)} for {len(example)} inputs but the data "
            f"has {num_classes} classes; lmctrack needs logits of shape (batch, {num_classes}): "
            "fix the output layer's size (model.kwargs) or the labels"
        )
    if not calls:
        raise LmcError(f"model {name} has no conv or linear layer; IMP has nothing to prune")
    return calls[-1]


def output_layer(model: nn.Module) -> str:
    """The output layer's module name (the last one in module order for a network not built
    here)."""
    found = getattr(model, _OUTPUT, None)
    if found is not None:
        return found
    layers = [name for name, module in model.named_modules() if isinstance(module, LAYERS)]
    if not layers:
        raise LmcError(f"{type(model).__name__} has no conv or linear layer; nothing to prune")
    return layers[-1]


def prunable_names(model: nn.Module) -> list[str]:
    """Every conv / linear weight but the output layer's, in module order."""
    out = output_layer(model)
    return [
        f"{name}.weight"
        for name, module in model.named_modules()
        if isinstance(module, LAYERS) and name != out
    ]


def inputs(x: torch.Tensor) -> str:
    """Inputs as an error message names them: e.g. 'shape (16,) int64' (without the batch)."""
    return f"shape {tuple(x.shape[1:])} {str(x.dtype).removeprefix('torch.')}"
