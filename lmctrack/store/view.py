"""The Store as a run (store.runs) and a claim (store.claims) see it: store.core builds its
Store on those modules, so they name the Store through this Protocol and never import core."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import LoggedModel

    from lmctrack.store.registry import StateInfo


class StoreView(Protocol):
    """What of store.core.Store a run and a claim use (underscored: lmctrack's own)."""

    client: MlflowClient
    tracking_uri: str
    _open: dict[str, Any]  # this process's runs by id

    def run(
        self, experiment: str, name: str, *, params=None, tags=None, parent=None
    ) -> AbstractContextManager: ...

    def running(self, experiment: str) -> list: ...

    def describe(self, uri: str) -> StateInfo: ...

    def find_state(self, key: str) -> str | None: ...

    def _start(self, experiment: str, name: str, *, params, tags, parent: str | None): ...

    def _state_lock(self, key: str | None) -> AbstractContextManager[None]: ...

    def _register(
        self, model_name: str, model: LoggedModel, run_id: str, tags: dict[str, str], page: str
    ) -> StateInfo: ...

    def _request(self) -> dict[str, str]: ...

    def _delete_copies(
        self, found: Iterable[str], kept: str, delete: Callable[[str], object]
    ) -> None: ...
