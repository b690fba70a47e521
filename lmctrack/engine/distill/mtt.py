"""Matching Training Trajectories (Cazenavette et al. 2022): learn data that retraces experts.

Experts are ordinary lmctrack trainings on the real data whose parameters are kept at every epoch
boundary (`expert_snapshot_steps`; `train_expert` does it with lmctrack.engine.train.train). Each
iteration picks a random expert and a random start epoch t < max_start_epoch, starts a student at
the expert's theta_t, takes `syn_steps` plain SGD steps with the learnable learning rate on
minibatches of the synthetic set (differentiably, through torch.func.functional_call), and
minimises ||theta_student - theta_(t+M)||^2 / ||theta_t - theta_(t+M)||^2 over the synthetic
examples and the learning rate, both by SGD with momentum 0.5, as the reference does.

Not carried over from the reference: differentiable augmentation (lmctrack's MNIST-1D has no
augmentation, and experts and students alike train without it) and ZCA whitening.
BatchNorm: the student runs in train mode, so each of its steps normalises with the statistics of
its synthetic minibatch, as the experts' steps did with real minibatches, and as the reference's
student (the module in train mode, its buffers outside the flat parameters) does. Running
statistics are no part of a trajectory: the student updates throwaway copies of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from lmctrack.config.params import ModelConfig, TrainConfig, iterations_per_epoch
from lmctrack.engine.data import Dataset, derive_seed
from lmctrack.engine.distill.synthetic import (
    Distilled,
    Progress,
    SyntheticParams,
    initial_synthetic,
    matching_loop,
    params_dict,
    tensor_dataset,
)
from lmctrack.engine.models import build_model
from lmctrack.engine.train import Noise, train
from lmctrack.errors import LmcError

Trajectory = list[dict[str, torch.Tensor]]  # an expert's parameters at epochs 0, 1, ..., E
MTT_STREAM = 14  # tag of the seed stream of the matching loop


@dataclass(frozen=True)
class MttParams(SyntheticParams):
    """The reference's hyper-parameters (names as in its distill.py; `lr_init` is lr_teacher).

    Defaults: tuned for MNIST-1D, 10 per class, mnist1d_cnn, experts trained by plain SGD at lr
    0.05 (benchmarks/distill.py). The reference's lr_img (1e3 on 32x32 images) diverges on
    40-sample signals with this CNN even at 100; 10 does not, and lr_lr 1e-7 keeps the learned
    lr from collapsing.
    """

    iterations: int = 200
    syn_steps: int = 20
    expert_epochs: int = 2
    max_start_epoch: int = 10
    lr_img: float = 10.0
    lr_lr: float = 1e-7
    lr_init: float = 0.05
    batch_syn: int | None = None  # None: the whole synthetic set in every student step

    def epochs_needed(self) -> int:
        """Expert epochs the sampling reaches: start t <= max_start_epoch - 1, target t + M."""
        return self.max_start_epoch - 1 + self.expert_epochs


def expert_snapshot_steps(num_examples: int, batch_size: int, epochs: int) -> list[int]:
    """The training steps at which an expert's parameters are kept: every epoch boundary."""
    ipe = iterations_per_epoch(num_examples, batch_size)
    return [e * ipe for e in range(epochs + 1)]


def parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters (what trajectories hold), detached copies on the CPU."""
    return {k: v.detach().cpu().clone() for k, v in model.named_parameters()}


def train_expert(
    model: nn.Module,
    dataset: Dataset,
    cfg: TrainConfig,
    noise: Noise,
    epochs: int,
    device: torch.device | str = "cpu",
) -> Trajectory:
    """Train `model` (at W0) for `epochs` epochs with the one training loop; its trajectory.

    The reference trains experts with plain SGD (momentum 0), which is what the student imitates.
    """
    steps = expert_snapshot_steps(dataset.num_examples("train"), cfg.batch_size, epochs)
    trajectory: Trajectory = []
    train(
        model,
        dataset,
        cfg,
        start=0,
        stop=steps[-1],
        noise=noise,
        device=device,
        at_steps=steps,
        on_step=lambda _, m: trajectory.append(parameters(m)),
        schedule_total=steps[-1],
    )
    return trajectory


def check_experts(experts: Sequence[Trajectory], model: nn.Module, params: MttParams) -> None:
    """Every expert long enough for the sampled (t, t + M) and shaped like the student."""
    if params.max_start_epoch < 1 or params.expert_epochs < 1:
        raise LmcError(
            f"max_start_epoch={params.max_start_epoch}, expert_epochs={params.expert_epochs}; "
            "set both to 1 or more"
        )
    if not experts:
        raise LmcError("MTT got no expert trajectories; train at least one expert")
    need = params.epochs_needed()
    shapes = {k: v.shape for k, v in model.named_parameters()}
    for i, trajectory in enumerate(experts):
        if len(trajectory) - 1 < need:
            raise LmcError(
                f"expert {i} has {len(trajectory) - 1} epochs but max_start_epoch "
                f"{params.max_start_epoch} and expert_epochs {params.expert_epochs} need {need}; "
                "train the experts longer or lower max_start_epoch / expert_epochs"
            )
        for epoch, snapshot in enumerate(trajectory):
            if {k: v.shape for k, v in snapshot.items() if k in shapes} != shapes:
                raise LmcError(
                    f"expert {i}, epoch {epoch} does not hold the parameters of the student "
                    "network; train the experts with the same model as the distillation"
                )


def trajectory_matching_loss(
    model: nn.Module,
    x_syn: torch.Tensor,
    y_syn: torch.Tensor,
    syn_lr: torch.Tensor,
    start: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    syn_steps: int,
    batch_syn: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """||theta_student - theta_target||^2 / ||theta_start - theta_target||^2, differentiable in
    x_syn and syn_lr; the student takes `syn_steps` SGD steps from `start` on synthetic batches.

    Minibatches follow the reference: chunks of a random permutation, taken until it is used up.
    """
    device = x_syn.device
    names = [k for k, _ in model.named_parameters()]
    student = {k: start[k].to(device).detach().requires_grad_(True) for k in names}
    buffers = {k: b.detach().clone() for k, b in model.named_buffers()}  # BatchNorm scratch
    batch = len(y_syn) if batch_syn is None else batch_syn
    chunks: list[torch.Tensor] = []
    for _ in range(syn_steps):
        if not chunks:
            perm = torch.randperm(len(y_syn), generator=generator).to(device)
            chunks = list(torch.split(perm, batch))
        idx = chunks.pop()
        logits = functional_call(model, {**student, **buffers}, (x_syn[idx],))
        loss = F.cross_entropy(logits, y_syn[idx])
        grads = torch.autograd.grad(loss, list(student.values()), create_graph=True)
        student = {k: w - syn_lr * g for (k, w), g in zip(student.items(), grads, strict=True)}
    moved = sum(((student[k] - target[k].to(device)) ** 2).sum() for k in names)
    span = sum(((start[k].to(device) - target[k].to(device)) ** 2).sum() for k in names)
    return moved / span


def distill_mtt(
    model_cfg: ModelConfig,
    dataset: Dataset,
    experts: Sequence[Trajectory],
    params: MttParams,
    *,
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
) -> Distilled:
    """Learn `params.images_per_class` examples per class whose student steps retrace `experts`."""
    source = tensor_dataset(dataset)
    device = torch.device(device)
    model = build_model(model_cfg, source.num_classes, source.input_shape, init_seed=0).to(device)
    check_experts(experts, model, params)
    if params.batch_syn is not None and params.batch_syn < 1:
        raise LmcError(f"batch_syn={params.batch_syn}; set it to 1 or more, or null (whole set)")
    model.train()
    for w in model.parameters():
        w.requires_grad_(False)  # the student's weights are the functional ones
    generator = torch.Generator().manual_seed(derive_seed(MTT_STREAM, params.seed))
    x0, y = initial_synthetic(source, params, generator)
    x_syn = x0.to(device).requires_grad_(True)
    y_syn = y.to(device)
    syn_lr = torch.tensor(params.lr_init, device=device).requires_grad_(True)
    opt_img = torch.optim.SGD([x_syn], lr=params.lr_img, momentum=0.5)
    opt_lr = torch.optim.SGD([syn_lr], lr=params.lr_lr, momentum=0.5)

    def loss_at(_: int) -> torch.Tensor:
        expert = experts[int(torch.randint(len(experts), (1,), generator=generator))]
        t = int(torch.randint(params.max_start_epoch, (1,), generator=generator))
        return trajectory_matching_loss(
            model,
            x_syn,
            y_syn,
            syn_lr,
            expert[t],
            expert[t + params.expert_epochs],
            params.syn_steps,
            params.batch_syn,
            generator,
        )

    losses, seconds = matching_loop(
        params.iterations, loss_at, [opt_img, opt_lr], "lr_img or lr_lr", progress
    )
    lr = float(syn_lr.detach())
    return Distilled(x_syn.detach().cpu(), y, "mtt", params_dict(params), losses, lr, seconds)
