"""The config keys that name the user's own code (model.kwargs, model.init, data.kwargs, a data
name that is an import path, the training recipe's optimizer, schedule and loss), added so that every existing config keeps its hash: a section that
mixes in QuietDefaults leaves the keys it names out of its dump while they hold their defaults,
so work recorded before the keys existed is still found and reused."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, SerializerFunctionWrapHandler, model_serializer

from lmctrack.config.imports import DATASETS_GROUP, is_user_name

BUILTIN_DATA = (
    "mnist1d", "digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "imagenet", "tensors"
)  # fmt: skip


class QuietDefaults(BaseModel):
    quiet: ClassVar[dict[str, Any]] = {}  # key -> the default it is left out of the dump at

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out = handler(self)
        return {k: v for k, v in out.items() if k not in self.quiet or v != self.quiet[k]}


def data_name(name: str) -> str:
    """A built-in dataset, an installed `lmctrack.datasets` plugin or 'package.module:factory'."""
    if name in BUILTIN_DATA or is_user_name(name, DATASETS_GROUP):
        return name
    raise ValueError(
        f"unknown dataset '{name}'; use one of {', '.join(BUILTIN_DATA)}, an installed plugin's "
        "name, or your own factory as 'package.module:factory'"
    )


CROSS_ENTROPY = "cross_entropy"
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "linear_decay", "cosine")


def _named(kind: str, choices: tuple[str, ...], example: str):
    def check(name: str) -> str:
        if name in choices or ":" in name:
            return name
        raise ValueError(
            f"unknown {kind} '{name}'; use one of {', '.join(choices)} or an import path such "
            f"as '{example}'"
        )

    return check


optimizer_name = _named("optimizer", OPTIMIZERS, "torch.optim:AdamW")
schedule_name = _named("schedule", SCHEDULES, "torch.optim.lr_scheduler:OneCycleLR")
loss_name = _named("loss", (CROSS_ENTROPY,), "mypackage.losses:focal")
