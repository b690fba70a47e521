"""Run: logging into one MLflow run (params, buffered metrics, artifacts, tags, nested runs) and
saving states from it, each registered once."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.entities import (
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
from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_ARTIFACTS, MLFLOW_RUN_NOTE

from lmctrack.errors import LmcError, redact
from lmctrack.store import pages, pyfunc
from lmctrack.store.backend import deferred, flatten, prefixed, retry_busy, unprefixed, write_errors
from lmctrack.store.cost import Meter
from lmctrack.store.files import safe_name, sha256, writable_folder
from lmctrack.store.inputs import DataRef
from lmctrack.store.location import TAG_PREFIX
from lmctrack.store.registry import KEY, StateInfo

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

    from lmctrack.engine.state import State
    from lmctrack.store.view import StoreView

_FLUSH_SIZE = 1000  # buffered metrics sent at once (MLflow's batch limit)
_FLUSH_SECONDS = 10.0  # ... or after this long, so the UI follows a long training


def _json_value(value: Any) -> Any:
    """A table cell as pandas writes it to JSON: NaN and infinities become null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _end_status(exc_type: type[BaseException] | None) -> str:
    if exc_type is None:
        status = RunStatus.FINISHED
    else:
        status = RunStatus.KILLED if issubclass(exc_type, KeyboardInterrupt) else RunStatus.FAILED
    return RunStatus.to_string(status)


class Run:
    """A handle on one MLflow run, addressed by id so that several can be open or nested.

    Use it as a context manager: normal exit marks it FINISHED, an exception FAILED
    (KeyboardInterrupt: KILLED) and re-raises. A run whose process dies before that is marked
    KILLED when lmctrack next meets it (Store.reap). A run that ends records what it cost
    (store.cost: wall and CPU seconds, device, GPU peak memory).
    """

    def __init__(
        self, store: StoreView, run_id: str, experiment: str, experiment_id: str, artifact_uri: str
    ) -> None:
        self.store = store
        self.id = run_id
        self.artifact_uri = artifact_uri
        self.experiment = experiment
        self.experiment_id = experiment_id
        self._client = store.client
        self._datasets: set[tuple[str, str]] = set()  # (name, fingerprint) logged
        self._model_inputs: set[str] = set()
        self._keyed: dict[str, list[ModelVersion]] = {}  # by work: versions registered under it
        self._saved: dict[str, str] = {}  # state key -> URI, of the states this run registered
        self._tags: dict[str, str] = {}  # sent with the metrics
        self._state_names: set[str] = set()
        self._tables: list[dict[str, str]] = []  # listed in MLFLOW_LOGGED_ARTIFACTS
        self._pending: list[Metric] = []
        self._params: dict[str, str] = {}  # sent with the metrics
        # inputs and outputs, sent with the metrics: one request each per flush, not per state
        self._inputs: tuple[list[DatasetInput], list[LoggedModelInput]] = ([], [])
        self._outputs: list[LoggedModelOutput] = []
        self._flushed = time.monotonic()
        self._meter = Meter()
        store._open[run_id] = self

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        try:
            with write_errors(self.store.tracking_uri):
                metrics, tags = self._meter.finish()
                self.log_metrics(metrics)
                self.flush(tags)
        except Exception:
            exc_type = exc_type or Exception
            raise
        finally:
            self.store._open.pop(self.id, None)
            self._terminate(_end_status(exc_type), failing=exc_type is not None)

    def _terminate(self, status: str, failing: bool) -> None:
        """End the run; when the store cannot record that (disk full) while another error is
        already on its way, that error wins and the run is reaped once this process is gone."""
        try:
            with write_errors(self.store.tracking_uri):
                retry_busy(lambda: self._client.set_terminated(self.id, status))
        except LmcError:
            if not failing:
                raise

    def log_params(self, params: dict[str, Any]) -> None:
        """Buffered like metrics: sent in their batch (a read of the run through the store sends
        them first). A param given again with another value is sent apart, for MLflow to refuse."""
        flat = flatten(params)
        if any(self._params.get(k, v) != v for k, v in flat.items()):
            self.flush()
        self._params.update(flat)

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

    def flush(self, tags: dict[str, str] | None = None) -> None:
        """Send the buffered params and metrics now, and `tags` with them (one request while
        MLflow's batch limits allow), and the inputs and outputs recorded since the last flush
        (one request each)."""
        (datasets, models), self._inputs = self._inputs, ([], [])
        if datasets or models:
            retry_busy(lambda: self._client.log_inputs(self.id, datasets, models))
        outputs, self._outputs = self._outputs, []
        if outputs:
            retry_busy(lambda: self._client.log_outputs(self.id, outputs))
        metrics, self._pending = self._pending, []
        params, self._params = [Param(k, v) for k, v in self._params.items()], {}
        tags, self._tags = {**self._tags, **(tags or {})}, {}
        run_tags = [RunTag(k, v) for k, v in prefixed(tags).items()]
        if metrics or params or run_tags:  # MLflow's client splits them at the batch limits
            retry_busy(
                lambda: self._client.log_batch(
                    self.id, metrics=metrics, params=params, tags=run_tags
                )
            )
        self._flushed = time.monotonic()

    def log_json(self, obj: Any, name: str) -> None:
        self._write(name, redact(json.dumps(obj, indent=2)).encode())

    def log_table(self, rows: list[dict[str, Any]], name: str) -> None:
        """An MLflow table artifact (name ends with .json), as MLflow's log_table writes one
        (pandas' split layout; missing and non-finite values null) and lists it in the run tag
        the UI's evaluation view reads; without the three reads of the run it makes first. The
        same name logged again replaces the table (MLflow's would append the rows)."""
        columns = list(dict.fromkeys(k for row in rows for k in row))
        data = [[_json_value(row.get(c)) for c in columns] for row in rows]
        self._write(name, redact(json.dumps({"columns": columns, "data": data})).encode())
        if (entry := {"path": name, "type": "table"}) not in self._tables:
            self._tables.append(entry)
            self._tags[MLFLOW_LOGGED_ARTIFACTS] = json.dumps(self._tables)

    def note(self, markdown: str) -> None:
        """The run's description on its page (MLflow's note), sent with the metrics."""
        self._tags[MLFLOW_RUN_NOTE] = markdown

    def log_file(self, path: str | Path, artifact_path: str | None = None) -> None:
        name = Path(path).name
        self._write(f"{artifact_path}/{name}" if artifact_path else name, Path(path).read_bytes())

    def _write(self, name: str, data: bytes) -> None:
        """An artifact written straight to the run's location, known since the run was created
        (MLflow's log_dict and log_artifact first read the run back from the store to find it);
        to a tracking server, behind the caller (store.backend.ServerClient)."""

        def write() -> None:
            uri = self.store.tracking_uri
            with write_errors(uri), writable_folder(self.artifact_uri, uri) as folder:
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                (folder / name).write_bytes(data)

        deferred(self._client, write)

    def set_tags(self, tags: dict[str, str]) -> None:
        batch = [RunTag(k, v) for k, v in prefixed(tags).items()]
        if batch:
            retry_busy(lambda: self._client.log_batch(self.id, tags=batch))

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
        dataset: DataRef | None = None,
        key: str | None = None,
        architecture: dict[str, Any] | None = None,
    ) -> str:
        """Register `state` as a new version of `model_name`; returns models:/<name>/<version>.

        With its `architecture` (network name, width, num_classes, input_shape: what
        lmctrack.engine.models.build_model takes), plain MLflow can load the version as a pyfunc
        model (store.pyfunc) and the UI shows its input and output schema.

        With a key (a unique identity of the state: config hash, role, step, copy), a version
        registered earlier under that key whose files verify is returned instead: a re-run
        after a kill mid-registration adopts what the dead run registered, and no state is
        registered twice. Non-finite weights (a diverged training) are refused.
        """
        from lmctrack.engine import state as state_files  # torch: only where a state is saved

        if bad := state_files.non_finite(state):
            raise LmcError(
                f"the {role} state has non-finite values in {bad}: training diverged; lower "
                "train.lr or add warmup and re-run (nothing was registered)"
            )
        arch = None if architecture is None else pyfunc.architecture(architecture)
        parent_infos = [self.store.describe(p) for p in parents]
        with self.store._state_lock(key), write_errors(self.store.tracking_uri):
            found = self._found_state(key) if key is not None else None
            if found is None:
                meta = self._version_tags(state, role, step, tags, parent_infos, key, arch)
                page = pages.description(meta, parent_infos, self.experiment_id, self.id)
                info = self._register(state, model_name, role, step, meta, arch, page)
                if self.store.root is None:  # what reading it back from the server would give
                    self.store._held.put(info.uri, state)
                if key is not None:
                    self._saved[key] = info.uri
                    self.store.unregistered.discard(key.rpartition(":")[0])
            else:
                info = self.store.describe(found)
            self._log_inputs(parent_infos, dataset)
            if info.model_id:
                self._outputs.append(LoggedModelOutput(info.model_id, step or 0))
        return info.uri

    def _found_state(self, key: str) -> str | None:
        """Store.find_state(key), from one search per piece of work in this run: the versions
        under every key `<work>:<part>` (a new claimant registers none of them meanwhile)."""
        work, sep, _ = key.rpartition(":")
        if key in self._saved:
            return self._saved[key]
        if not sep or not KEY.match(key):
            return self.store.find_state(key)
        if work in self.store.unregistered:
            return None
        if work not in self._keyed:
            self._keyed[work] = self.store._keyed(work)
        tag = f"{TAG_PREFIX}state_key"
        return self.store._verified_first([v for v in self._keyed[work] if v.tags.get(tag) == key])

    @staticmethod
    def _version_tags(
        state: State,
        role: str,
        step: int | None,
        tags: dict[str, str],
        parents: list[StateInfo],
        key: str | None,
        arch: dict[str, Any] | None,
    ) -> dict[str, str]:
        """What the version's lmctrack tags say about the state (without the prefix)."""
        meta: dict[str, str] = {"role": role}
        if step is not None:
            meta["step"] = str(step)
        density = state.density()
        if density is not None:
            meta["density"] = f"{density:.6g}"
        meta.update({k: str(v) for k, v in tags.items()})
        meta["parents"] = json.dumps([p.uri for p in parents])
        if key is not None:
            meta["state_key"] = key
        if arch is not None:
            meta["network"] = arch["name"]
            meta["architecture"] = json.dumps(arch)
        return meta

    def _register(
        self,
        state: State,
        model_name: str,
        role: str,
        step: int | None,
        meta: dict[str, str],
        arch: dict[str, Any] | None,
        page: str,
    ) -> StateInfo:
        version_tags = prefixed(meta)
        name = self._state_name(role, step)
        model, digests = self._log_model(state, name, version_tags, arch)
        version_tags = {**version_tags, **prefixed({"sha256": json.dumps(digests)})}
        return self.store._register(model_name, model, self.id, version_tags, page)

    def log_dataset(self, dataset: DataRef) -> None:
        """Record a dataset this run read or made (once per run)."""
        self._log_inputs([], dataset)

    def log_input_states(self, uris: Sequence[str]) -> None:
        """Record states this run read (e.g. the endpoints it interpolated) as model inputs."""
        self._log_inputs([self.store.describe(uri) for uri in uris], None)

    def _log_inputs(self, states: Sequence[StateInfo], dataset: DataRef | None) -> None:
        """Recorded at the next flush (every few seconds, and when the run ends)."""
        known = None if dataset is None else (dataset.name, dataset.fingerprint)
        if known is not None and known not in self._datasets:
            self._inputs[0].append(self._dataset_input(dataset))
            self._datasets.add(known)
        for model_id in dict.fromkeys(info.model_id for info in states if info.model_id):
            if model_id not in self._model_inputs:
                self._inputs[1].append(LoggedModelInput(model_id))
                self._model_inputs.add(model_id)

    def _state_name(self, role: str, step: int | None) -> str:
        """A logged-model name unique in this run, so runs:/<run_id>/<name> finds it."""
        base = safe_name(role if step is None else f"{role}-{step}")
        name, n = base, 1
        while name in self._state_names:
            n += 1
            name = f"{base}-{n}"
        self._state_names.add(name)
        return name

    def _log_model(
        self, state: State, name: str, tags: dict[str, str], arch: dict[str, Any] | None
    ) -> tuple[LoggedModel, dict[str, str]]:
        """Write the safetensors files (and a JSON description with their sha256 and the
        architecture, plus the pyfunc MLmodel when the architecture is known) into a new logged
        model; returns it and the files' hashes."""
        from lmctrack.engine import state as state_files  # torch: only where a state is saved
        from lmctrack.mlflow_model import DESCRIPTION_FILE

        request = self.store._request()
        model = retry_busy(
            lambda: self._client.create_logged_model(
                self.experiment_id,
                name=name,
                source_run_id=self.id,
                tags={**tags, **request},
                model_type="lmctrack.state",
            )
        )
        if request:  # a copy stays PENDING, without files, until the store settles
            self.store._copies.made("models", request, model.model_id, self.experiment_id)
        try:
            with writable_folder(model.artifact_location, self.store.tracking_uri) as folder:
                files = state_files.save_state(state, folder)
                digests = {f.name: sha256(f) for f in files}
                description = {
                    "format": "lmctrack.state/safetensors",
                    "files": list(digests),
                    "sha256": digests,
                    "tags": unprefixed(tags),
                }
                if arch is not None:
                    description["architecture"] = arch
                    pyfunc.write_mlmodel(
                        folder, arch, name=name, run_id=self.id, model_id=model.model_id
                    )
                (folder / DESCRIPTION_FILE).write_text(json.dumps(description, indent=1))
        except BaseException:
            with suppress(Exception):  # a full disk may refuse this too; the write error wins
                self._client.finalize_logged_model(model.model_id, "FAILED")
            raise
        retry_busy(lambda: self._client.finalize_logged_model(model.model_id, "READY"))
        return model, digests

    @staticmethod
    def _dataset_input(ref: DataRef) -> DatasetInput:
        dataset = Dataset(
            name=ref.name,
            digest=ref.fingerprint[:36],
            source_type="lmctrack",
            source=ref.source_json(),
        )
        return DatasetInput(dataset, tags=[InputTag("mlflow.data.context", ref.context)])
