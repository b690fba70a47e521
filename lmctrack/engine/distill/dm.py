"""Distribution Matching (Zhao & Bilen 2023): match per-class mean embeddings under random nets.

Every iteration draws a freshly initialised network (never trained), embeds a random real batch
of every class and the synthetic set, and moves the synthetic examples by SGD (momentum 0.5) to
close sum_c ||mean embed(real_c) - mean embed(syn_c)||^2. The embedding is the input of the
network's output layer (the penultimate features), read by a forward hook, so any registry
network serves. No expert training, no unrolling: the cheap method.

As in the reference's BatchNorm branch, all real batches go through the network in one forward
pass and the synthetic set in another, in train mode; for networks without BatchNorm that is the
same as one pass per class. Differentiable augmentation is not carried over (as for MTT).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lmctrack.config.params import ModelConfig
from lmctrack.engine.data import Dataset, derive_seed
from lmctrack.engine.distill.synthetic import (
    Distilled,
    Progress,
    SyntheticParams,
    class_indices,
    initial_synthetic,
    matching_loop,
    params_dict,
    tensor_dataset,
)
from lmctrack.engine.models import build_model, output_layer_name
from lmctrack.errors import LmcError

DM_STREAM, DM_NETS = 15, 16  # tags of the seed streams: batches, random networks


@dataclass(frozen=True)
class DmParams(SyntheticParams):
    """The reference's hyper-parameters (main_DM.py): lr_img 1, batch_real 256.

    The reference runs 20000 iterations; on MNIST-1D 500 gave a better set than 2000. The
    network has no normalisation, so the loss scales with the inputs: lower lr_img for fewer
    images per class (5 per class diverges at 1, not at 0.2).
    """

    iterations: int = 500
    lr_img: float = 1.0
    batch_real: int = 256


def embed(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The penultimate features: what the output layer receives, captured by a forward hook."""
    captured: list[torch.Tensor] = []
    layer = model.get_submodule(output_layer_name(model))
    handle = layer.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0]))
    try:
        model(x)
    finally:
        handle.remove()
    return captured[0].flatten(1)


def class_means(features: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """Mean feature of each class; `features` holds the classes one after another."""
    return torch.stack([f.mean(0) for f in torch.split(features, counts)])


def distribution_matching_loss(
    model: nn.Module, x_real: torch.Tensor, real_counts: list[int], x_syn: torch.Tensor, ipc: int
) -> torch.Tensor:
    """sum_c ||mean embed(real_c) - mean embed(syn_c)||^2 (real and syn ordered by class)."""
    with torch.no_grad():
        real = class_means(embed(model, x_real), real_counts)
    syn = class_means(embed(model, x_syn), [ipc] * len(real_counts))
    return ((real - syn) ** 2).sum()


def random_network(
    model_cfg: ModelConfig, source: Dataset, seed: int, device: torch.device
) -> nn.Module:
    """A freshly initialised network in train mode whose weights need no gradient."""
    model = build_model(model_cfg, source.num_classes, source.input_shape, init_seed=seed)
    model.to(device).train()
    for w in model.parameters():
        w.requires_grad_(False)
    return model


def distill_dm(
    model_cfg: ModelConfig,
    dataset: Dataset,
    params: DmParams,
    *,
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
) -> Distilled:
    """Learn `params.images_per_class` examples per class whose mean embeddings match the data's."""
    source = tensor_dataset(dataset)
    if params.batch_real < 1:
        raise LmcError(f"batch_real={params.batch_real}; set it to 1 or more")
    device = torch.device(device)
    generator = torch.Generator().manual_seed(derive_seed(DM_STREAM, params.seed))
    x0, y = initial_synthetic(source, params, generator)
    x_syn = x0.to(device).requires_grad_(True)
    opt_img = torch.optim.SGD([x_syn], lr=params.lr_img, momentum=0.5)
    per_class = class_indices(source, params.images_per_class)
    counts = [min(params.batch_real, len(idx)) for idx in per_class]
    x_train = source.train.x

    def loss_at(it: int) -> torch.Tensor:
        model = random_network(model_cfg, source, derive_seed(DM_NETS, params.seed, it), device)
        picked = torch.cat(
            [
                idx[torch.randperm(len(idx), generator=generator)[:n]]
                for idx, n in zip(per_class, counts, strict=True)
            ]
        )
        x_real = x_train[picked.to(x_train.device)].to(device)
        return distribution_matching_loss(model, x_real, counts, x_syn, params.images_per_class)

    losses, seconds = matching_loop(params.iterations, loss_at, [opt_img], "lr_img", progress)
    return Distilled(x_syn.detach().cpu(), y, "dm", params_dict(params), losses, seconds=seconds)
