"""Algorithm 1: the instability of a state Wk to SGD noise.

Train copies of Wk to step T, each under its own SGD noise (data order and augmentation), register
every W_T copy with Wk as its parent, then interpolate every pair of copies and report the error
barrier. With `reset_schedule` the copies train for all T steps with the learning-rate schedule
restarted at 0 (Figure 4); with `track_every` the copies are also interpolated during training
(Appendix C).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from lmctrack.runner import JobResult, TrainJob, run_jobs
from lmctrack.state import State
from lmctrack.train import Noise
from lmctrack.workflows.common import PARAMS_ARTIFACT, Context, discard_checkpoints, pairs
from lmctrack.workflows.interpolate import DEFINITIONS, interpolate_states, log_pair

FORK_ARTIFACT = "fork.json"


@dataclass
class Fork:
    """A planned fork: the source state Wk (with its mask, if any) and the copies' noise seeds."""

    source: str
    mask: str | None
    k: int
    state: State
    seeds: list[int]
    reset_schedule: bool
    track: list[int]
    key: str
    copy_keys: list[str] = field(default_factory=list)

    @property
    def start(self) -> int:
        return 0 if self.reset_schedule else self.k


def plan_fork(
    ctx: Context,
    source: str,
    *,
    seeds: list[int],
    mask: str | None = None,
    reset_schedule: bool = False,
    track_every: int | None = None,
) -> Fork:
    from lmctrack.prune import check_mask

    info = ctx.store.describe(source)
    state = ctx.store.load_state(source)
    if mask is not None:
        mask_state = ctx.store.load_state(mask)
        check_mask(mask_state.mask, state.weights)
        state = State(state.weights, mask_state.mask)
    k = int(info.tags.get("step", 0))
    total = ctx.total_steps
    start = 0 if reset_schedule else k
    track = list(range(start + track_every, total, track_every)) if track_every else []
    inst = ctx.params.instability
    common = (source, mask, reset_schedule, track)
    key = ctx.training_hash(*common, seeds, inst.alphas, inst.splits, inst.bn, "fork")
    fork = Fork(source, mask, k, state, seeds, reset_schedule, track, key)
    fork.copy_keys = [ctx.training_hash(*common, seed, "copy") for seed in seeds]
    return fork


def copy_jobs(ctx: Context, fork: Fork) -> list[TrainJob]:
    """The trainings still to do: copies that no earlier fork of the same state finished."""
    jobs = []
    for seed, key in zip(fork.seeds, fork.copy_keys):
        if not fork.track and ctx.store.find_run(ctx.model_name, key) is not None:
            continue
        jobs.append(
            TrainJob(
                key=key,
                label=f"copy k={fork.k} seed={seed}",
                model=ctx.params.model,
                train=ctx.params.train,
                noise=Noise(data_order=seed, augment=seed),
                start=fork.start,
                stop=ctx.total_steps,
                weights=fork.state.weights,
                mask=fork.state.mask,
                snapshot_steps=fork.track,
                checkpoint=ctx.store.checkpoint_dir(key) / "train.safetensors",
                # reset schedule: the copies see steps 0..T of the schedule from Wk
            )
        )
    return jobs


def sample_stats(values: list[float]) -> dict[str, float]:
    """Mean and std (the paper's plotted lines) and median (Figure 9) of a set of samples."""
    return {
        "mean": statistics.fmean(values),
        "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
        "median": statistics.median(values),
    }


def summarize(pair_summaries: list[dict[str, float]]) -> dict[str, float]:
    """Mean, std and median of every pair metric (the paper plots mean and std; Figure 9 medians)."""
    out = {}
    for name in pair_summaries[0]:
        for stat, value in sample_stats([p[name] for p in pair_summaries]).items():
            out[f"{name}.{stat}"] = value
    return out


def finish_fork(ctx: Context, fork: Fork, results: dict[str, JobResult]) -> dict:
    """Register the copies, interpolate every pair, and log it all under one parent run."""
    from lmctrack.compare import l2_distance, parameter_names

    inst = ctx.params.instability
    total = ctx.total_steps
    label = f"fork k={fork.k}" + (" reset" if fork.reset_schedule else "")
    with ctx.store.run(
        ctx.model_name,
        label,
        params={
            "source": fork.source,
            "mask": fork.mask or "",
            "k": fork.k,
            "seeds": ",".join(map(str, fork.seeds)),
            "reset_schedule": fork.reset_schedule,
            "bn": inst.bn,
            "alphas": inst.alphas,
        },
        tags={"config_hash": fork.key, "kind": "fork"},
    ) as run:
        run.log_input_states([fork.source] + ([fork.mask] if fork.mask else []))
        run.log_json(ctx.params.model_dump(mode="json"), PARAMS_ARTIFACT)
        copies = [
            _register_copy(ctx, run, fork, i, seed, key, results.get(key))
            for i, (seed, key) in enumerate(zip(fork.seeds, fork.copy_keys))
        ]
        states = [  # copies trained just now are in memory; reused ones come from the store
            State(results[key].weights, fork.state.mask)
            if key in results
            else ctx.store.load_state(uri)
            for key, uri in zip(fork.copy_keys, copies)
        ]
        pair_results = []
        for i, j in pairs(len(copies)):
            path, distances = interpolate_states(ctx, states[i], states[j])
            pair_results.append(
                log_pair(
                    ctx,
                    run,
                    f"pair {i}-{j} k={fork.k}",
                    copies[i],
                    copies[j],
                    path,
                    distances,
                    extra={"copies": [i, j], "seeds": [fork.seeds[i], fork.seeds[j]]},
                )
            )
        names = parameter_names(ctx.template())
        wk = fork.state.masked_weights()
        distances = {"Wk_to_W_T": [l2_distance(wk, s.masked_weights(), names) for s in states]}
        w0 = _ancestor_w0(ctx, fork.source)
        if w0 is not None:
            w0_weights = State(ctx.store.load_state(w0).weights, fork.state.mask).masked_weights()
            distances["W0_to_Wk"] = [l2_distance(w0_weights, wk, names)]
        summary = summarize([p["summary"] for p in pair_results])
        summary.update({f"distance.{k}.mean": statistics.fmean(v) for k, v in distances.items()})
        run.log_metrics(summary)
        tracked = _track(ctx, run, fork, results) if fork.track else {}
        result = {
            "run_id": run.id,
            "source": fork.source,
            "mask": fork.mask,
            "k": fork.k,
            "total": total,
            "seeds": fork.seeds,
            "reset_schedule": fork.reset_schedule,
            "bn": inst.bn,
            "alphas": inst.alphas,
            "copies": copies,
            "pairs": [
                {"copies": p["copies"], "run_id": p["run_id"], "summary": p["summary"]}
                for p in pair_results
            ],
            "summary": summary,
            "distances": distances,
            "tracked": tracked,
            "definitions": DEFINITIONS,
        }
        run.log_json(result, FORK_ARTIFACT)
    return result


def _register_copy(ctx: Context, run, fork: Fork, i: int, seed: int, key: str, result) -> str:
    if result is None:  # trained by an earlier fork of the same state with the same noise
        done = ctx.store.find_run(ctx.model_name, key)
        return ctx.store.run_states(done)[-1].uri
    parents = [fork.source] + ([fork.mask] if fork.mask else [])
    with ctx.store.run(
        ctx.model_name,
        f"copy {i} seed={seed}",
        parent=run,
        params={"seed": seed, "source": fork.source, "reset_schedule": fork.reset_schedule},
        tags={"config_hash": key, "kind": "copy"},
    ) as child:
        child.log_json(ctx.params.model_dump(mode="json"), PARAMS_ARTIFACT)
        tags = {
            "state": "W_T",
            "copy": str(i),
            "data_order_seed": str(seed),
            "augment_seed": str(seed),
            "rewind_step": str(fork.k),
            "reset_schedule": str(fork.reset_schedule),
        }
        density = fork.state.density()
        if density is not None:
            tags["density"] = f"{density:.6f}"
        uri = child.save_state(
            State(result.weights, fork.state.mask),
            model_name=ctx.model_name,
            role="trained",
            step=ctx.total_steps,
            tags=tags,
            parents=parents,
            dataset=(ctx.params.data.name, ctx.dataset_fingerprint),
        )
        child.log_metrics({"steps_per_second": result.steps / max(result.seconds, 1e-9)})
    discard_checkpoints(ctx, key)
    return uri


def _ancestor_w0(ctx: Context, uri: str) -> str | None:
    """The W0 that `uri` descends from, found through the lineage tags."""
    node = ctx.store.lineage(uri)
    while node is not None:
        if node.info.tags.get("role") == "init":
            return node.info.uri
        node = node.parents[0] if node.parents else None
    return None


def _track(ctx: Context, run, fork: Fork, results: dict[str, JobResult]) -> dict[str, dict]:
    """Appendix C: the error barrier between the copies at every tracked step of their training."""
    tracked: dict[str, dict] = {}
    snaps = [results[key].snapshots for key in fork.copy_keys]
    for step in fork.track:
        summaries = []
        for i, j in pairs(len(snaps)):
            a, b = State(snaps[i][step], fork.state.mask), State(snaps[j][step], fork.state.mask)
            path, distances = interpolate_states(ctx, a, b)
            summaries.append(
                {**path.summary(), **{f"distance.{k}": float(v) for k, v in distances.items()}}
            )
        stats = summarize(summaries)
        run.log_metrics({f"tracked.{k}": v for k, v in stats.items()}, step=step)
        tracked[str(step)] = stats
    return tracked


def fork(
    ctx: Context,
    source: str,
    *,
    seeds: list[int],
    mask: str | None = None,
    reset_schedule: bool = False,
    track_every: int | None = None,
) -> dict:
    """`lmctrack fork`: Algorithm 1 from one state; a finished identical fork is reused."""
    plan = plan_fork(
        ctx, source, seeds=seeds, mask=mask, reset_schedule=reset_schedule, track_every=track_every
    )
    return run_forks(ctx, [plan])[0]


def run_forks(ctx: Context, forks: list[Fork]) -> list[dict]:
    """Train the copies of several forks in one pool (a sweep), then finish each fork."""
    import json
    from pathlib import Path

    done: dict[int, dict] = {}
    jobs = []
    for n, plan in enumerate(forks):
        finished = ctx.store.find_run(ctx.model_name, plan.key)
        if finished is not None:
            done[n] = json.loads(Path(ctx.store.run_artifact(finished, FORK_ARTIFACT)).read_text())
            done[n]["reused"] = True
        else:
            jobs.extend(copy_jobs(ctx, plan))
    results = dict(zip([j.key for j in jobs], run_jobs(jobs, ctx.dataset, ctx.device, ctx.board)))
    return [
        done.get(n) or {**finish_fork(ctx, plan, results), "reused": False}
        for n, plan in enumerate(forks)
    ]
