"""Lookups in the store: open it, a state's lineage, states by their tags. They need no data and
no network, so nothing here imports torch: `lmctrack lineage` answers in the time MLflow takes to
open the store (benchmarks/README.md)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from lmctrack.config.params import Params, resolve

if TYPE_CHECKING:
    from lmctrack.store import LineageNode, Store

ParamsLike = Path | str | Params | None


def open_store(params: ParamsLike = None, sets: Mapping[str, object] | None = None) -> Store:
    """The store of these params (store.tracking_uri), without loading data or a network."""
    from lmctrack.store import Store

    return Store(resolve(params, sets).store.tracking_uri)


def lineage(
    uri: str, *, params: ParamsLike = None, sets: Mapping[str, object] | None = None
) -> LineageNode:
    """The ancestry graph of a state: a LineageNode with `.info` and `.parents` (a state shared by
    several paths is one node); `.graph()` gives its nodes and edges."""
    return open_store(params, sets).lineage(uri)


def states(
    *,
    model: str | None = None,
    params: ParamsLike = None,
    sets: Mapping[str, object] | None = None,
    **tags: object,
) -> list:
    """Registered states whose tags match, newest first: e.g. `states(role="trained", step=3000)`."""
    store = open_store(params, sets)
    return store.search_states(model=model, **{k: str(v) for k, v in tags.items()})
