"""States in the model registry: registering, URIs, descriptions, search and lineage.

Every stored state file's sha256 is a version tag; loading a state verifies it (store.loading).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from mlflow.entities import LoggedModel
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

from lmctrack.errors import LmcError
from lmctrack.store.access import Refused
from lmctrack.store.backend import (
    ServerClient,
    exists_already,
    first_line,
    not_found,
    retry_busy,
    unprefixed,
)
from lmctrack.store.copies import Copies, link
from lmctrack.store.held import Held
from lmctrack.store.info import CORRUPT, RUNS_URI, URI_HELP, LineageNode, StateInfo
from lmctrack.store.loading import Loading
from lmctrack.store.location import TAG_PREFIX

if TYPE_CHECKING:
    from mlflow import MlflowClient

_NOT_TAGS = (
    "parents",
    "model_id",
    "sha256",
    "architecture",
)  # version tags that StateInfo carries as fields
_NAME = r"(?P<name>(?!\.+[/@])[^/@:'\"]+)"  # a model name, never '.' or '..'
_VERSION_URI = re.compile(rf"^models:/{_NAME}/(?P<version>\d+)$")
_ALIAS_URI = re.compile(rf"^models:/{_NAME}@(?P<alias>[\w-]+)$")
KEY = re.compile(r"^[\w.:-]+$")


def _quoted(value: str, what: str) -> str:
    """A value for a search filter: MLflow's filter strings cannot escape quotes."""
    if "'" in value or "\\" in value:
        raise LmcError(f"the {what} to search for, {value!r}, holds a quote or backslash; drop it")
    return value


class Registry(Loading):
    """The registry half of Store (mixed in): needs client, tracking_uri, root, _get_run."""

    client: MlflowClient
    tracking_uri: str
    root: Path | None
    _versions: dict[str, StateInfo]
    _verified: set[str]
    _copies: Copies
    _held: Held

    def _search_versions(self, filter_string: str) -> list[ModelVersion]:
        found: list[ModelVersion] = []
        token = None
        while True:
            page = self.client.search_model_versions(
                filter_string, max_results=10000, page_token=token
            )
            found.extend(page)
            token = page.token
            if not token:
                return found

    def _register(
        self, model_name: str, model: LoggedModel, run_id: str, tags: dict[str, str], page: str
    ) -> StateInfo:
        """A new version of model_name holding the logged model's files, with its `page`: the
        description in words that store.pages writes."""
        version_tags = {**tags, f"{TAG_PREFIX}model_id": model.model_id}

        def create() -> ModelVersion:
            # The artifact location as source (not models:/<model_id>): MLflow's sqlite registry
            # resolves model-id sources through the process-global tracking URI.
            return retry_busy(
                lambda: self.client.create_model_version(
                    model_name,
                    source=model.artifact_location,
                    run_id=run_id,
                    tags=version_tags,
                    model_id=model.model_id,
                    description=page or None,
                    await_creation_for=0,
                )
            )

        try:  # the registered model exists but for the first state of a network
            mv = create()
        except MlflowException as e:
            if not not_found(e):
                raise
            mv = self._first_version(model_name, create)
        except Refused:
            # a server with authentication refuses a version of a missing model (403) as it
            # refuses one the account may not edit: the model's absence tells them apart
            if not self._missing(model_name):
                self.client.delete_logged_model(model.model_id)  # files registered nowhere
                raise
            mv = self._first_version(model_name, create)
        if self.root is None:  # a copy a re-sent request made goes when the store settles
            self._copies.made_version(mv, model.model_id)
        if not isinstance(self.client, ServerClient):  # a server links them itself (MLflow 3)
            link(self.client, model.model_id, mv)
        return self._remember(mv)

    def _first_version(self, model_name: str, create: Callable[[], ModelVersion]) -> ModelVersion:
        try:
            retry_busy(lambda: self.client.create_registered_model(model_name))
        except MlflowException as e:
            if not exists_already(e):
                raise
        return create()

    def _missing(self, model_name: str) -> bool:
        try:
            self.client.get_registered_model(model_name)
        except MlflowException as e:
            if not_found(e):
                return True
            raise
        return False

    def _request(self) -> dict[str, str]:
        """A tag naming one create request, over HTTP only (store.copies)."""
        return self._copies.request() if self.root is None else {}

    def _remember(self, mv: ModelVersion) -> StateInfo:
        tags = unprefixed(mv.tags)
        info = StateInfo(
            uri=f"models:/{mv.name}/{mv.version}",
            name=mv.name,
            version=int(mv.version),
            run_id=mv.run_id or "",
            tags={k: v for k, v in tags.items() if k not in _NOT_TAGS},
            parents=json.loads(tags.get("parents", "[]")),
            model_id=tags.get("model_id", ""),
            source=mv.source or "",
            sha256=json.loads(tags.get("sha256", "{}")),
            architecture=json.loads(tags.get("architecture", "{}")),
        )
        self._versions[info.uri] = info
        return info

    def find_state(self, key: str) -> str | None:
        """The state registered under `key` (Run.save_state(key=...)) whose files verify, if any;
        one that fails verification is marked corrupt and passed over."""
        if not KEY.match(key):
            raise LmcError(f"state key '{key}' must be letters, digits, '.', ':', '_' or '-'")
        return self._verified_first(
            self._search_versions(f"tags.`{TAG_PREFIX}state_key` = '{key}'")
        )

    def _keyed(self, work: str) -> list[ModelVersion]:
        """The versions registered under any key `<work>:<part>`: one search for all the states
        of one piece of work (a training registers each of its Wk)."""
        return self._search_versions(f"tags.`{TAG_PREFIX}state_key` LIKE '{work}:%'")

    def _verified_first(self, versions: list[ModelVersion]) -> str | None:
        """The earliest of the versions not marked corrupt whose files verify."""
        versions.sort(key=lambda mv: (mv.creation_timestamp, int(mv.version)))
        for mv in versions:
            info = self._remember(mv)
            if info.tags.get(CORRUPT) == "true":
                continue
            try:
                with self._files(info.uri) as folder:
                    self._verify(info, folder)
            except LmcError:
                continue
            return info.uri
        return None

    def search_states(self, model: str | None = None, **tags: object) -> list[StateInfo]:
        """The states whose lmctrack version tags equal the given values (e.g. role='trained',
        step=3000, network='mnist1d_cnn'), of the registered model `model` when given, newest
        first; states marked corrupt are left out."""
        terms = [] if model is None else [f"name = '{_quoted(model, 'model')}'"]
        for key, value in tags.items():
            if not KEY.match(key):
                raise LmcError(f"'{key}' is not a state tag; use letters, digits, '.', '_', '-'")
            terms.append(f"tags.`{TAG_PREFIX}{key}` = '{_quoted(str(value), key)}'")
        versions = self._search_versions(" AND ".join(terms))
        versions.sort(key=lambda mv: (mv.creation_timestamp, int(mv.version)), reverse=True)
        found = [self._remember(mv) for mv in versions]
        return [info for info in found if info.tags.get(CORRUPT) != "true"]

    def describe(self, uri: str) -> StateInfo:
        """The registry's record of a state; aliases and runs:/ URIs resolve to the version."""
        if uri in self._versions:
            return self._versions[uri]
        try:
            return self._describe(uri)
        except MlflowException as e:
            raise LmcError(f"cannot resolve {uri} ({first_line(e)}); {URI_HELP}") from None

    def _describe(self, uri: str) -> StateInfo:
        if match := _VERSION_URI.match(uri):
            return self._remember(self._version(match["name"], match["version"], uri))
        if match := _ALIAS_URI.match(uri):
            return self._remember(self._alias(match["name"], match["alias"], uri))
        if match := RUNS_URI.match(uri):
            model = self._run_model(match["run_id"], match["path"])
            if model is None:
                raise LmcError(
                    f"{uri} is an artifact folder, not a registered state; "
                    "pass the models:/ URI that lmctrack printed for it"
                )
            registered = json.loads(model.tags.get(MLFLOW_MODEL_VERSIONS, "[]"))
            if not registered:
                raise LmcError(f"{uri} was never registered; re-run the step that produced it")
            first = registered[0]
            return self.describe(f"models:/{first['name']}/{first['version']}")
        raise LmcError(f"'{uri}' is not a state URI; {URI_HELP}")

    def _version(self, name: str, version: str, uri: str) -> ModelVersion:
        try:
            return self.client.get_model_version(name, version)
        except MlflowException as e:
            if not not_found(e):
                raise
        self._known_model(name, uri)
        latest = self._search_versions(f"name = '{name}'")
        top = max((int(mv.version) for mv in latest), default=0)
        known = f"versions 1..{top}" if top else "no versions"
        raise LmcError(
            f"{uri} does not exist (model '{name}' has {known}); "
            "pick an existing version, e.g. from lmctrack's output or the MLflow UI"
        )

    def _alias(self, name: str, alias: str, uri: str) -> ModelVersion:
        try:
            return self.client.get_model_version_by_alias(name, alias)
        except MlflowException as e:
            if not not_found(e) and "alias" not in str(e).lower():
                raise
        self._known_model(name, uri)
        aliases = sorted(self.client.get_registered_model(name).aliases)
        known = ", ".join(aliases) if aliases else "none"
        raise LmcError(
            f"model '{name}' has no alias '{alias}' (aliases: {known}); "
            "use an existing alias or a version number, models:/<name>/<version>"
        )

    def _known_model(self, name: str, uri: str) -> None:
        try:
            self.client.get_registered_model(name)
        except MlflowException as e:
            if not not_found(e):
                raise
            names = sorted(m.name for m in self.client.search_registered_models(max_results=20))
            raise LmcError(
                f"{uri}: no registered model '{name}' in {self.tracking_uri} "
                f"(models: {', '.join(names) or 'none'}); check the name or the store location"
            ) from None

    def _run_model(self, run_id: str, path: str) -> LoggedModel | None:
        """The logged model named `path` produced by the run, or None for a plain artifact path."""
        run = self._get_run(run_id)
        if not re.fullmatch(r"[\w-]+", path):
            return None
        models = self.client.search_logged_models(
            [run.info.experiment_id],
            filter_string=f"source_run_id = '{run_id}' AND name = '{path}'",
            max_results=1,
        )
        return models[0] if models else None

    def lineage(self, uri: str) -> LineageNode:
        """The state and, recursively, the states it came from (a cycle is cut, not followed)."""
        done: dict[str, LineageNode] = {}

        def visit(current: str, path: frozenset[str]) -> LineageNode:
            info = self.describe(current)
            if info.uri in done:
                return done[info.uri]
            inner = path | {info.uri}
            parents = [visit(p, inner) for p in info.parents if p not in inner]
            done[info.uri] = LineageNode(info, parents)
            return done[info.uri]

        return visit(uri, frozenset())

    def set_alias(self, uri: str, alias: str) -> None:
        """Point models:/<name>@<alias> at the state `uri`."""
        info = self.describe(uri)
        try:
            retry_busy(
                lambda: self.client.set_registered_model_alias(info.name, alias, str(info.version))
            )
        except MlflowException as e:
            raise LmcError(
                f"cannot set alias '{alias}' ({first_line(e)}); use letters, digits, _ and -, "
                "not 'latest' or v<number>"
            ) from None
