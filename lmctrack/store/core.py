"""Store: the tracking store (a sqlite database + artifact folder in the project, or any MLflow
URI), its runs and the places lmctrack keeps files in it."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Collection, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from functools import partial
from pathlib import Path

from mlflow.entities import Experiment, ViewType
from mlflow.exceptions import MlflowException

from lmctrack.errors import LmcError
from lmctrack.store import copies, views
from lmctrack.store.access import may_register, signed_in, without_credentials
from lmctrack.store.backend import (
    ServerClient,
    connect,
    deferred,
    exists_already,
    not_found,
    prefixed,
    retry_busy,
    settle,
    unprefixed,
    write_errors,
)
from lmctrack.store.claims import file_claim, run_claim
from lmctrack.store.files import confined, is_local, local_path, safe_name
from lmctrack.store.held import Held
from lmctrack.store.location import (
    STORE_DIR,
    TAG_PREFIX,
    default_tracking_uri,
    project_root,
    sqlite_path,
    sqlite_uri,
)
from lmctrack.store.owners import owner_is_dead, owner_tags
from lmctrack.store.registry import CORRUPT, KEY, Registry, StateInfo
from lmctrack.store.runs import Run

_RUN_STATUSES = ("RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED")


class Store(Registry):
    """The tracking store: a sqlite database + artifact folder in the project, or any MLflow URI.

    Precedence of the location: explicit tracking_uri (params.yaml store.tracking_uri), then
    MLFLOW_TRACKING_URI, then `<project>/.lmctrack/mlflow.db`. An http(s) server is probed once
    when the store opens; user and password in its URI go to the client's environment
    (store.access). Files lmctrack writes get the permissions of store.files.share.
    """

    def __init__(self, tracking_uri: str | None = None) -> None:
        uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
        uri = without_credentials(uri)  # to the client's environment: never recorded
        db = sqlite_path(uri)
        self.tracking_uri = sqlite_uri(db) if db is not None else uri
        self.root: Path | None = db.parent if db is not None else None
        self._experiments: dict[str, str] = {}  # made ready for runs by _experiment_id
        self._found: dict[str, str] = {}  # seen by _existing_experiment
        self._looked_up: dict[str, Experiment | None] = {}  # ... and what it found, once
        self.unregistered: set[str] = set()  # work keys no state is registered under (find_runs)
        self._versions: dict[str, StateInfo] = {}
        self._verified: set[str] = set()
        self._open: dict[str, Run] = {}  # runs of this process with metrics maybe buffered
        self._reaped: set[str] = set()  # experiments whose dead owners' runs were ended
        self._copies = copies.Copies()  # what create requests made since the store settled
        self._held = Held()  # states registered into a tracking server, to read back
        self.client = connect(self.tracking_uri, self.root)

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
        if isinstance(parent, str):
            self._get_run(parent)  # a given id must exist; a Run does
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
        """A new RUNNING run owned by this process (owner tags: see store.owners)."""
        experiment_id = self._experiment_id(experiment)
        request = self._request()
        run_tags = {**prefixed({**(tags or {}), **owner_tags()}), **request}
        if parent is not None:
            run_tags["mlflow.parentRunId"] = parent
        with write_errors(self.tracking_uri):
            info = retry_busy(
                lambda: self.client.create_run(experiment_id, tags=run_tags, run_name=name)
            ).info
            if request:  # a RUNNING copy nobody ends, deleted when the store settles (a claim
                # run's, which would hold against its owner, when the claim sees it)
                self._copies.made("runs", request, info.run_id, experiment_id)
        run = Run(self, info.run_id, experiment, experiment_id, info.artifact_uri)
        if params:
            try:
                run.log_params(params)
            except BaseException:
                self._open.pop(run.id, None)
                run._terminate("FAILED", failing=True)
                raise
        return run

    def settle(self) -> None:
        """Wait until what this process wrote is stored: writes to a tracking server go in the
        background (store.backend.ServerClient), and the copies that re-sent create requests
        made are deleted (store.copies). Raises the first write that failed."""
        batch = self._copies.take()
        if batch is not None:
            deferred(self.client, lambda: copies.delete(self.client, batch))
        settle(self.client)

    def _experiment_id(self, name: str) -> str:
        """The experiment's id, created with an absolute artifact folder next to the database and
        the model-training kind and view (given to experiments created before, when missing)."""
        if name in self._experiments:
            return self._experiments[name]
        if name in self._looked_up:  # None: it was not there a moment ago, so create it
            experiment = self._looked_up.pop(name)
        else:
            experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            location = None
            if self.root is not None:
                location = (self.root / "artifacts" / safe_name(name)).as_uri()
            try:
                with write_errors(self.tracking_uri):
                    experiment_id = retry_busy(
                        lambda: self.client.create_experiment(
                            name, artifact_location=location, tags=views.experiment_tags()
                        )
                    )
            except MlflowException as e:
                if not exists_already(e):
                    raise
                experiment_id = self.client.get_experiment_by_name(name).experiment_id
        else:
            experiment_id = experiment.experiment_id
            if experiment.lifecycle_stage == "deleted":
                retry_busy(lambda: self.client.restore_experiment(experiment_id))
            for key, value in views.experiment_tags().items():
                if key not in experiment.tags:
                    with suppress(MlflowException, OSError):  # a read-only store stays as it is
                        retry_busy(
                            partial(self.client.set_experiment_tag, experiment_id, key, value)
                        )
        if signed_in() and isinstance(self.client, ServerClient):
            may_register(self.client, self.tracking_uri, name)
        self._experiments[name] = experiment_id
        return experiment_id

    def _existing_experiment(self, name: str) -> str | None:
        """The id of the experiment `name` if there is one; an active one's is kept (ids never
        change), so that lookups before every search cost no request."""
        known = self._experiments.get(name) or self._found.get(name)
        if known is not None:
            return known
        found = self.client.get_experiment_by_name(name)
        self._looked_up[name] = found  # for _experiment_id, without asking again
        if found is None:
            return None
        if found.lifecycle_stage == "active":
            self._found[name] = found.experiment_id
        return found.experiment_id

    def _get_run(self, run_id: str):
        """The run as the store holds it, with what this process buffered for it sent first."""
        if run_id in self._open:
            self._open[run_id].flush()
        try:
            return self.client.get_run(run_id)
        except MlflowException as e:
            if not_found(e) or e.error_code == "INVALID_PARAMETER_VALUE":
                raise LmcError(
                    f"run '{run_id}' does not exist in {self.tracking_uri}; copy the run id "
                    "from lmctrack's output or the MLflow UI (lmctrack ui)"
                ) from None
            raise

    def reap(self, experiment: str) -> list[str]:
        """Mark KILLED the experiment's RUNNING runs whose owner process, on this host, is dead
        (killed with -9, or its machine rebooted); returns their ids. A read-only store is left
        as it is."""
        return self._reap(experiment)[0]

    def running(self, experiment: str) -> list:
        """The experiment's RUNNING runs (MLflow's) whose owners live, after reaping the rest."""
        return self._reap(experiment)[1]

    def _reap(self, experiment: str) -> tuple[list[str], list]:
        """(the dead owners' runs now KILLED, the live RUNNING runs), from one search."""
        experiment_id = self._existing_experiment(experiment)
        if experiment_id is None:
            return [], []
        running = self.client.search_runs(
            [experiment_id], "attributes.status = 'RUNNING'", max_results=10000
        )
        dead = [
            r.info.run_id
            for r in running
            if r.info.run_id not in self._open and owner_is_dead(unprefixed(r.data.tags))
        ]

        def kill() -> None:  # a read-only store is left as it is, a refusal here too
            with suppress(MlflowException, OSError):
                for run_id in dead:
                    retry_busy(lambda run_id=run_id: self.client.set_terminated(run_id, "KILLED"))

        deferred(self.client, kill)
        self._reaped.add(experiment)
        gone = set(dead)
        return dead, [r for r in running if r.info.run_id not in gone]

    def find_run(self, experiment: str, config_hash: str, status: str = "FINISHED") -> str | None:
        """The newest run of the experiment with this config hash and status, if any; runs
        marked corrupt are passed over. Dead owners' runs are reaped at this Store's first look
        into the experiment (the UI then shows them KILLED); a FINISHED one is found either way."""
        if status not in _RUN_STATUSES:
            raise LmcError(f"unknown run status '{status}'; use one of {', '.join(_RUN_STATUSES)}")
        if not KEY.match(config_hash):
            raise LmcError(f"'{config_hash}' is not a config hash; pass the hex digest")
        where = f"tags.`{TAG_PREFIX}config_hash` = '{config_hash}' and attributes.status = "
        return _newest(self._search(experiment, f"{where}'{status}'")).get(config_hash)

    def find_runs(
        self, experiment: str, config_hashes: Collection[str], params: dict[str, str]
    ) -> dict[str, str]:
        """The newest finished run of each config hash, by hash, among the runs logged with
        these params: one search for work that shares them (every copy of one state) instead of
        one per hash (find_run). A hash without any run (deleted ones included) has no state
        registered under it either, since its run registers them: its states are registered
        without searching for earlier ones (Run.save_state)."""
        if any("'" in value for value in params.values()):  # not expressible in a filter
            found = {key: self.find_run(experiment, key) for key in config_hashes}
            return {key: run_id for key, run_id in found.items() if run_id is not None}
        where = " and ".join(f"params.`{name}` = '{value}'" for name, value in params.items())
        runs = self._search(experiment, where, ViewType.ALL)
        seen = {run.data.tags.get(TAG_PREFIX + "config_hash") for run in runs}
        self.unregistered = (self.unregistered | set(config_hashes)) - seen
        newest = _newest(
            r for r in runs if r.info.status == "FINISHED" and r.info.lifecycle_stage == "active"
        )
        return {key: newest[key] for key in config_hashes if key in newest}

    def _search(self, experiment: str, where: str, view: int = ViewType.ACTIVE_ONLY) -> list:
        """The experiment's runs matching `where`, newest first, after reaping dead owners'
        runs at this Store's first look into it."""
        experiment_id = self._existing_experiment(experiment)
        if experiment_id is None:
            return []
        if experiment not in self._reaped:
            self.reap(experiment)
        return copies.paged(
            lambda token: self.client.search_runs(
                [experiment_id],
                filter_string=where,
                run_view_type=view,
                order_by=["attributes.start_time DESC"],
                max_results=1000,
                page_token=token,
            )
        )

    def tagged_run(self, tag: str, value: str) -> tuple[str, str] | None:
        """The newest finished run in any experiment whose lmctrack tag `tag` is `value`: its id
        and name (e.g. the distillation that made a file, found by the file's digest)."""
        if not KEY.match(value):
            raise LmcError(f"'{value}' is not a tag value to search by; pass a hex digest")
        experiments = [e.experiment_id for e in self.client.search_experiments()]
        runs = self.client.search_runs(
            experiments,
            filter_string=(
                f"tags.`{TAG_PREFIX}{tag}` = '{value}' and attributes.status = 'FINISHED'"
            ),
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return (runs[0].info.run_id, runs[0].info.run_name) if runs else None

    def claim(self, keys: Collection[str]) -> AbstractContextManager[None]:
        """Hold the claims on keys (e.g. config hashes) while doing their work: a second
        claimant of any of them waits until the first is done, then should find its finished
        run (find_run) and reuse it. See store.claims for how; this is what keeps two live
        trainings from sharing a checkpoint_dir."""
        if bad := next((key for key in keys if not KEY.match(key)), None):
            raise LmcError(f"claim key '{bad}' must be letters, digits, '.', ':', '_' or '-'")
        if not keys:
            return nullcontext()
        if self.root is not None:
            return file_claim(self.root / "claims", keys)
        return run_claim(self, keys)

    def _state_lock(self, key: str | None) -> AbstractContextManager[None]:
        """Serialise find-or-register of keyed states on a local store (one lock for all: a
        registration takes milliseconds; a tracking server relies on the workflow's claim)."""
        if key is None or self.root is None:
            return nullcontext()
        return file_claim(self.root / "claims", ["registration"])

    def run_tags(self, run_id: str) -> dict[str, str]:
        """The run's lmctrack tags, without the prefix."""
        return unprefixed(self._get_run(run_id).data.tags)

    def run_metrics(self, run_id: str) -> dict[str, float]:
        """The latest value of each metric of the run."""
        return dict(self._get_run(run_id).data.metrics)

    def run_artifact(self, run_id: str, name: str) -> Path:
        """A local path to one of the run's artifacts (read in place on a local store)."""
        artifact_uri = self._get_run(run_id).info.artifact_uri
        try:
            if is_local(artifact_uri):
                base = local_path(artifact_uri)
                path = confined(base / name, base, f"runs:/{run_id}/{name}")
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

    # ---- places -----------------------------------------------------------------------------

    def checkpoint_dir(self, key: str) -> Path:
        """A folder for a resumable training's plain checkpoint files (not tracked by MLflow).

        Two live trainings never share one: take `claim(key)` around the training that uses it.
        """
        if not KEY.match(key) or key in (".", ".."):
            raise LmcError(f"checkpoint key '{key}' must be letters, digits, '.', ':', '_' or '-'")
        base = self.root if self.root is not None else project_root() / STORE_DIR
        folder = base / "checkpoints" / key
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def ui_command(self, port: int = 5000) -> list[str]:
        """argv of the MLflow UI on this store, listening on localhost only (see store.ui)."""
        argv = [sys.executable, "-m", "lmctrack.store.ui", "--backend-store-uri", self.tracking_uri]
        if self.root is not None:
            argv += ["--default-artifact-root", (self.root / "artifacts").as_uri()]
        # one web worker: a local UI for one researcher starts in seconds instead of ~30 s
        return [*argv, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]


def _newest(runs: Iterable) -> dict[str, str]:
    """Config hash -> the first of the runs with it (newest first), corrupt ones passed over."""
    newest: dict[str, str] = {}
    for run in runs:
        tags = run.data.tags
        if tags.get(TAG_PREFIX + CORRUPT) != "true":
            newest.setdefault(tags.get(TAG_PREFIX + "config_hash", ""), run.info.run_id)
    return newest
