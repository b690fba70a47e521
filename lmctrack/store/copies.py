"""Copies: what a create request re-sent after a lost answer made twice, found and deleted with
one search per kind each time the store settles, instead of one search per creation.

MLflow's client sends a request again when its answer is lost (a read timeout, a 5xx under load),
so what the first request created exists too. Over HTTP every run and logged model lmctrack
creates carries a request tag `<batch>-<uuid>`, and every version is known by its logged model.
When the store settles, one search per kind (runs, logged models, versions) finds what this batch
made; everything but the one whose answer the caller got is deleted, and a logged model that the
server linked to a deleted version too is linked to the kept one alone. A run's copy is RUNNING
until then (a claim run's is deleted at once instead: it would hold the claim against its owner);
a logged model's stays PENDING without files; a process killed before it settles leaves them,
and its RUNNING copies are reaped like its other runs.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

from lmctrack.store.backend import not_found, retry_busy
from lmctrack.store.location import TAG_PREFIX

if TYPE_CHECKING:
    from mlflow import MlflowClient

REQUEST = "request"  # the tag naming one create request
_PAGE = 10000
T = TypeVar("T")


def delete_copies(found: Iterable[T], kept: T, delete: Callable[[T], object]) -> None:
    """Delete every id in found but kept (a re-sent delete finds it gone)."""
    for copy in found:
        if copy != kept:
            try:
                delete(copy)
            except MlflowException as e:
                if not not_found(e):
                    raise


def link(client: MlflowClient, model_id: str, mv: ModelVersion) -> None:
    """Tag the logged model with the version made of it: the UI links the two, and a
    runs:/<run_id>/<name> URI resolves to the version through it."""
    versions = json.dumps([{"name": mv.name, "version": int(mv.version)}])
    retry_busy(lambda: client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: versions}))


def paged(search: Callable[[str | None], Any]) -> list:
    """Every page of an MLflow search, `search(page_token)` giving one page."""
    found, token = [], None
    while True:
        page = search(token)
        found.extend(page)
        token = page.token
        if not token:
            return found


@dataclass
class Batch:
    """What one batch of requests created: the ids the callers got."""

    name: str
    runs: dict[str, str] = field(default_factory=dict)  # request -> run id
    models: dict[str, str] = field(default_factory=dict)  # request -> logged model id
    versions: dict[str, ModelVersion] = field(default_factory=dict)  # logged model id -> version
    experiments: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.runs or self.models or self.versions)


class Copies:
    """The creations of one store client since it last settled (module docstring)."""

    def __init__(self) -> None:
        self._prefix = uuid.uuid4().hex[:16]
        self._count = 0
        self._lock = threading.Lock()
        self._batch = Batch(f"{self._prefix}.0")

    def request(self) -> dict[str, str]:
        """A new create request's tag."""
        with self._lock:
            return {TAG_PREFIX + REQUEST: f"{self._batch.name}-{uuid.uuid4().hex}"}

    def made(self, kind: str, tags: dict[str, str], made_id: str, experiment_id: str) -> None:
        """A run or logged model (`kind`) created with a request tag and answered with made_id."""
        with self._lock:
            getattr(self._batch, kind)[tags[TAG_PREFIX + REQUEST]] = made_id
            self._batch.experiments.add(experiment_id)

    def made_version(self, mv: ModelVersion, model_id: str) -> None:
        with self._lock:
            self._batch.versions[model_id] = mv

    def take(self) -> Batch | None:
        """The batch so far, if it made anything; later requests go into a new one."""
        with self._lock:
            if not self._batch:
                return None
            batch, self._count = self._batch, self._count + 1
            self._batch = Batch(f"{self._prefix}.{self._count}")
            return batch


def delete(client: MlflowClient, batch: Batch) -> None:
    """Delete the copies the batch's re-sent requests made: one search per kind."""
    experiments = sorted(batch.experiments)
    for made in _made(batch.runs):
        runs = paged(
            lambda token, made=made: client.search_runs(
                experiments, made, max_results=_PAGE, page_token=token
            )
        )
        _drop(((r.data.tags, r.info.run_id) for r in runs), batch.runs, client.delete_run)
    models = [
        model
        for made in _made(batch.models)
        for model in paged(
            lambda token, made=made: client.search_logged_models(
                experiments, made, max_results=100, page_token=token
            )
        )
    ]
    _drop(((m.tags, m.model_id) for m in models), batch.models, client.delete_logged_model)
    # a tracking server tags each logged model with every version made of it: copies show there
    linked = {m.model_id: json.loads(m.tags.get(MLFLOW_MODEL_VERSIONS, "[]")) for m in models}
    for model_id, mine in batch.versions.items():
        if model_id not in linked:  # made in a batch before: ask the registry
            _drop_versions(client, batch.versions)
            return
        kept = (mine.name, str(mine.version))
        others = [(v["name"], str(v["version"])) for v in linked[model_id]]
        if others != [kept]:
            delete_copies(others, kept, lambda copy: client.delete_model_version(*copy))
            link(client, model_id, mine)


def _made(requests: dict[str, str]) -> list[str]:
    """Filters for what the requests' batches made: one, unless a request was named while the
    batch before was taken."""
    batches = sorted({request.rsplit("-", 1)[0] for request in requests})
    return [f"tags.`{TAG_PREFIX}{REQUEST}` LIKE '{name}-%'" for name in batches]


def _drop(found: Iterable[tuple[dict, str]], kept: dict[str, str], delete: Callable) -> None:
    for tags, made_id in found:
        request = tags.get(TAG_PREFIX + REQUEST)
        if request in kept:
            delete_copies([made_id], kept[request], delete)


def _drop_versions(client: MlflowClient, kept: dict[str, ModelVersion]) -> None:
    """Versions of the same logged model but the kept one; its logged model re-linked."""
    runs = ", ".join(sorted({f"'{mv.run_id}'" for mv in kept.values()}))
    found = paged(
        lambda token: client.search_model_versions(
            f"run_id IN ({runs})", max_results=_PAGE, page_token=token
        )
    )
    for mv in found:
        model_id = mv.tags.get(f"{TAG_PREFIX}model_id", "")
        mine = kept.get(model_id)
        if mine is not None and (mv.name, mv.version) != (mine.name, mine.version):
            delete_copies(
                [mv.version], mine.version, lambda v, n=mv.name: client.delete_model_version(n, v)
            )
            link(client, model_id, mine)
