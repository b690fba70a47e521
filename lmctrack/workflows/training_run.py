"""Train a network from W0 to W_T, registering W0, every rewind state Wk, and W_T on the way."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lmctrack.config import schema
from lmctrack.config.params import SeedConfig, Step
from lmctrack.engine.state import State
from lmctrack.engine.train import Noise
from lmctrack.errors import LmcError, existing_file
from lmctrack.store.files import sha256
from lmctrack.workflows import jobs
from lmctrack.workflows.common import Context


@dataclass
class TrainedRun:
    """A finished training run: the URIs of its states by step (0 is W0, total is W_T)."""

    run_id: str
    states: dict[int, str]
    total: int
    reused: bool

    @property
    def w0(self) -> str:
        return self.states[0]

    @property
    def final(self) -> str:
        return self.states[self.total]

    @property
    def rewind_states(self) -> list[str]:
        """W0 and every Wk the run registered, in step order (all but W_T)."""
        return [uri for step, uri in sorted(self.states.items()) if step != self.total]

    def at(self, step: int) -> str:
        """The URI of Wk; a step the run did not register is a clear error."""
        if not self.states:
            raise LmcError(
                f"run {self.run_id} registered no trained states: it is not a run of "
                "`lmctrack train`; pass the run_id that `lmctrack train` printed (or its train.json)"
            )
        if step not in self.states:
            known = ", ".join(f"{s}it" for s in sorted(self.states))
            raise LmcError(
                f"run {self.run_id} registered no state at step {step}it (it has {known}); "
                f"pick one of those or add the step to train.rewind_steps and train again"
            )
        return self.states[step]


def state_name(step: int, total: int) -> str:
    """The paper's name of the state at `step`: W0, Wk or W_T."""
    return "W0" if step == 0 else "W_T" if step == total else f"W{step}"


def in_step_order(states: dict[str, str]) -> list[tuple[str, str]]:
    """States by their paper's names (W0, Wk, W_T) in step order, not string order (a JSON file
    written with sorted keys lists W100 before W25)."""
    return sorted(states.items(), key=lambda item: _step_of(item[0]))


def _step_of(name: str) -> float:
    return math.inf if name == "W_T" else int(name[1:])


def _role(step: int, total: int) -> str:
    return schema.INIT if step == 0 else schema.TRAINED if step == total else schema.REWIND


def rewind_steps(ctx: Context, extra: Sequence[Step] = ()) -> list[int]:
    steps = {ctx.steps(s) for s in [*ctx.params.train.rewind_steps, *extra]}
    return sorted(s for s in steps if 0 <= s <= ctx.total_steps)


def train_runs(
    ctx: Context, seeds: Sequence[SeedConfig], extra_steps: Sequence[Step] = ()
) -> list[TrainedRun]:
    """Train one network per seed config (several inits train concurrently); reuse finished runs.

    A finished run that lacks some of the rewind states asked for now is extended: W0 is trained
    again up to the last missing step (the same trajectory: same seeds) and only the missing Wk
    are registered, so the run's W0, Wk and W_T keep their URIs and every fork of them is reused.
    """
    snapshots = sorted({0, ctx.total_steps, *rewind_steps(ctx, extra_steps)})
    source = checkpoint(ctx)
    digest = source[1:]  # a checkpoint's sha256 is part of what decides the training
    keys = [ctx.training_hash(seed, *digest, "train") for seed in seeds]
    with jobs.claimed(ctx, keys):  # an identical training running now: wait for it, reuse it
        return _train_or_reuse(ctx, seeds, keys, snapshots, source)


def _train_or_reuse(
    ctx: Context,
    seeds: Sequence[SeedConfig],
    keys: list[str],
    snapshots: list[int],
    source: tuple[Path, str] | tuple[()],
) -> list[TrainedRun]:
    total, eval_every = ctx.total_steps, ctx.params.train.eval_every
    plans, todo = [], []
    for seed, key in zip(seeds, keys, strict=True):
        done = ctx.store.find_run(ctx.model_name, key)
        trained = None if done is None else registered_run(ctx.store, done, total)
        missing = [s for s in snapshots if trained is None or s not in trained.states]
        w0, w0_tags = pretrained_w0(ctx, seed, *source) if missing and source else (None, {})
        plans.append((seed, key, trained, bool(missing), w0_tags))
        if not missing:
            continue
        job = jobs.training(
            ctx,
            key,
            f"train init={seed.init}" + (" (more rewind steps)" if trained else ""),
            w0,
            start=0,
            noise=Noise(seed.data_order, seed.augment),
            init_seed=seed.init,
            snapshot_steps=missing,
            eval_every=ctx.steps(eval_every) if eval_every and trained is None else None,
            stop=None if trained is None else max(missing),
            resumable=trained is None,
            keep_slots=True,
        )
        todo.append(job)
    results = jobs.train_all(ctx, todo)
    runs = []
    for seed, key, trained, missing, w0_tags in plans:
        if trained is None:
            runs.append(_register(ctx, seed, key, results[key], total, w0_tags))
        elif missing:
            runs.append(_register_more(ctx, seed, key, trained, results[key]))
        else:
            runs.append(trained)
    return runs


def checkpoint(ctx: Context) -> tuple[Path, str] | tuple[()]:
    """model.checkpoint as an absolute path and its sha256 (the file read once, for the
    trainings' keys and W0's tags); () when model.init makes W0. A missing file is one line."""
    if ctx.params.model.checkpoint is None:
        return ()
    path = Path(ctx.params.model.checkpoint).expanduser().resolve()
    existing_file(path, f"model.checkpoint {path}", "pass the file W0 is to be read from")
    return path, sha256(path)


def pretrained_w0(
    ctx: Context, seed: SeedConfig, path: Path, digest: str
) -> tuple[State, dict[str, str]]:
    """W0 read from the checkpoint at `path` and the tags that record its source: the file's
    path and sha256, and the output layer replaced for another class count (seeded by the init
    seed, as model.init would make it)."""
    from lmctrack.engine.models import build_for_data
    from lmctrack.engine.pretrained import as_w0

    cfg = ctx.params.model
    w0 = as_w0(build_for_data(cfg, ctx.dataset, seed.init), path, cfg.name)
    tags = {
        schema.W0_SOURCE: str(path),
        schema.W0_SHA256: digest,
        schema.OUTPUT_LAYER: w0.replaced or "kept",
    }
    return State(w0.weights), tags


def train_run(ctx: Context, extra_steps: Sequence[Step] = ()) -> TrainedRun:
    return train_runs(ctx, [ctx.params.seeds], extra_steps)[0]


def registered_run(store, run_id: str, total: int) -> TrainedRun:
    """A finished training run with every state registered for it, its extensions' included.

    `run_id` may also be an extension's run (the producer of a state it added)."""
    run_id = store.run_tags(run_id).get(schema.TRAIN_RUN, run_id)
    more = [
        c for c in store.child_runs(run_id) if store.run_tags(c).get(schema.TRAIN_RUN) == run_id
    ]
    infos = [i for r in [run_id, *more] for i in store.run_states(r)]
    states = {int(info.tags["step"]): info.uri for info in infos}
    return TrainedRun(run_id=run_id, states=states, total=total, reused=True)


def _save_states(
    ctx: Context,
    run,
    seed: SeedConfig,
    key: str,
    result,
    known: dict[int, str],
    w0_tags: dict[str, str] | None = None,
) -> dict[int, str]:
    """Register each snapshot as a state whose parent is the registered state just before it;
    a rewind state Wk with the optimizer state at k (what a fork's carried copies start from),
    W0 also with `w0_tags` (the checkpoint it was read from)."""
    total = ctx.total_steps
    seed_tags = {
        schema.INIT_SEED: str(seed.init),
        schema.DATA_ORDER_SEED: str(seed.data_order),
        schema.AUGMENT_SEED: str(seed.augment),
        schema.CONFIG_HASH: key,
    }
    states = dict(known)
    for step in sorted(result.snapshots):
        before = [s for s in states if s < step]
        slots = result.slots.get(step) if 0 < step < total else None
        states[step] = jobs.register(
            ctx,
            run,
            State(result.snapshots[step], optimizer=slots),
            role=_role(step, total),
            step=step,
            tags={
                **seed_tags,
                schema.STATE: state_name(step, total),
                **((w0_tags or {}) if step == 0 else {}),
            },
            parents=[states[max(before)]] if before else [],
            key=f"{key}:step{step}",
        )
    return states


def _register_more(
    ctx: Context, seed: SeedConfig, key: str, trained: TrainedRun, result
) -> TrainedRun:
    """Register the rewind states a finished run lacked, in a run nested under it."""
    with jobs.recorded(
        ctx,
        f"train init={seed.init} more rewind steps",
        key=f"{key}:more",
        kind=schema.KIND_TRAIN_MORE,
        parent=trained.run_id,
        params={"steps": ",".join(map(str, sorted(result.snapshots)))},
        tags={schema.TRAIN_RUN: trained.run_id},
        made_with=ctx.params.model_copy(update={"seeds": seed}),
    ) as run:
        states = _save_states(ctx, run, seed, key, result, trained.states)
    return TrainedRun(trained.run_id, states, trained.total, reused=True)


def _register(
    ctx: Context, seed: SeedConfig, key: str, result, total: int, w0_tags: dict[str, str]
) -> TrainedRun:
    """Log the finished training and register its states, each the child of the one before.
    Its params are the config sections a training reads and the store it is recorded in (its
    URI without credentials); all of the config is in params.json."""
    params = ctx.params.model_copy(update={"seeds": seed})
    read = params.model_dump(mode="json", include={"data", "model", "train", "seeds", "store"})
    with jobs.recorded(
        ctx,
        f"train init={seed.init}",
        key=key,
        kind=schema.KIND_TRAIN,
        params={**read, **ctx.run_params(init_seed=seed.init)},
        made_with=params,
    ) as run:
        for row in result.evaluations:
            step = int(row["step"])
            run.log_metrics({k: v for k, v in row.items() if k != "step"}, step=step)
        states = _save_states(ctx, run, seed, key, result, {}, w0_tags)
        final = {
            schema.final_error(split): ctx.error(State(result.weights), split)
            for split in ("test", "train")
        }
        run.log_metrics({**final, **jobs.speed(result)})
    return TrainedRun(run_id=run.id, states=states, total=total, reused=False)
