"""The bookkeeping every workflow shares, written once: build a training, reuse finished work by
its config hash, resume interrupted work from its checkpoint, record a run, register a state.

A training is identified by a key (the hash of everything that decides its outcome). A finished
run tagged with that key is reused instead of training again; an interrupted one resumes from the
checkpoint folder named by the key; the states it registers carry the key, so a re-run after a
crash adopts what was registered instead of registering it twice.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from lmctrack.config import schema
from lmctrack.config.params import Params
from lmctrack.engine.state import State
from lmctrack.engine.train import Noise
from lmctrack.execution.job import JobResult, TrainJob
from lmctrack.workflows.common import PARAMS_ARTIFACT, Context

T = TypeVar("T")


def noise_seed(*parts: int | str) -> int:
    """A sample u' ~ U of SGD noise for one training, derived from what distinguishes it (e.g. the
    base seed, replicate, level and method), so no two trainings of a workflow share batches."""
    from lmctrack.config.params import config_hash

    return int(config_hash(*map(str, parts)), 16) & (2**31 - 1)


def noise_tags(seed: int) -> dict[str, str]:
    """The version tags of a training's noise sample (one seed drives data order and
    augmentation, each from its own stream)."""
    return {schema.DATA_ORDER_SEED: str(seed), schema.AUGMENT_SEED: str(seed)}


def training(
    ctx: Context,
    key: str,
    label: str,
    state: State | None,
    *,
    start: int,
    noise: Noise,
    stop: int | None = None,
    init_seed: int = 0,
    snapshot_steps: Sequence[int] = (),
    eval_every: int | None = None,
    schedule_total: int | None = None,
    resumable: bool = True,
    carry: bool = False,
    keep_slots: bool = False,
) -> TrainJob:
    """One training of this context's network from `state` (None: a fresh W0) at `start` to T;
    with `carry`, from the optimizer state registered with it too."""
    return TrainJob(
        key=key,
        label=label,
        model=ctx.params.model,
        train=ctx.params.train,
        noise=noise,
        start=start,
        stop=ctx.total_steps if stop is None else stop,
        init_seed=init_seed,
        weights=None if state is None else state.weights,
        mask=None if state is None else state.mask,
        snapshot_steps=snapshot_steps,
        eval_every=eval_every,
        checkpoint=ctx.store.checkpoint_dir(key) / "train.safetensors" if resumable else None,
        schedule_total=schedule_total,
        slots=state.optimizer if carry and state is not None else None,
        keep_slots=keep_slots,
    )


def speed(result: JobResult) -> dict[str, float]:
    """A training's steps per second, as a metric."""
    return {schema.STEPS_PER_SECOND: result.steps / max(result.seconds, 1e-9)}


def train_all(ctx: Context, jobs: Sequence[TrainJob]) -> dict[str, JobResult]:
    """Run independent trainings at once (local processes, stacked copies or Ray tasks, as
    params' `runner` section says); results by key."""
    if not jobs:
        return {}
    runner = ctx.params.runner
    shared = Path(runner.checkpoints) if runner.checkpoints else None
    results = ctx.executor.train(jobs, ctx.dataset, ctx.device, ctx.board, shared)
    return {job.key: result for job, result in zip(jobs, results, strict=True)}


@contextmanager
def claimed(ctx: Context, keys: Iterable[str]) -> Iterator[None]:
    """Hold the store's claim on every key while checking, training and registering that work:
    an identical request made at the same time waits, then finds the work finished and reuses
    it, so no work is done twice and no two trainings share a checkpoint folder. Claims are
    taken all at once (store.claims), so two requests with overlapping keys cannot deadlock."""
    with ctx.store.claim(set(keys)):
        yield


def finished(ctx: Context, key: str) -> str | None:
    """The id of a finished run that did this work already, if any."""
    return ctx.store.find_run(ctx.model_name, key)


def finished_among(ctx: Context, keys: Sequence[str], **params: object) -> dict[str, str]:
    """The finished runs of these pieces of work, by key, found by one search among the runs
    logged with `params` (what the pieces share, e.g. the state they start from)."""
    return ctx.store.find_runs(ctx.model_name, keys, {k: str(v) for k, v in params.items()})


def reused(ctx: Context, key: str, artifact: str, result: type[T]) -> T | None:
    """The typed result of a finished identical piece of work, read back from its run's JSON."""
    run_id = finished(ctx, key)
    if run_id is None:
        return None
    data = json.loads(ctx.store.run_artifact(run_id, artifact).read_text())
    return result.from_dict({**data, "reused": True})


@contextmanager
def recorded(
    ctx: Context,
    label: str,
    *,
    key: str,
    kind: str,
    parent=None,
    params: dict | None = None,
    tags: dict[str, str] | None = None,
    made_with: Params | None = None,
    inputs: Sequence[str] = (),
) -> Iterator:
    """A run tagged with the work's key and kind, holding the params it was made with
    (`made_with`, default the context's) and the states it reads (`inputs`); once it finishes,
    the work's resume checkpoint is no longer needed."""
    with ctx.run(
        label,
        parent=parent,
        params=params,
        tags={schema.CONFIG_HASH: key, schema.KIND: kind, **(tags or {})},
    ) as run:
        run.log_json((made_with or ctx.params).model_dump(mode="json"), PARAMS_ARTIFACT)
        if inputs:
            run.log_input_states(list(inputs))
        yield run
    discard_checkpoints(ctx, key)


def register(
    ctx: Context,
    run,
    state: State,
    *,
    role: str,
    step: int,
    tags: dict[str, str],
    parents: Sequence[str],
    key: str,
    trained_here: bool = True,
    data: Context | None = None,
) -> str:
    """Register `state` as a model version of this network, made by `run` from `parents`.

    `key` identifies the state (work key + its part), so registering it again adopts the version
    a crashed run already registered. `trained_here`: the run trained it, on this context's
    dataset or on `data`'s."""
    data = data or ctx
    dataset = data.data_ref if trained_here else None
    return run.save_state(
        state,
        model_name=ctx.model_name,
        role=role,
        step=step,
        tags=tags,
        parents=list(parents),
        dataset=dataset,
        key=key,
        architecture=architecture(ctx),
    )


def architecture(ctx: Context) -> dict:
    """What rebuilds the network of a registered state without lmctrack's params (plain MLflow
    loading): its model, width, kwargs, classes and input shape."""
    model, ds = ctx.params.model, ctx.dataset
    return {
        "name": model.name,
        "width": model.width,
        "kwargs": model.kwargs,
        "num_classes": ds.num_classes,
        "input_shape": list(ds.input_shape),
        "input_dtype": str(ds.example().dtype).removeprefix("torch."),
    }


def register_trained(
    ctx: Context,
    run,
    state: State,
    tags: dict[str, str],
    parents: Sequence[str],
    key: str,
    role: str = schema.TRAINED,
    data: Context | None = None,
) -> str:
    """Register a W_T: `state` trained to T by `run` (on this context's data, or `data`'s)."""
    step = ctx.total_steps
    return register(
        ctx, run, state, role=role, step=step, tags=tags, parents=parents, key=key, data=data
    )


def register_start(
    ctx: Context, run, state: State, role: str, step: int, tags: dict[str, str], parents, key: str
) -> str:
    """Register a state a training starts from (a subnetwork (Wk, m), a reinitialization)."""
    return register(
        ctx,
        run,
        state,
        role=role,
        step=step,
        tags=tags,
        parents=parents,
        key=key,
        trained_here=False,
    )


def discard_checkpoints(ctx: Context, key: str) -> None:
    """A training's result is registered: its resume files are no longer needed."""
    import shutil

    shutil.rmtree(ctx.store.checkpoint_dir(key), ignore_errors=True)
    if ctx.params.runner.checkpoints:
        shutil.rmtree(Path(ctx.params.runner.checkpoints) / key, ignore_errors=True)
