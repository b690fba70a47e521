"""The paper's procedures in the Python API: train, Algorithms 1 and 2, the sweeps, find-k,
alignment, and reading states back (lmctrack.api re-exports them)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING

from lmctrack.api import PAPER
from lmctrack.api.registry import ParamsLike
from lmctrack.config.overrides import Overrides, overrides
from lmctrack.results.paper import Fork, Imp, Pair, SparseSweep, Sweep
from lmctrack.workflows import report as tables  # noqa: F401  (the CLI's tables of results)
from lmctrack.workflows.common import Context
from lmctrack.workflows.session import session
from lmctrack.workflows.training_run import TrainedRun, state_name  # noqa: F401

if TYPE_CHECKING:
    from lmctrack.workflows.find_k import FindK


def within(
    ctx: Context | None,
    params: ParamsLike,
    sets: Mapping[str, object] | None,
    state: str | None = None,
    run_id: str | None = None,
) -> AbstractContextManager[Context]:
    """`ctx` when the caller has one open (then `params` and `sets` are its own), else a session
    of `params` with the typed overrides `sets`, for the run that produced `state` or `run_id`."""
    if ctx is not None:
        return nullcontext(ctx)
    return session(params, sets, state=state, run_id=run_id)


def _updated(ctx: Context, sets: Mapping[str, object]) -> Context:
    """`ctx` with settings that change neither the data nor the network overridden (validated)."""
    from lmctrack.config.params import resolve

    return dataclasses.replace(ctx, params=resolve(ctx.params, sets)) if sets else ctx


def _own(
    sets: Mapping[str, object] | None, model: Callable | str | None, data: Callable | str | None
) -> Overrides:
    """`sets` with model.name / data.name set to the import path of the user's own class or
    factory (only a name is recorded, so it must be importable where the states are loaded)."""
    from lmctrack.config.imports import import_path

    own = {
        key: obj if isinstance(obj, str) else import_path(obj, key)
        for key, obj in (("model.name", model), ("data.name", data))
        if obj is not None
    }
    return overrides(sets) | own


def train(
    params: ParamsLike = None,
    *,
    sets: Mapping[str, object] | None = None,
    model: Callable | str | None = None,
    data: Callable | str | None = None,
    ctx: Context | None = None,
) -> TrainedRun:
    """Train W0 to W_T, registering W0, every rewind state Wk and W_T (reused when done).
    `model` / `data`: your own network class (or factory) and dataset factory, e.g.
    `lmc.train(model=MyNet, data=make_data)`, as `sets={"model.name": "mypkg.nets:MyNet"}`."""
    from lmctrack.workflows.training_run import train_run

    with within(ctx, params, _own(sets, model, data)) as ctx:
        return train_run(ctx)


def trained(run_id: str, *, params: ParamsLike = None, ctx: Context | None = None) -> TrainedRun:
    """A registered training by its run id: its states W0, Wk, W_T by step (`.at(k)`)."""
    from lmctrack.workflows.training_run import registered_run

    with within(ctx, params, None, run_id=run_id) as ctx:
        return registered_run(ctx.store, run_id, ctx.total_steps)


def fork(
    source: str,
    seeds: int | None = None,
    *,
    mask: str | None = None,
    reset_schedule: bool = False,
    track_every: int | None = None,
    params: ParamsLike = None,
    sets: Mapping[str, object] | None = None,
    ctx: Context | None = None,
) -> Fork:
    """Algorithm 1 from a state URI: `seeds` copies (noise seeds 1..seeds; None:
    instability.copies), every pair interpolated."""
    return forks(
        [source],
        seeds,
        mask=mask,
        reset_schedule=reset_schedule,
        track_every=track_every,
        params=params,
        sets=sets,
        ctx=ctx,
    )[0]


def forks(
    sources: Sequence[str],
    seeds: int | None = None,
    *,
    mask: str | None = None,
    reset_schedule: bool = False,
    track_every: int | None = None,
    params: ParamsLike = None,
    sets: Mapping[str, object] | None = None,
    ctx: Context | None = None,
) -> list[Fork]:
    """`fork` from several states (e.g. Wk of one run at every k): all copies train in one pool
    and all pairs are interpolated together, which keeps every core busy."""
    from lmctrack.workflows.fork import forks as algorithm1
    from lmctrack.workflows.fork import plan

    with within(ctx, params, sets, sources[0]) as ctx:
        options = {"mask": mask, "reset_schedule": reset_schedule, "track_every": track_every}
        seed_list = list(range(1, (seeds or ctx.params.instability.copies) + 1))
        return algorithm1(ctx, [plan(ctx, s, seeds=seed_list, **options) for s in sources])


def interpolate(
    a: str,
    b: str,
    *,
    each_mask: bool = False,
    params: ParamsLike = None,
    sets: Mapping[str, object] | None = None,
    ctx: Context | None = None,
) -> Pair:
    """The linear path between two registered states, logged as a run; with `each_mask` each
    endpoint keeps its own mask."""
    from lmctrack.workflows.paths import interpolate as linear

    with within(ctx, params, sets, a) as ctx:
        return linear(ctx, a, b, mask_mode="each" if each_mask else "same")


def imp(
    source: str,
    *,
    params: ParamsLike = None,
    sets: Mapping[str, object] | None = None,
    ctx: Context | None = None,
) -> Imp:
    """Algorithm 2 from the registered state Wk (`imp` section of the params), with baselines;
    the masks are searched on imp.prune_data when set (e.g. a distilled set)."""
    from lmctrack.workflows.imp import imp as algorithm2
    from lmctrack.workflows.imp_chain import mask_search

    with within(ctx, params, sets, source) as ctx:
        return algorithm2(ctx, source, mask_search(ctx))


def instability(
    *,
    sparse: bool = False,
    mask: str | None = None,
    params: ParamsLike = None,
    sets: Mapping[str, object] | None = None,
    ctx: Context | None = None,
) -> Sweep | SparseSweep:
    """The Figure 3 sweep; with `sparse=True` the sparse sweep (Figures 6, 7, 9 and the claim)."""
    from lmctrack.workflows.imp_chain import mask_search
    from lmctrack.workflows.instability import instability as sweep
    from lmctrack.workflows.sparse import sparse_instability

    with within(ctx, params, sets) as ctx:
        return sparse_instability(ctx, mask_search(ctx)) if sparse else sweep(ctx, mask=mask)


def find_k(
    *,
    imp: bool = False,
    density: float | None = None,
    params: ParamsLike = None,
    sets: Mapping[str, object] | None = None,
    ctx: Context | None = None,
) -> FindK:
    """The earliest stable rewind step among instability.candidates, by bisection with copies
    added until a one-sided confidence bound decides; with `imp`, of the IMP subnetwork at
    `density`."""
    from lmctrack.workflows.find_k import density_sets
    from lmctrack.workflows.find_k import find_k as search
    from lmctrack.workflows.imp_chain import mask_search

    with within(ctx, params, sets) as ctx:
        ctx = _updated(ctx, density_sets(ctx.params, density))
        return search(ctx, mask_search(ctx) if imp else None)


def align(
    a: str,
    b: str,
    *,
    method: str | None = None,
    seed: int | None = None,
    params: ParamsLike = None,
    sets: Mapping[str, object] | None = None,
    ctx: Context | None = None,
):
    """B with its hidden units permuted to match A (Git Re-Basin), registered with parents B, A;
    the function is checked before registering. Returns the typed `Aligned` result."""
    from lmctrack.workflows.alignment import align as permute

    with within(ctx, params, sets, a) as ctx:
        return permute(ctx, a, b, method=method, seed=seed)


def load(uri: str, *, params: ParamsLike = None):
    """A registered state as a network (weights loaded, mask applied, eval mode) and its
    StateInfo (role, step, seeds and the other tags; parents)."""
    from lmctrack.engine.evaluate import load_into

    with session(params, state=uri) as ctx:
        network = load_into(ctx.template().cpu(), ctx.store.load_state(uri)).eval()
        return network, ctx.store.describe(uri)


__all__ = list(PAPER)  # the names lmctrack.api takes from here, listed there (no torch)
