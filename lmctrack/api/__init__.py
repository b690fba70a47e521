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

import importlib

from lmctrack.api.registry import ParamsLike, lineage, open_store, states  # noqa: F401

EXTRAS = (  # the tools beyond the two algorithms
    "connect",
    "distill",
    "followup",
    "hessian",
    "import_dataset",
    "mnist1d",
    "plane",
    "random_plane",
    "random_prune",
    "reinit",
    "report",
    "soup",
    "transport",
)
PAPER = (  # the paper's procedures; the CLI's context, session and tables too
    "Context",
    "TrainedRun",
    "align",
    "find_k",
    "fork",
    "forks",
    "imp",
    "instability",
    "interpolate",
    "load",
    "session",
    "state_name",
    "tables",
    "train",
    "trained",
    "within",
)


def __getattr__(name: str):
    """The procedures are imported on first use (they import torch); lookups are not."""
    module = "extras" if name in EXTRAS else "paper" if name in PAPER else None
    if module is None:
        raise AttributeError(f"module 'lmctrack.api' has no attribute '{name}'")
    return getattr(importlib.import_module(f"lmctrack.api.{module}"), name)


__all__ = sorted([*EXTRAS, *(n for n in PAPER if n.islower()), "lineage", "states"])
