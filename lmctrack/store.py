"""The one module that speaks MLflow: states as registered model versions, runs, lineage, URIs.

A State is saved as safetensors files inside an MLflow logged model and registered as a model
version whose `lmctrack.*` tags say what it is (role, step, seeds, density, config hash, parent
URIs). The producing run records the parents and the dataset as inputs and the new state as an
output, so the MLflow UI links both ways. Loading reads the safetensors files: nothing is
unpickled. Every other module receives and returns States and URIs.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

# Quiet, offline MLflow, set before importing it: no run-link banners, no progress bars, no
# telemetry upload, no git probing, no system metrics.
for _var, _value in {
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false",
    "GIT_PYTHON_REFRESH": "quiet",
}.items():
    os.environ.setdefault(_var, _value)

import sqlalchemy  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import (  # noqa: E402
    Dataset,
    DatasetInput,
    InputTag,
    LoggedModel,
    LoggedModelInput,
    LoggedModelOutput,
    Metric,
    Param,
    RunStatus,
    RunTag,
)
from mlflow.entities.model_registry import ModelVersion  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.store.artifact.artifact_repository_registry import (  # noqa: E402
    get_artifact_repository,
)
from mlflow.utils.file_utils import ExclusiveFileLock, local_file_uri_to_path  # noqa: E402

from lmctrack import state as state_files  # noqa: E402
from lmctrack.errors import LmcError  # noqa: E402
from lmctrack.state import State  # noqa: E402

for _name in ("mlflow", "alembic", "sqlalchemy"):
    logging.getLogger(_name).setLevel(logging.ERROR)
# It logs a traceback for every busy sqlite error before raising; _retry_busy handles those.
logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)

TAG_PREFIX = "lmctrack."
STORE_DIR = ".lmctrack"
DB_FILE = "mlflow.db"
DESCRIPTION_FILE = "lmctrack.json"
_ROOT_MARKERS = ("dvc.yaml", "params.yaml", ".git", "pyproject.toml")
_DVC_TMP = "/.dvc/tmp/"
_NOT_TAGS = ("parents", "model_id")  # lmctrack version tags that StateInfo carries as fields
_URI_HELP = "write models:/<name>/<version>, models:/<name>@<alias> or runs:/<run_id>/<path>"
_VERSION_URI = re.compile(r"^models:/(?P<name>[^/@:'\"]+)/(?P<version>\d+)$")
_ALIAS_URI = re.compile(r"^models:/(?P<name>[^/@:'\"]+)@(?P<alias>[\w-]+)$")
_RUNS_URI = re.compile(r"^runs:/(?P<run_id>[^/]+)/(?P<path>.+?)/?$")
_KEY = re.compile(r"^[\w.-]+$")
_RUN_STATUSES = ("RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED")
_BUSY_RETRIES = 8
_FLUSH_SIZE = 1000  # buffered metrics sent at once (MLflow's batch limit)
_FLUSH_SECONDS = 10.0  # ... or after this long, so the UI follows a long training

T = TypeVar("T")


@dataclass
class StateInfo:
    """What the registry knows about one state version."""

    uri: str  # canonical "models:/<name>/<version>"
    name: str
    version: int
    run_id: str
    tags: dict[str, str]  # lmctrack.* version tags without the prefix (parents, model_id apart)
    parents: list[str]  # parent URIs, canonical
    model_id: str = ""  # the MLflow logged model that holds the files
    source: str = field(default="", repr=False)  # artifact location of the files


@dataclass
class LineageNode:
    info: StateInfo
    parents: list[LineageNode]


def project_root(cwd: Path | None = None) -> Path:
    """The user's project folder: where dvc.yaml / params.yaml / .git / pyproject.toml live.

    Inside a DVC experiment temp workspace (`<project>/.dvc/tmp/...`) it is the folder above
    that `.dvc`, so queued experiments still log to the user's store.
    """
    here = (cwd or Path.cwd()).resolve()
    posix = here.as_posix() + "/"
    if _DVC_TMP in posix:
        return Path(posix.split(_DVC_TMP, 1)[0] or "/")
    for folder in (here, *here.parents):
        if any((folder / marker).exists() for marker in _ROOT_MARKERS):
            return folder
    return here


def default_tracking_uri(cwd: Path | None = None) -> str:
    return _sqlite_uri(project_root(cwd) / STORE_DIR / DB_FILE)


def _sqlite_uri(path: Path) -> str:
    return f"sqlite:///{path.resolve().as_posix()}"


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite URI (relative paths made absolute), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(path).resolve()


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested params as dotted keys (train.lr), values as text; lists as JSON."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        elif isinstance(value, list | tuple):
            flat[name] = json.dumps(value)
        else:
            flat[name] = str(value)
    return flat


def _prefixed(tags: dict[str, Any]) -> dict[str, str]:
    """lmctrack tags get the `lmctrack.` prefix; MLflow's own (mlflow.*) pass through."""
    return {
        k if k.startswith(("mlflow.", TAG_PREFIX)) else TAG_PREFIX + k: str(v)
        for k, v in tags.items()
    }


def _unprefixed(tags: dict[str, str]) -> dict[str, str]:
    return {k.removeprefix(TAG_PREFIX): v for k, v in tags.items() if k.startswith(TAG_PREFIX)}


def _is_busy(error: MlflowException) -> bool:
    text = str(error).lower()
    return "database is locked" in text or "database table is locked" in text


def _retry_busy(call: Callable[[], T]) -> T:
    """A sqlite writer that waited out its busy timeout tries again instead of failing (a
    failed transaction was rolled back, so trying again stores nothing twice)."""
    for attempt in range(_BUSY_RETRIES - 1):
        try:
            return call()
        except MlflowException as e:
            if not _is_busy(e):
                raise
        time.sleep(0.05 * 2**attempt * (1 + random.random()))
    return call()


def _fast_commits(connection: sqlite3.Connection, _record: object) -> None:
    """WAL journal + synchronous=NORMAL: a commit needs no fsync (about 10x faster here), and
    readers never block the writer; a power loss can undo the last commits, never corrupt."""
    connection.execute("PRAGMA synchronous=NORMAL")


def _end_status(exc_type: type[BaseException] | None) -> int:
    if exc_type is None:
        return RunStatus.FINISHED
    return RunStatus.KILLED if issubclass(exc_type, KeyboardInterrupt) else RunStatus.FAILED


def _not_found(error: MlflowException) -> bool:
    return error.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")


def _exists_already(error: MlflowException) -> bool:
    return error.error_code in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS")


def _is_local(artifact_uri: str) -> bool:
    return urlparse(artifact_uri).scheme in ("", "file")


@contextmanager
def _local_folder(artifact_uri: str) -> Iterator[Path]:
    """The artifacts as a local folder: read in place when local, else a temporary download."""
    if _is_local(artifact_uri):
        yield Path(local_file_uri_to_path(artifact_uri))
        return
    with tempfile.TemporaryDirectory(prefix="lmctrack-") as tmp:
        yield Path(get_artifact_repository(artifact_uri).download_artifacts("", dst_path=tmp))


@contextmanager
def _writable_folder(artifact_uri: str) -> Iterator[Path]:
    """A folder whose files end up at artifact_uri: written in place when local (no copy),
    else uploaded from a temporary folder on exit."""
    if _is_local(artifact_uri):
        folder = Path(local_file_uri_to_path(artifact_uri))
        folder.mkdir(parents=True, exist_ok=True)
        yield folder
        return
    with tempfile.TemporaryDirectory(prefix="lmctrack-") as tmp:
        yield Path(tmp)
        get_artifact_repository(artifact_uri).log_artifacts(tmp)


def _safe_name(text: str) -> str:
    """A logged-model / folder name MLflow accepts (no / : . % quotes)."""
    return re.sub(r"[^\w-]+", "_", text).strip("_") or "state"


class Run:
    """A handle on one MLflow run, addressed by id so that several can be open or nested.

    Use it as a context manager: normal exit marks it FINISHED, an exception FAILED
    (KeyboardInterrupt: KILLED) and re-raises.
    """

    def __init__(self, store: Store, run_id: str, experiment: str, experiment_id: str) -> None:
        self.store = store
        self.id = run_id
        self.experiment = experiment
        self.experiment_id = experiment_id
        self._client = store.client
        self._datasets: set[tuple[str, str]] = set()
        self._state_names: set[str] = set()
        self._pending: list[Metric] = []
        self._flushed = time.monotonic()
        store._open[run_id] = self

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        try:
            self.flush()
        except Exception:
            exc_type = exc_type or Exception
            raise
        finally:
            self.store._open.pop(self.id, None)
            status = RunStatus.to_string(_end_status(exc_type))
            _retry_busy(lambda: self._client.set_terminated(self.id, status))

    def log_params(self, params: dict[str, Any]) -> None:
        flat = _flatten(params)
        if flat:
            batch = [Param(k, v) for k, v in flat.items()]
            _retry_busy(lambda: self._client.log_batch(self.id, params=batch))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Buffered: sent in one batch every few seconds and when the run ends (cheap to call
        every step)."""
        now = int(time.time() * 1000)
        self._pending += [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        if len(self._pending) >= _FLUSH_SIZE or time.monotonic() - self._flushed > _FLUSH_SECONDS:
            self.flush()

    def log_curve(self, key: str, values: Sequence[float]) -> None:
        """One metric with step = index, so the UI overlays the curves of several runs."""
        for i, value in enumerate(values):
            self.log_metrics({key: value}, step=i)

    def flush(self) -> None:
        """Send the buffered metrics now."""
        batch, self._pending = self._pending, []
        if batch:
            _retry_busy(lambda: self._client.log_batch(self.id, metrics=batch))
        self._flushed = time.monotonic()

    def log_json(self, obj: Any, name: str) -> None:
        self._client.log_dict(self.id, obj, name)

    def log_table(self, rows: list[dict[str, Any]], name: str) -> None:
        """An MLflow table artifact (shown in the UI's evaluation view); name ends with .json."""
        columns = list(dict.fromkeys(k for row in rows for k in row))
        table = {c: [row.get(c) for row in rows] for c in columns}
        _retry_busy(lambda: self._client.log_table(self.id, table, name))

    def log_file(self, path: Path, artifact_path: str | None = None) -> None:
        self._client.log_artifact(self.id, str(path), artifact_path)

    def set_tags(self, tags: dict[str, str]) -> None:
        batch = [RunTag(k, v) for k, v in _prefixed(tags).items()]
        if batch:
            _retry_busy(lambda: self._client.log_batch(self.id, tags=batch))

    def child(self, name: str, params: dict | None = None, tags: dict | None = None) -> Run:
        """A nested run in the same experiment (shown under this one in the UI)."""
        return self.store._start(self.experiment, name, params=params, tags=tags, parent=self.id)

    def save_state(
        self,
        state: State,
        *,
        model_name: str,
        role: str,
        step: int | None,
        tags: dict[str, str],
        parents: Sequence[str] = (),
        dataset: tuple[str, str] | None = None,
    ) -> str:
        """Register `state` as a new version of `model_name`; returns models:/<name>/<version>."""
        parent_infos = [self.store.describe(p) for p in parents]
        meta: dict[str, str] = {"role": role}
        if step is not None:
            meta["step"] = str(step)
        density = state.density()
        if density is not None:
            meta["density"] = f"{density:.6g}"
        meta.update({k: str(v) for k, v in tags.items()})
        meta["parents"] = json.dumps([p.uri for p in parent_infos])
        version_tags = _prefixed(meta)

        model = self._log_model(state, self._state_name(role, step), version_tags)
        version = self.store._register(model_name, model, self.id, version_tags)
        registered = {
            "mlflow.modelVersions": json.dumps([{"name": model_name, "version": version}])
        }
        _retry_busy(lambda: self._client.set_logged_model_tags(model.model_id, registered))
        self._log_inputs(parent_infos, dataset)
        outputs = [LoggedModelOutput(model.model_id, step or 0)]
        _retry_busy(lambda: self._client.log_outputs(self.id, outputs))
        return f"models:/{model_name}/{version}"

    def log_input_states(self, uris: Sequence[str]) -> None:
        """Record states this run read (e.g. the endpoints it interpolated) as model inputs."""
        self._log_inputs([self.store.describe(uri) for uri in uris], None)

    def _log_inputs(self, states: Sequence[StateInfo], dataset: tuple[str, str] | None) -> None:
        new_dataset = dataset is not None and tuple(dataset) not in self._datasets
        datasets = [self._dataset_input(*dataset)] if new_dataset else []
        models = [LoggedModelInput(info.model_id) for info in states if info.model_id]
        if datasets or models:
            _retry_busy(lambda: self._client.log_inputs(self.id, datasets, models))
        if new_dataset:
            self._datasets.add(tuple(dataset))

    def _state_name(self, role: str, step: int | None) -> str:
        """A logged-model name unique in this run, so runs:/<run_id>/<name> finds it."""
        base = _safe_name(role if step is None else f"{role}-{step}")
        name, n = base, 1
        while name in self._state_names:
            n += 1
            name = f"{base}-{n}"
        self._state_names.add(name)
        return name

    def _log_model(self, state: State, name: str, tags: dict[str, str]) -> LoggedModel:
        """Write the safetensors files (and a JSON description) into a new logged model."""
        model = _retry_busy(
            lambda: self._client.create_logged_model(
                self.experiment_id,
                name=name,
                source_run_id=self.id,
                tags=tags,
                model_type="lmctrack.state",
            )
        )
        try:
            with _writable_folder(model.artifact_location) as folder:
                files = state_files.save_state(state, folder)
                description = {
                    "format": "lmctrack.state/safetensors",
                    "files": [f.name for f in files],
                    "tags": _unprefixed(tags),
                }
                (folder / DESCRIPTION_FILE).write_text(json.dumps(description, indent=1))
        except BaseException:
            _retry_busy(lambda: self._client.finalize_logged_model(model.model_id, "FAILED"))
            raise
        _retry_busy(lambda: self._client.finalize_logged_model(model.model_id, "READY"))
        return model

    @staticmethod
    def _dataset_input(name: str, fingerprint: str) -> DatasetInput:
        source = json.dumps({"name": name, "fingerprint": fingerprint})
        dataset = Dataset(name=name, digest=fingerprint[:36], source_type="lmctrack", source=source)
        return DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "train")])


class Store:
    """The tracking store: a sqlite database + artifact folder in the project, or any MLflow URI.

    Precedence of the location: explicit tracking_uri (params.yaml store.tracking_uri), then
    MLFLOW_TRACKING_URI, then `<project>/.lmctrack/mlflow.db`.
    """

    def __init__(self, tracking_uri: str | None = None) -> None:
        uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
        db = _sqlite_path(uri)
        self.tracking_uri = _sqlite_uri(db) if db is not None else uri
        self.root: Path | None = db.parent if db is not None else None
        self._experiments: dict[str, str] = {}
        self._registered: set[str] = set()
        self._versions: dict[str, StateInfo] = {}
        self._open: dict[str, Run] = {}  # runs of this process with metrics maybe buffered
        self.client = self._connect()

    def _connect(self) -> MlflowClient:
        """Open the client; the schema of a new sqlite store is created once, under a lock."""
        try:
            if self.root is None:
                return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
            self.root.mkdir(parents=True, exist_ok=True)
            with ExclusiveFileLock(str(self.root / f"{DB_FILE}.lock")):
                # One process at a time creates the tables (MLflow does not lock that step);
                # building both stores caches their engine per process.
                with closing(sqlite3.connect(self.root / DB_FILE)) as db:
                    db.execute("PRAGMA journal_mode=WAL")
                client = MlflowClient(
                    tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri
                )
                engines = {
                    client._tracking_client.store.engine,
                    client._get_registry_client().store.engine,
                }
            for engine in engines:
                if not sqlalchemy.event.contains(engine, "connect", _fast_commits):
                    sqlalchemy.event.listen(engine, "connect", _fast_commits)
                    engine.dispose()  # pooled connections reopen with the pragma
            return client
        except (MlflowException, sqlalchemy.exc.SQLAlchemyError, sqlite3.Error, OSError) as e:
            raise LmcError(
                f"cannot open the tracking store {self.tracking_uri} ({_first_line(e)}); "
                "fix store.tracking_uri / MLFLOW_TRACKING_URI or unset them for the local store"
            ) from None

    # ---- runs -------------------------------------------------------------------------------

    @contextmanager
    def run(
        self,
        experiment: str,
        name: str,
        *,
        params: dict | None = None,
        tags: dict | None = None,
        parent: Run | str | None = None,
    ) -> Iterator[Run]:
        """A run that ends FINISHED on normal exit, FAILED / KILLED on an exception."""
        parent_id = parent.id if isinstance(parent, Run) else parent
        with self._start(experiment, name, params=params, tags=tags, parent=parent_id) as run:
            yield run

    def _start(
        self,
        experiment: str,
        name: str,
        *,
        params: dict | None,
        tags: dict | None,
        parent: str | None,
    ) -> Run:
        experiment_id = self._experiment_id(experiment)
        run_tags = _prefixed(tags or {})
        if parent is not None:
            self._get_run(parent)
            run_tags["mlflow.parentRunId"] = parent
        info = _retry_busy(
            lambda: self.client.create_run(experiment_id, tags=run_tags, run_name=name)
        ).info
        run = Run(self, info.run_id, experiment, experiment_id)
        if params:
            run.log_params(params)
        return run

    def _experiment_id(self, name: str) -> str:
        """The experiment's id, created with an absolute artifact folder next to the database."""
        if name in self._experiments:
            return self._experiments[name]
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            location = None
            if self.root is not None:
                location = (self.root / "artifacts" / _safe_name(name)).as_uri()
            try:
                experiment_id = _retry_busy(
                    lambda: self.client.create_experiment(name, artifact_location=location)
                )
            except MlflowException as e:
                if not _exists_already(e):
                    raise
                experiment_id = self.client.get_experiment_by_name(name).experiment_id
        else:
            experiment_id = experiment.experiment_id
            if experiment.lifecycle_stage == "deleted":
                _retry_busy(lambda: self.client.restore_experiment(experiment_id))
        self._experiments[name] = experiment_id
        return experiment_id

    def _get_run(self, run_id: str):
        try:
            return self.client.get_run(run_id)
        except MlflowException as e:
            if _not_found(e) or e.error_code == "INVALID_PARAMETER_VALUE":
                raise LmcError(
                    f"run '{run_id}' does not exist in {self.tracking_uri}; copy the run id "
                    "from lmctrack's output or the MLflow UI (lmctrack ui)"
                ) from None
            raise

    def find_run(self, experiment: str, config_hash: str, status: str = "FINISHED") -> str | None:
        """The newest run of the experiment with this config hash and status, if any."""
        if status not in _RUN_STATUSES:
            raise LmcError(f"unknown run status '{status}'; use one of {', '.join(_RUN_STATUSES)}")
        if not _KEY.match(config_hash):
            raise LmcError(f"'{config_hash}' is not a config hash; pass the hex digest")
        experiment_obj = self.client.get_experiment_by_name(experiment)
        if experiment_obj is None:
            return None
        runs = self.client.search_runs(
            [experiment_obj.experiment_id],
            filter_string=(
                f"tags.`{TAG_PREFIX}config_hash` = '{config_hash}' "
                f"and attributes.status = '{status}'"
            ),
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

    def run_tags(self, run_id: str) -> dict[str, str]:
        """The run's lmctrack tags, without the prefix."""
        return _unprefixed(self._get_run(run_id).data.tags)

    def run_metrics(self, run_id: str) -> dict[str, float]:
        """The latest value of each metric of the run."""
        if run_id in self._open:
            self._open[run_id].flush()
        return dict(self._get_run(run_id).data.metrics)

    def run_artifact(self, run_id: str, name: str) -> Path:
        """A local path to one of the run's artifacts (read in place on a local store)."""
        artifact_uri = self._get_run(run_id).info.artifact_uri
        try:
            if _is_local(artifact_uri):
                path = Path(local_file_uri_to_path(artifact_uri)) / name
                if not path.exists():
                    raise FileNotFoundError(path)
                return path
            tmp = tempfile.mkdtemp(prefix="lmctrack-")
            return Path(self.client.download_artifacts(run_id, name, dst_path=tmp))
        except (MlflowException, OSError):
            raise LmcError(
                f"run {run_id} has no artifact '{name}'; check the name in the MLflow UI "
                "or re-run the step that writes it"
            ) from None

    def child_runs(self, run_id: str) -> list[str]:
        """Ids of the runs nested under this one, oldest first."""
        run = self._get_run(run_id)
        runs = self.client.search_runs(
            [run.info.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{run_id}'",
            order_by=["attributes.start_time ASC"],
            max_results=50000,
        )
        return [r.info.run_id for r in runs]

    def run_states(self, run_id: str) -> list[StateInfo]:
        """The state versions registered by the run, in the order they were registered."""
        self._get_run(run_id)
        versions = self._search_versions(f"run_id = '{run_id}'")
        versions.sort(key=lambda mv: (mv.creation_timestamp, int(mv.version)))
        return [self._remember(mv) for mv in versions]

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

    # ---- states -----------------------------------------------------------------------------

    def _register(
        self, model_name: str, model: LoggedModel, run_id: str, tags: dict[str, str]
    ) -> int:
        """A new version of model_name holding the logged model's files."""
        if model_name not in self._registered:
            try:
                _retry_busy(lambda: self.client.create_registered_model(model_name))
            except MlflowException as e:
                if not _exists_already(e):
                    raise
            self._registered.add(model_name)
        version_tags = {**tags, f"{TAG_PREFIX}model_id": model.model_id}
        # The artifact location as source (not models:/<model_id>): MLflow's sqlite registry
        # resolves model-id sources through the process-global tracking URI.
        mv = _retry_busy(
            lambda: self.client.create_model_version(
                model_name,
                source=model.artifact_location,
                run_id=run_id,
                tags=version_tags,
                model_id=model.model_id,
                await_creation_for=0,
            )
        )
        return int(self._remember(mv).version)

    def _remember(self, mv: ModelVersion) -> StateInfo:
        tags = _unprefixed(mv.tags)
        info = StateInfo(
            uri=f"models:/{mv.name}/{mv.version}",
            name=mv.name,
            version=int(mv.version),
            run_id=mv.run_id or "",
            tags={k: v for k, v in tags.items() if k not in _NOT_TAGS},
            parents=json.loads(tags.get("parents", "[]")),
            model_id=tags.get("model_id", ""),
            source=mv.source or "",
        )
        self._versions[info.uri] = info
        return info

    def describe(self, uri: str) -> StateInfo:
        """The registry's record of a state; aliases and runs:/ URIs resolve to the version."""
        if uri in self._versions:
            return self._versions[uri]
        if match := _VERSION_URI.match(uri):
            return self._remember(self._version(match["name"], match["version"], uri))
        if match := _ALIAS_URI.match(uri):
            return self._remember(self._alias(match["name"], match["alias"], uri))
        if match := _RUNS_URI.match(uri):
            model = self._run_model(match["run_id"], match["path"])
            if model is None:
                raise LmcError(
                    f"{uri} is an artifact folder, not a registered state; "
                    "pass the models:/ URI that lmctrack printed for it"
                )
            registered = json.loads(model.tags.get("mlflow.modelVersions", "[]"))
            if not registered:
                raise LmcError(f"{uri} was never registered; re-run the step that produced it")
            first = registered[0]
            return self.describe(f"models:/{first['name']}/{first['version']}")
        raise LmcError(f"'{uri}' is not a state URI; {_URI_HELP}")

    def _version(self, name: str, version: str, uri: str) -> ModelVersion:
        try:
            return self.client.get_model_version(name, version)
        except MlflowException as e:
            if not _not_found(e):
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
            if not _not_found(e) and "alias" not in str(e).lower():
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
            if not _not_found(e):
                raise
            names = sorted(m.name for m in self.client.search_registered_models(max_results=20))
            raise LmcError(
                f"{uri}: no registered model '{name}' in {self.tracking_uri} "
                f"(models: {', '.join(names) or 'none'}); check the name or the store location"
            ) from None

    def _run_model(self, run_id: str, path: str) -> LoggedModel | None:
        """The logged model named `path` produced by the run, or None for a plain artifact path."""
        run = self._get_run(run_id)
        if "/" in path or not re.fullmatch(r"[\w-]+", path):
            return None
        models = self.client.search_logged_models(
            [run.info.experiment_id],
            filter_string=f"source_run_id = '{run_id}' AND name = '{path}'",
            max_results=1,
        )
        return models[0] if models else None

    def _location(self, uri: str) -> str:
        """Artifact URI of the folder that holds a state's files."""
        if match := _RUNS_URI.match(uri):
            model = self._run_model(match["run_id"], match["path"])
            if model is not None:
                return model.artifact_location
            run = self._get_run(match["run_id"])
            return f"{run.info.artifact_uri.rstrip('/')}/{match['path'].strip('/')}"
        info = self.describe(uri)
        if info.source.startswith("models:/"):
            return self.client.get_logged_model(
                info.source.removeprefix("models:/")
            ).artifact_location
        return info.source

    def load_state(self, uri: str) -> State:
        """Read a state's safetensors files (never unpickles)."""
        with _local_folder(self._location(uri)) as folder:
            if not (folder / state_files.WEIGHTS_FILE).is_file():
                raise LmcError(f"{uri} holds no lmctrack state; {self._state_hint(uri)}")
            try:
                return state_files.load_state(folder)
            except LmcError as e:
                raise LmcError(f"{uri}: {e}") from None

    def _state_hint(self, uri: str) -> str:
        """What to pass instead of a runs:/ URI that names no state: the run's own states."""
        match = _RUNS_URI.match(uri)
        if match is None:
            return "re-run the step that produced it"
        run = self._get_run(match["run_id"])
        models = self.client.search_logged_models(
            [run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'"
        )
        names = ", ".join(sorted(m.name for m in models)) or "none"
        return f"that run's states are: {names} (pass runs:/<run_id>/<state> or a models:/ URI)"

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
            _retry_busy(
                lambda: self.client.set_registered_model_alias(info.name, alias, str(info.version))
            )
        except MlflowException as e:
            raise LmcError(
                f"cannot set alias '{alias}' ({_first_line(e)}); use letters, digits, _ and -, "
                "not 'latest' or v<number>"
            ) from None

    # ---- places -----------------------------------------------------------------------------

    def checkpoint_dir(self, key: str) -> Path:
        """A folder for a resumable training's plain checkpoint files (not tracked by MLflow)."""
        if not _KEY.match(key) or key in (".", ".."):
            raise LmcError(f"checkpoint key '{key}' must be letters, digits, '.', '_' or '-'")
        base = self.root if self.root is not None else project_root() / STORE_DIR
        folder = base / "checkpoints" / key
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def ui_command(self, port: int = 5000) -> list[str]:
        """argv of the MLflow UI on this store, listening on localhost only."""
        argv = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", self.tracking_uri]
        if self.root is not None:
            argv += ["--default-artifact-root", (self.root / "artifacts").as_uri()]
        # one web worker: a local UI for one researcher starts in seconds instead of ~30 s
        return [*argv, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]


def _first_line(error: BaseException, limit: int = 160) -> str:
    """The gist of an MLflow error, to quote inside a one-line LmcError."""
    text = str(getattr(error, "message", None) or error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."
