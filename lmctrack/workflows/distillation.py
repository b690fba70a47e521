"""Dataset distillation as tracked work: experts as ordinary trainings, the distilled set as a
file with lineage, its quality measured the standard way.

MTT's experts are trainings of the expert recipe (plain SGD, a state registered at every epoch)
made by `train_runs`, so a second distillation with the same data, network and recipe reuses
their states. The producing run lists the real dataset and every expert state as inputs, logs the
distilled set as a dataset (its digest is the one IMP's mask search records when driven by the
file) and as an artifact, and carries the file's sha256; an identical distillation is reused.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from lmctrack.config import schema
from lmctrack.config.params import DataConfig, SeedConfig, Step, TrainConfig, config_hash
from lmctrack.config.schema import TENSORS
from lmctrack.engine.distill import (
    Distilled,
    DmParams,
    MttParams,
    Quality,
    distill_dm,
    distill_mtt,
    evaluate_quality,
    evaluation_recipe,
    write_distilled,
)
from lmctrack.engine.distill.synthetic import class_indices, tensor_dataset
from lmctrack.results.paper import Flat, to_dict
from lmctrack.workflows import jobs
from lmctrack.workflows.common import Context, made_by
from lmctrack.workflows.training_run import TrainedRun, train_runs

DISTILL_ARTIFACT = "distill.json"


@dataclass
class Distillation(Flat):
    """A registered distilled set: where it was written, how it was made, how good it is."""

    run_id: str
    method: str
    path: str  # the file (a `tensors` dataset: distilled x_train, y_train; the real test split)
    sha256: str  # of the file
    fingerprint: str  # digest of its tensors: the dataset that IMP's search runs log
    images_per_class: int
    size: int  # examples in the distilled set
    expert_runs: list[str]  # the experts' training runs (MTT; none for DM)
    expert_states: list[str]  # every expert state matched, run by run, epoch by epoch
    distilled_accuracy: list[float]  # test accuracy per seed, trained only on the distilled set
    random_accuracy: list[float]  # ... only on a random real subset of the same size
    losses: list[float]  # matching loss per iteration
    lr: float | None  # MTT's learned student learning rate
    seconds: dict[str, float] = field(default_factory=dict)  # experts, matching, quality
    definition: str = schema.DEFINITIONS["distill_quality"]
    reused: bool = False

    @property
    def quality(self) -> Quality:
        return Quality(self.distilled_accuracy, self.random_accuracy, self.size)

    def prune_data(self) -> DataConfig:
        """The `imp.prune_data` section that drives IMP's mask search with this set."""
        return DataConfig(name=TENSORS, path=self.path)


def distill(ctx: Context, out: Path) -> Distillation:
    """`lmctrack distill`: train (or reuse) the experts, learn the set, write it to
    out/distilled.safetensors, register it with its lineage and quality; reuse an identical one."""
    cfg = ctx.params.distill
    class_indices(tensor_dataset(ctx.dataset), cfg.images_per_class)  # before any expert trains
    began = time.perf_counter()
    experts = train_experts(ctx) if cfg.method == "mtt" else []
    expert_seconds = time.perf_counter() - began
    states = [uri for run in experts for _, uri in sorted(run.states.items())]
    p = ctx.params
    key = config_hash(p.data, p.model, cfg, states, schema.KIND_DISTILL)
    path = Path(out) / schema.DISTILLED_FILE
    with jobs.claimed(ctx, [key]):  # an identical distillation running now: wait, reuse it
        if (run_id := jobs.finished(ctx, key)) is not None:
            return reused(ctx, run_id, path)
        distilled = learn(ctx, [trajectory(ctx, run) for run in experts])
        params = {"method": cfg.method, "images_per_class": cfg.images_per_class}
        label = f"distill {cfg.method} {cfg.images_per_class}/class"
        with jobs.recorded(ctx, label, key=key, kind=schema.KIND_DISTILL, params=params) as run:
            run.log_dataset(ctx.data_ref)
            run.log_input_states(states)
            result = register(ctx, run, label, distilled, path, experts, states)
            result.seconds = {
                "experts": expert_seconds,
                "matching": distilled.seconds,
                "quality": result.seconds["quality"],
            }
            run.log_metrics({f"seconds.{k}": v for k, v in result.seconds.items()})
            run.log_json(to_dict(result), DISTILL_ARTIFACT)
    return result


def expert_context(ctx: Context) -> Context:
    """The context experts train in: the expert recipe as `train`, long enough for every sampled
    (t, t + M), with a state registered at every epoch boundary (MTT's trajectory)."""
    cfg = ctx.params.distill
    epochs = method_params(cfg).epochs_needed()
    recipe = TrainConfig(
        **cfg.expert.model_dump(),
        steps=Step(ep=epochs),
        rewind_steps=[Step(ep=e) for e in range(epochs + 1)],
        device=ctx.params.train.device,
    )
    return dataclasses.replace(ctx, params=ctx.params.model_copy(update={"train": recipe}))


def train_experts(ctx: Context) -> list[TrainedRun]:
    """MTT's experts as ordinary trainings (init, data order and augmentation seeds base + i):
    the same config finds the same runs, so re-distilling trains nothing."""
    expert_ctx = expert_context(ctx)
    base = ctx.params.seeds
    seeds = [
        SeedConfig(init=base.init + i, data_order=base.data_order + i, augment=base.augment + i)
        for i in range(ctx.params.distill.experts)
    ]
    return train_runs(expert_ctx, seeds)


def trajectory(ctx: Context, run: TrainedRun) -> list[dict]:
    """An expert's parameters at every epoch boundary, read back from the registry."""
    return [ctx.store.load_state(uri).weights for _, uri in sorted(run.states.items())]


def method_params(cfg) -> MttParams | DmParams:
    """The engine's hyper-parameters from the distill section (None: the method's default)."""
    common = {"images_per_class": cfg.images_per_class, "init": cfg.init, "seed": cfg.seed}
    if cfg.method == "dm":
        return DmParams(
            **common,
            iterations=cfg.iterations or DmParams.iterations,
            lr_img=cfg.lr_img or DmParams.lr_img,
            batch_real=cfg.batch_real,
        )
    return MttParams(
        **common,
        iterations=cfg.iterations or MttParams.iterations,
        lr_img=cfg.lr_img or MttParams.lr_img,
        syn_steps=cfg.syn_steps,
        expert_epochs=cfg.expert_epochs,
        max_start_epoch=cfg.max_start_epoch,
        lr_lr=cfg.lr_lr,
        lr_init=cfg.lr_init or cfg.expert.lr,
        batch_syn=cfg.batch_syn,
    )


def learn(ctx: Context, experts: list[list[dict]]) -> Distilled:
    """Run the configured method, its matching loss on the progress board."""
    cfg = ctx.params.distill
    params = method_params(cfg)
    ctx.board.add(schema.KIND_DISTILL, f"distill {cfg.method}", params.iterations)

    def progress(iteration: int, loss: float) -> None:
        ctx.board.update(schema.KIND_DISTILL, iteration + 1, {"loss": loss})

    options = {"device": ctx.device, "progress": progress}
    if cfg.method == "dm":
        return distill_dm(ctx.params.model, ctx.dataset, params, **options)
    return distill_mtt(ctx.params.model, ctx.dataset, experts, params, **options)


def register(
    ctx: Context,
    run,
    label: str,
    distilled: Distilled,
    path: Path,
    experts: list[TrainedRun],
    states,
) -> Distillation:
    """Write the file, log it (dataset, artifact, sha256) and its quality on the producing run."""
    from lmctrack.engine.data import load_dataset

    cfg = ctx.params.distill
    sha = write_distilled(path, distilled, tensor_dataset(ctx.dataset))
    fingerprint = load_dataset(DataConfig(name=TENSORS, path=str(path))).fingerprint()
    run.log_dataset(made_by(path.resolve(), fingerprint, run.id, label, context="distilled"))
    run.log_file(path)
    run.set_tags({schema.DISTILLED_SHA256: sha, schema.DISTILLED_FINGERPRINT: fingerprint})
    run.log_curve("matching_loss", distilled.losses)
    began = time.perf_counter()
    recipe = evaluation_recipe(steps=str(cfg.eval_steps), lr=cfg.eval_lr)
    seeds = tuple(range(cfg.eval_seeds))
    quality = evaluate_quality(
        distilled, ctx.dataset, ctx.params.model, recipe, seeds=seeds, device=ctx.device
    )
    run.log_metrics(quality.metrics())
    return Distillation(
        run_id=run.id,
        method=distilled.method,
        path=str(path),
        sha256=sha,
        fingerprint=fingerprint,
        images_per_class=distilled.images_per_class,
        size=len(distilled.y),
        expert_runs=[e.run_id for e in experts],
        expert_states=list(states),
        distilled_accuracy=quality.distilled,
        random_accuracy=quality.random,
        losses=distilled.losses,
        lr=distilled.lr,
        seconds={"quality": time.perf_counter() - began},
    )


def reused(ctx: Context, run_id: str, path: Path) -> Distillation:
    """A finished identical distillation: its registered file copied to `path`."""
    data = json.loads(ctx.store.run_artifact(run_id, DISTILL_ARTIFACT).read_text())
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ctx.store.run_artifact(run_id, schema.DISTILLED_FILE), path)
    return Distillation.from_dict({**data, "path": str(path), "reused": True})
