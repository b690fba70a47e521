"""The model registry: networks by name, built and initialised deterministically from a seed.

model = build_model(params.model, num_classes=10, input_shape=(40,), init_seed=0)  # W0
prunable_names(model, params.prune)  # tensors IMP prunes
output_layer_name(model)             # e.g. "fc"

Besides the registry's networks, model.name may be the user's own class or factory
('package.module:Attr'), a `lmctrack.models` plugin or 'torchvision:<builder>' (models.user).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch
from torch import nn

from lmctrack.config.imports import MODELS_GROUP, is_user_name
from lmctrack.config.params import ModelConfig, PruneConfig
from lmctrack.engine.models import user
from lmctrack.engine.models.base import Network, reference_init
from lmctrack.engine.prune import choose_prunable
from lmctrack.errors import LmcError

__all__ = [
    "MODELS",
    "Network",
    "build_for_data",
    "build_model",
    "output_layer_name",
    "prunable_names",
]


@dataclass(frozen=True)
class Entry:
    """Where a registered network is defined; imported on first use (torchvision is slow)."""

    module: str
    cls: str

    def load(self) -> type[Network]:
        return getattr(importlib.import_module(f"lmctrack.engine.models.{self.module}"), self.cls)


MODELS: dict[str, Entry] = {
    "lenet_300_100": Entry("mlp", "LeNet300100"),
    "mnist1d_mlp": Entry("mlp", "Mnist1dMlp"),
    "mnist1d_cnn": Entry("mnist1d_cnn", "Mnist1dCnn"),
    "mnist1d_cnn_bn": Entry("mnist1d_cnn", "Mnist1dCnnBn"),
    "cifar_resnet_20": Entry("cifar_resnet", "CifarResNet20"),
    "cifar_vgg_16": Entry("cifar_vgg", "CifarVgg16"),
    "resnet50": Entry("imagenet", "ResNet50"),
    "inception_v3": Entry("imagenet", "InceptionV3"),
}

_SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed takes


def _network_class(name: str) -> type[Network]:
    if name not in MODELS:
        raise LmcError(
            f"unknown model '{name}'; set model.name to one of: {', '.join(MODELS)}, an "
            "installed plugin's name, or your own network as 'package.module:Attr'"
        )
    return MODELS[name].load()


def _check_input(name: str, cls: type[Network], input_shape: tuple[int, ...]) -> None:
    if cls.accepts(input_shape):
        return
    fits = [other for other in MODELS if MODELS[other].load().accepts(input_shape)]
    advice = (
        f"use a model that takes it ({', '.join(fits)}) or other data" if fits else "use other data"
    )
    raise LmcError(
        f"model {name} cannot take inputs of shape {input_shape}: it needs {cls.input_needs}; "
        f"{advice}"
    )


def _width(name: str, cls: type[Network], width: int | None) -> int | None:
    if width is not None and cls.default_width is None:
        raise LmcError(f"model {name} has no width option; remove model.width")
    return width if width is not None else cls.default_width


def build_model(
    cfg: ModelConfig,
    num_classes: int,
    input_shape: tuple[int, ...],
    init_seed: int,
    example: torch.Tensor | None = None,
) -> Network:
    """The network `cfg.name` at initialisation W0, decided by init_seed alone.

    `example`: a real batch of the data (Dataset.example()), which a network not defined here is
    probed on; without it, float zeros of input_shape (what a registered float network takes).

    Construction runs on the CPU generator seeded inside torch.random.fork_rng, so the same seed
    gives a bit-identical state_dict and the caller's random state is left untouched.
    """
    input_shape = tuple(input_shape)
    if not _SEED_RANGE[0] <= init_seed <= _SEED_RANGE[1]:
        raise LmcError(f"init seed {init_seed} is out of range; use a seed in [0, 2**63)")
    own = cfg.name not in MODELS and is_user_name(cfg.name, MODELS_GROUP)
    if not own:
        cls = _network_class(cfg.name)
        _check_input(cfg.name, cls, input_shape)
        width = _width(cfg.name, cls, cfg.width)
        if cfg.kwargs:
            raise LmcError(f"model {cfg.name} takes no model.kwargs; remove them (or model.width)")
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(init_seed)
        model = (
            user.build(cfg, num_classes, input_shape, _example(example, input_shape))
            if own
            else cls(num_classes, input_shape, width)
        )
        if cfg.init == "reference":
            reference_init(model)
    return model


def build_for_data(cfg: ModelConfig, dataset, init_seed: int) -> Network:
    """build_model for `dataset`: its classes, its input shape, probed on a batch of its inputs."""
    return build_model(cfg, dataset.num_classes, dataset.input_shape, init_seed, dataset.example())


def _example(example: torch.Tensor | None, input_shape: tuple[int, ...]) -> torch.Tensor:
    if example is None:
        return torch.zeros(2, *input_shape)
    return example.detach().cpu()


def prunable_names(model: nn.Module, prune: PruneConfig | None = None) -> list[str]:
    """state_dict names of the tensors IMP prunes: conv/linear weights, per a registry network's
    rules or derived for any other network, then `prune.include` / `prune.exclude` applied."""
    names = model.prunable_names() if isinstance(model, Network) else user.prunable_names(model)
    if prune is None or not (prune.include or prune.exclude):
        return names
    weights = [name for name, p in model.named_parameters() if p.dim() > 1]
    return choose_prunable(names, weights, prune.include, prune.exclude)


def output_layer_name(model: nn.Module) -> str:
    """state_dict prefix of the output layer, e.g. "fc" (its tensors are "fc.weight", "fc.bias")."""
    return model.output_layer if isinstance(model, Network) else user.output_layer(model)
