"""Train a network from W0 to W_T, registering W0, every rewind state Wk, and W_T on the way."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lmctrack.config import SeedConfig, Step
from lmctrack.errors import LmcError
from lmctrack.runner import TrainJob, run_jobs
from lmctrack.state import State
from lmctrack.train import Noise
from lmctrack.workflows.common import PARAMS_ARTIFACT, Context, discard_checkpoints

TRAIN_RUN_TAG = "train_run"  # on a run that added rewind states: the training run it extends


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

    def at(self, step: int) -> str:
        """The URI of Wk; a step the run did not register is a clear error."""
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


def _role(step: int, total: int) -> str:
    return "init" if step == 0 else "trained" if step == total else "rewind"


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
    total = ctx.total_steps
    snapshots = sorted({0, total, *rewind_steps(ctx, extra_steps)})
    eval_every = ctx.params.train.eval_every
    plans, jobs = [], []
    for seed in seeds:
        key = ctx.training_hash(seed, "train")
        done = ctx.store.find_run(ctx.model_name, key)
        trained = None if done is None else registered_run(ctx.store, done, total)
        missing = [s for s in snapshots if trained is None or s not in trained.states]
        plans.append((seed, key, trained, bool(missing)))
        if not missing:
            continue
        jobs.append(
            TrainJob(
                key=key,
                label=f"train init={seed.init}" + (" (more rewind steps)" if trained else ""),
                model=ctx.params.model,
                train=ctx.params.train,
                noise=Noise(seed.data_order, seed.augment),
                start=0,
                stop=total if trained is None else max(missing),
                init_seed=seed.init,
                snapshot_steps=missing,
                eval_every=ctx.steps(eval_every) if eval_every and trained is None else None,
                checkpoint=None if trained else ctx.store.checkpoint_dir(key) / "train.safetensors",
            )
        )
    results = dict(zip([j.key for j in jobs], run_jobs(jobs, ctx.dataset, ctx.device, ctx.board)))
    runs = []
    for seed, key, trained, missing in plans:
        if trained is None:
            runs.append(_register(ctx, seed, key, results[key], total))
        elif missing:
            runs.append(_register_more(ctx, seed, key, trained, results[key]))
        else:
            runs.append(trained)
    return runs


def train_run(ctx: Context, extra_steps: Sequence[Step] = ()) -> TrainedRun:
    return train_runs(ctx, [ctx.params.seeds], extra_steps)[0]


def registered_run(store, run_id: str, total: int) -> TrainedRun:
    """A finished training run with every state registered for it, its extensions' included.

    `run_id` may also be an extension's run (the producer of a state it added)."""
    run_id = store.run_tags(run_id).get(TRAIN_RUN_TAG, run_id)
    more = [c for c in store.child_runs(run_id) if store.run_tags(c).get(TRAIN_RUN_TAG) == run_id]
    infos = [i for r in [run_id, *more] for i in store.run_states(r)]
    states = {int(info.tags["step"]): info.uri for info in infos}
    return TrainedRun(run_id=run_id, states=states, total=total, reused=True)


def _save_states(
    ctx: Context, run, seed: SeedConfig, key: str, snapshots: dict, known: dict[int, str]
) -> dict[int, str]:
    """Register each snapshot as a state whose parent is the registered state just before it."""
    total = ctx.total_steps
    seed_tags = {
        "init_seed": str(seed.init),
        "data_order_seed": str(seed.data_order),
        "augment_seed": str(seed.augment),
        "config_hash": key,
    }
    states = dict(known)
    for step in sorted(snapshots):
        before = [s for s in states if s < step]
        states[step] = run.save_state(
            State(snapshots[step]),
            model_name=ctx.model_name,
            role=_role(step, total),
            step=step,
            tags={**seed_tags, "state": state_name(step, total)},
            parents=[states[max(before)]] if before else [],
            dataset=(ctx.params.data.name, ctx.dataset_fingerprint),
        )
    return states


def _register_more(
    ctx: Context, seed: SeedConfig, key: str, trained: TrainedRun, result
) -> TrainedRun:
    """Register the rewind states a finished run lacked, in a run nested under it."""
    params = ctx.params.model_copy(update={"seeds": seed})
    with ctx.store.run(
        ctx.model_name,
        f"train init={seed.init} more rewind steps",
        parent=trained.run_id,
        params={"steps": ",".join(map(str, sorted(result.snapshots)))},
        tags={"kind": "train-more", TRAIN_RUN_TAG: trained.run_id},
    ) as run:
        run.log_json(params.model_dump(mode="json"), PARAMS_ARTIFACT)
        states = _save_states(ctx, run, seed, key, result.snapshots, trained.states)
    return TrainedRun(trained.run_id, states, trained.total, reused=True)


def _register(ctx: Context, seed: SeedConfig, key: str, result, total: int) -> TrainedRun:
    """Log the finished training and register its states, each the child of the one before."""
    from lmctrack.evaluate import evaluate, load_into
    from lmctrack.models import build_model

    params = ctx.params.model_copy(update={"seeds": seed})
    with ctx.store.run(
        ctx.model_name,
        f"train init={seed.init}",
        params=params.model_dump(mode="json"),
        tags={"config_hash": key, "kind": "train"},
    ) as run:
        run.log_json(params.model_dump(mode="json"), PARAMS_ARTIFACT)
        for row in result.evaluations:
            step = int(row["step"])
            run.log_metrics({k: v for k, v in row.items() if k != "step"}, step=step)
        states = _save_states(ctx, run, seed, key, result.snapshots, {})
        model = build_model(ctx.params.model, ctx.dataset.num_classes, ctx.dataset.input_shape, 0)
        load_into(model.to(ctx.device), State(result.weights))
        final = {}
        for split in ("test", "train"):
            ev = evaluate(model, ctx.dataset, split, device=ctx.device)
            final.update({f"final_{split}_error": ev.error, f"final_{split}_loss": ev.loss})
        run.log_metrics({**final, "steps_per_second": result.steps / max(result.seconds, 1e-9)})
    discard_checkpoints(ctx, key)
    return TrainedRun(run_id=run.id, states=states, total=total, reused=False)
