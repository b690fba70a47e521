"""The Python API for notebooks: the functions the CLI calls, returning typed results.

    import lmctrack as lmc
    run = lmc.train()                                   # W0, Wk, W_T of params.yaml
    fork = lmc.fork(run.at(100), seeds=3)               # Algorithm 1
    fork.plot(); fork.to_frame()
    net, info = lmc.load(fork.copies[0])                # an nn.Module (mask applied) + its tags

Every function takes `params` (a params.yaml path, a Params object, or None for ./params.yaml)
and `sets` overrides as keyword arguments, e.g. `lmc.train(sets={"train.lr": 0.05})`; `fork` and
`interpolate` also run in a context already open (`ctx`: the CLI's workspace) instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

from lmctrack.config import Params
from lmctrack.results import Fork, Imp, Pair, SparseSweep, Sweep
from lmctrack.workflows.common import Context
from lmctrack.workflows.session import session
from lmctrack.workflows.train import TrainedRun

if TYPE_CHECKING:
    from lmctrack.workflows.find_k import FindK

ParamsLike = Path | str | Params | None


def _sets(sets: Mapping[str, object] | None) -> list[str]:
    import json

    return [
        f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in (sets or {}).items()
    ]


def _within(
    ctx: Context | None, params: ParamsLike, sets: Mapping[str, object] | None, state: str
) -> AbstractContextManager[Context]:
    """`ctx` when the caller has one open (then `params` and `sets` are its own), else a session
    of `params` for the run that produced `state`."""
    return nullcontext(ctx) if ctx is not None else session(params, _sets(sets), state=state)


def _own(
    sets: Mapping[str, object] | None, model: Callable | str | None, data: Callable | str | None
) -> dict[str, object]:
    """`sets` with model.name / data.name set to the import path of the user's own class or
    factory (only a name is recorded, so it must be importable where the states are loaded)."""
    from lmctrack.imports import import_path

    out = dict(sets or {})
    for key, obj in (("model.name", model), ("data.name", data)):
        if obj is not None:
            out[key] = obj if isinstance(obj, str) else import_path(obj, key)
    return out


def train(
    params: ParamsLike = None,
    *,
    sets: Mapping[str, object] | None = None,
    model: Callable | str | None = None,
    data: Callable | str | None = None,
) -> TrainedRun:
    """Train W0 to W_T, registering W0, every rewind state Wk and W_T (reused when done).
    `model` / `data`: your own network class (or factory) and dataset factory, e.g.
    `lmc.train(model=MyNet, data=make_data)`, as `sets={"model.name": "mypkg.nets:MyNet"}`."""
    from lmctrack.workflows.train import train_run

    with session(params, _sets(_own(sets, model, data))) as ctx:
        return train_run(ctx)


def fork(
    source: str,
    seeds: int = 2,
    *,
    mask: str | None = None,
    reset_schedule: bool = False,
    track_every: int | None = None,
    params: ParamsLike = None,
    sets: Mapping[str, object] | None = None,
    ctx: Context | None = None,
) -> Fork:
    """Algorithm 1 from a state URI: `seeds` copies (noise seeds 1..seeds), every pair
    interpolated."""
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
    seeds: int = 2,
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

    with _within(ctx, params, sets, sources[0]) as ctx:
        options = {"mask": mask, "reset_schedule": reset_schedule, "track_every": track_every}
        seed_list = list(range(1, seeds + 1))
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
    from lmctrack.workflows.interpolate import interpolate as linear

    with _within(ctx, params, sets, a) as ctx:
        return linear(ctx, a, b, mask_mode="each" if each_mask else "same")


def imp(source: str, *, params: ParamsLike = None, sets: Mapping[str, object] | None = None) -> Imp:
    """Algorithm 2 from the registered state Wk (`imp` section of the params), with baselines."""
    from lmctrack.workflows.imp import imp as algorithm2

    with session(params, _sets(sets), state=source) as ctx:
        return algorithm2(ctx, source)


def instability(
    *,
    sparse: bool = False,
    mask: str | None = None,
    params: ParamsLike = None,
    sets: Mapping[str, object] | None = None,
) -> Sweep | SparseSweep:
    """The Figure 3 sweep; with `sparse=True` the sparse sweep (Figures 6, 7, 9 and the claim)."""
    from lmctrack.workflows.instability import instability as sweep
    from lmctrack.workflows.sparse import sparse_instability

    with session(params, _sets(sets)) as ctx:
        return sparse_instability(ctx) if sparse else sweep(ctx, mask=mask)


def find_k(
    *,
    imp: bool = False,
    density: float | None = None,
    params: ParamsLike = None,
    sets: Mapping[str, object] | None = None,
) -> FindK:
    """The earliest stable rewind step among instability.candidates, by bisection with copies
    added until a confidence interval decides; with `imp`, of the IMP subnetwork at `density`."""
    from lmctrack.config import resolve
    from lmctrack.workflows.find_k import density_sets
    from lmctrack.workflows.find_k import find_k as search
    from lmctrack.workflows.imp_chain import mask_search

    more = density_sets(resolve(params, _sets(sets)), density)
    with session(params, _sets(sets) + more) as ctx:
        return search(ctx, mask_search(ctx) if imp else None)


def align(
    a: str,
    b: str,
    *,
    method: str | None = None,
    seed: int | None = None,
    params: ParamsLike = None,
    sets: Mapping[str, object] | None = None,
):
    """B with its hidden units permuted to match A (Git Re-Basin), registered with parents B, A;
    the function is checked before registering. Returns the typed `Aligned` result."""
    from lmctrack.workflows.align import align as permute

    with session(params, _sets(sets), state=a) as ctx:
        return permute(ctx, a, b, method=method, seed=seed)


def load(uri: str, *, params: ParamsLike = None):
    """A registered state as a network (weights loaded, mask applied, eval mode) and its
    StateInfo (role, step, seeds and the other tags; parents)."""
    from lmctrack.evaluate import load_into

    with session(params, state=uri) as ctx:
        network = load_into(ctx.template().cpu(), ctx.store.load_state(uri)).eval()
        return network, ctx.store.describe(uri)


def states(*, model: str | None = None, params: ParamsLike = None, **tags: object) -> list:
    """Registered states whose tags match, newest first: e.g. `states(role="trained", step=3000)`."""
    from lmctrack.workflows.common import open_store

    store = open_store(_store_params(params))
    return store.search_states(model=model, **{k: str(v) for k, v in tags.items()})


def lineage(uri: str, *, params: ParamsLike = None):
    """The ancestry tree of a state: a LineageNode with `.info` and `.parents`."""
    from lmctrack.workflows.common import open_store

    return open_store(_store_params(params)).lineage(uri)


def _store_params(params: ParamsLike) -> Params:
    from lmctrack.config import resolve

    return resolve(params)


__all__ = [
    "align",
    "find_k",
    "fork",
    "forks",
    "imp",
    "instability",
    "interpolate",
    "lineage",
    "load",
    "states",
    "train",
]
