"""The Python API for notebooks: the functions the CLI calls, returning typed results.

    import lmctrack as lmc
    run = lmc.train()                                   # W0, Wk, W_T of params.yaml
    fork = lmc.fork(run.at(100), seeds=3)               # Algorithm 1
    fork.plot(); fork.to_frame()
    net, info = lmc.load(fork.copies[0])                # an nn.Module (mask applied) + its tags

Every function takes `params` (a params.yaml path, a Params object, or None for ./params.yaml)
and typed `sets` overrides as keyword arguments, e.g. `lmc.train(sets={"train.lr": 0.05})`
(validated by pydantic, no string round trip), or runs in a context already open (`ctx`: the
CLI's workspace). The CLI calls these functions and nothing else, so the two cannot drift.
"""

from lmctrack.api.extras import (  # the tools beyond the two algorithms
    connect,
    distill,
    followup,
    hessian,
    import_dataset,
    mnist1d,
    plane,
    random_plane,
    random_prune,
    reinit,
    report,
    soup,
    transport,
)
from lmctrack.api.paper import (  # noqa: F401  (the CLI's context, session and tables too)
    Context,
    ParamsLike,
    TrainedRun,
    align,
    find_k,
    fork,
    forks,
    imp,
    instability,
    interpolate,
    lineage,
    load,
    open_store,
    session,
    state_name,
    states,
    tables,
    train,
    trained,
    within,
)

__all__ = [
    "align",
    "connect",
    "distill",
    "find_k",
    "followup",
    "fork",
    "forks",
    "hessian",
    "imp",
    "import_dataset",
    "instability",
    "interpolate",
    "lineage",
    "load",
    "mnist1d",
    "plane",
    "random_plane",
    "random_prune",
    "reinit",
    "report",
    "soup",
    "states",
    "train",
    "transport",
]
