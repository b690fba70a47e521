"""Loading a state: its files found from any URI, checked against the sha256 recorded at
registration and for finite values; a state that fails is marked corrupt (version and producing
run), so find_run and find_state pass over it and re-running the producing command re-creates it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING

from mlflow.exceptions import MlflowException

from lmctrack.errors import LmcError
from lmctrack.store.backend import first_line, retry_busy
from lmctrack.store.files import confined, is_local, local_folder, local_path, sha256
from lmctrack.store.info import CORRUPT, RUNS_URI, URI_HELP, StateInfo
from lmctrack.store.location import TAG_PREFIX

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from lmctrack.engine.state import State
    from lmctrack.store.held import Held


class Loading:
    """The loading half of the registry (mixed in): needs client, tracking_uri, root, _get_run,
    describe and _run_model."""

    client: MlflowClient
    tracking_uri: str
    root: Path | None
    _versions: dict[str, StateInfo]
    _verified: set[str]
    _held: Held

    def _location(self, uri: str) -> str:
        """Artifact URI of the folder that holds a state's files."""
        if match := RUNS_URI.match(uri):
            model = self._run_model(match["run_id"], match["path"])
            if model is not None:
                return model.artifact_location
            base = self._get_run(match["run_id"]).info.artifact_uri.rstrip("/")
            if is_local(base):  # a plain path stays inside the run's artifacts
                return confined(local_path(base) / match["path"], local_path(base), uri).as_uri()
            return f"{base}/{match['path'].strip('/')}"
        if not uri.startswith("models:/"):
            raise LmcError(f"'{uri}' is not a state URI; {URI_HELP}")
        info = self.describe(uri)
        if info.source.startswith("models:/"):
            return self.client.get_logged_model(
                info.source.removeprefix("models:/")
            ).artifact_location
        if is_local(info.source) and self.root is not None:
            confined(local_path(info.source), self.root, uri)
        return info.source

    @contextmanager
    def _files(self, uri: str) -> Iterator[Path]:
        """A local folder holding the state's files, every one confined to it."""
        from lmctrack.engine import state as state_files  # torch: not for lookups

        try:
            location = self._location(uri)
        except MlflowException as e:
            raise LmcError(f"cannot resolve {uri} ({first_line(e)}); {URI_HELP}") from None
        # a registered state's recorded files are all it needs (the MLflow model around them
        # is for serving): over HTTP, one request each instead of the whole folder
        names = (self.describe(uri).sha256 or None) if uri.startswith("models:/") else None
        with local_folder(location, self.tracking_uri, names) as folder:
            for name in (state_files.WEIGHTS_FILE, state_files.MASK_FILE):
                if (folder / name).exists():
                    confined(folder / name, folder, uri)
            yield folder

    def load_state(self, uri: str) -> State:
        """Read a state's safetensors files (never unpickles), verified: the registered sha256
        of every file, then finite values. A state this process registered into a tracking
        server is given from memory (store.held)."""
        from lmctrack.engine import state as state_files  # torch: not for lookups

        if (held := self._held.get(uri)) is not None:
            return held
        with self._files(uri) as folder:
            if not (folder / state_files.WEIGHTS_FILE).is_file():
                raise LmcError(f"{uri} holds no lmctrack state; {self._state_hint(uri)}")
            info = self.describe(uri) if not self._plain(uri) else None
            if info is not None:
                self._verify(info, folder)
            try:
                state = state_files.load_state(folder)
            except LmcError:
                raise self._corrupt(info, uri, "a file is not valid safetensors") from None
            if bad := state_files.non_finite(state):
                raise self._corrupt(info, uri, f"non-finite values in {bad}")
            return state

    def _plain(self, uri: str) -> bool:
        """A runs:/ URI of an artifact folder, not of a registered state."""
        match = RUNS_URI.match(uri)
        return match is not None and self._run_model(match["run_id"], match["path"]) is None

    def _verify(self, info: StateInfo, folder: Path) -> None:
        """The files match the sha256 recorded at registration (states registered before hashes
        were recorded have none to check)."""
        if info.uri in self._verified:
            return
        for name, expected in info.sha256.items():
            path = folder / name
            if not path.is_file():
                raise self._corrupt(info, info.uri, f"{name} is missing")
            if sha256(path) != expected:
                raise self._corrupt(info, info.uri, f"{name} does not match its sha256")
        self._verified.add(info.uri)

    def _corrupt(self, info: StateInfo | None, uri: str, problem: str) -> LmcError:
        """Mark the state, its producing run and the runs that one is nested in corrupt (when the
        store is writable), so that re-running the producing command re-creates it (find_run
        passes over them); the error to raise."""
        if info is None:
            return LmcError(f"{uri}: corrupted state files ({problem}); export them again")
        with suppress(MlflowException, OSError, LmcError):
            retry_busy(
                lambda: self.client.set_model_version_tag(
                    info.name, str(info.version), TAG_PREFIX + CORRUPT, "true"
                )
            )
            run_id = info.run_id
            while run_id:  # the producing run and the runs it is nested in
                retry_busy(
                    lambda run_id=run_id: self.client.set_tag(run_id, TAG_PREFIX + CORRUPT, "true")
                )
                run_id = self.client.get_run(run_id).data.tags.get("mlflow.parentRunId")
        self._versions.pop(info.uri, None)
        run = f" (run {info.run_id})" if info.run_id else ""
        return LmcError(
            f"{uri} is corrupted ({problem}); it is now marked corrupt: re-run the command that "
            f"produced it{run} to re-create it"
        )

    def _state_hint(self, uri: str) -> str:
        """What to pass instead of a runs:/ URI that names no state: the run's own states."""
        match = RUNS_URI.match(uri)
        if match is None:
            return "re-run the step that produced it"
        run = self._get_run(match["run_id"])
        models = self.client.search_logged_models(
            [run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'"
        )
        names = ", ".join(sorted(m.name for m in models)) or "none"
        return f"that run's states are: {names} (pass runs:/<run_id>/<state> or a models:/ URI)"
