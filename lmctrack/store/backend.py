"""How to talk to the store: the MLflow client, sqlite retries, and the translation of storage failures (busy, full, read-only) into LmcErrors; a server's (unreachable, refusing the account) are store.access's."""

from __future__ import annotations

import atexit
import copy
import errno
import functools
import json
import logging
import os
import queue
import random
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.utils.file_utils import ExclusiveFileLock

from lmctrack.errors import LmcError, redact
from lmctrack.store.access import answering, probe_server
from lmctrack.store.location import DB_FILE, TAG_PREFIX

for _name in ("mlflow", "alembic", "sqlalchemy"):
    logging.getLogger(_name).setLevel(logging.ERROR)
# It logs a traceback for every busy sqlite error before raising; retry_busy handles those.
logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)

_BUSY_RETRIES = 8
# sqlite and OS failures that no retry fixes: the user must free space or grant write access.
_FULL_OR_READ_ONLY = ("database or disk is full", "readonly database", "disk i/o error")
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}

T = TypeVar("T")


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested params as dotted keys (train.lr), values as text; lists as JSON; passwords in
    URIs masked (store.tracking_uri keeps its host and path)."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, list | tuple):
            flat[name] = redact(json.dumps(value))
        else:
            flat[name] = redact(str(value))
    return flat


def prefixed(tags: dict[str, Any]) -> dict[str, str]:
    """lmctrack tags get the `lmctrack.` prefix; MLflow's own (mlflow.*) pass through."""
    return {
        k if k.startswith(("mlflow.", TAG_PREFIX)) else TAG_PREFIX + k: redact(str(v))
        for k, v in tags.items()
    }


def unprefixed(tags: dict[str, str]) -> dict[str, str]:
    return {k.removeprefix(TAG_PREFIX): v for k, v in tags.items() if k.startswith(TAG_PREFIX)}


def first_line(error: BaseException, limit: int = 160) -> str:
    """The gist of an MLflow error, to quote inside a one-line LmcError."""
    text = str(getattr(error, "message", None) or error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def not_found(error: MlflowException) -> bool:
    return error.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")


def exists_already(error: MlflowException) -> bool:
    return error.error_code in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS")


def _is_busy(error: MlflowException) -> bool:
    """sqlite's busy timeout ran out, or another writer recorded the same new dataset at the same
    moment (MLflow checks, then inserts: UNIQUE constraint failed / UniqueViolation on
    dataset_pk); tried again, the dataset is found and linked."""
    text = str(error).lower()
    lost_race = "datasets.experiment_id" in text or '"dataset_pk"' in text
    return "database is locked" in text or "database table is locked" in text or lost_race


def retry_busy(call: Callable[[], T]) -> T:
    """A writer that lost to another (store busy, the same new dataset) tries again instead of
    failing (a failed transaction was rolled back, so trying again stores nothing twice)."""
    for attempt in range(_BUSY_RETRIES - 1):
        try:
            return call()
        except MlflowException as e:
            if not _is_busy(e):
                raise
        time.sleep(0.05 * 2**attempt * (1 + random.random()))
    return call()


def _cannot_write(error: BaseException) -> bool:
    if isinstance(error, OSError) and error.errno in _WRITE_ERRNOS:
        return True
    text = str(error).lower()
    return isinstance(
        error, MlflowException | sqlalchemy.exc.SQLAlchemyError | sqlite3.Error
    ) and any(phrase in text for phrase in _FULL_OR_READ_ONLY)


@contextmanager
def write_errors(store_uri: str) -> Iterator[None]:
    """A full disk or a read-only store becomes one LmcError saying what to free or unlock."""
    try:
        yield
    except LmcError:
        raise
    except Exception as e:
        if not _cannot_write(e):
            raise
        reason = first_line(e.__cause__ or e if isinstance(e, MlflowException) else e)
        raise LmcError(
            f"cannot write to the store {store_uri} ({reason}); free disk space or make the "
            "store writable, then re-run the command (finished work is reused)"
        ) from None


def _fast_commits(connection: sqlite3.Connection, _record: object) -> None:
    """WAL journal + synchronous=NORMAL: a commit needs no fsync (about 10x faster here), and
    readers never block the writer; a power loss can undo the last commits, never corrupt."""
    connection.execute("PRAGMA synchronous=NORMAL")


class ServerClient:
    """The MlflowClient of a tracking server, each call under `answering`.

    Writes whose answer lmctrack never reads (DEFERRED) are sent by one background thread, in
    the order they were made, while the command goes on: a sweep makes a hundred and more of
    them, and each would otherwise hold the driver for a round trip to the server. Every other
    call first waits until they are all sent (settle), so what this process reads comes after
    what it wrote, as before; only calls that cannot see those writes (UNORDERED: creations,
    and reads of experiments and model versions, whose writes are never deferred) go at once.
    A deferred write that fails stops the ones after it (a run whose metrics were lost is never
    marked FINISHED: its set_terminated comes later) and is raised by the next call that waits.
    """

    DEFERRED = frozenset(
        {
            "log_batch",
            "log_inputs",
            "log_outputs",
            "set_terminated",
            "set_logged_model_tags",
            "finalize_logged_model",
            "delete_run",
            "delete_logged_model",
        }
    )
    UNORDERED = frozenset(
        {
            "create_run",
            "create_logged_model",
            "create_registered_model",
            "create_model_version",
            "search_model_versions",
            "get_model_version",
            "get_experiment_by_name",
        }
    )

    def __init__(self, client: MlflowClient, tracking_uri: str) -> None:
        self._client, self._uri = client, tracking_uri
        self._pid = os.getpid()  # a forked child writes inline: its exit skips atexit
        self._writes: queue.Queue[Callable[[], object]] = queue.Queue()
        self._writer: threading.Thread | None = None
        self._failed: BaseException | None = None
        self._told = False  # the failure reached a caller
        self._waiting = 0  # calls whose caller waits for the answer: deferred writes yield to them
        self._quiet = threading.Condition()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr
        if name.startswith("delete_"):
            attr = _unless_refused(attr)
        if name in self.DEFERRED:

            @functools.wraps(attr)
            def write(*args: Any, **kwargs: Any) -> None:
                args, kwargs = copy.deepcopy((args, kwargs))  # as they are now
                self.later(
                    lambda: self._sent(name, lambda: retry_busy(lambda: attr(*args, **kwargs)))
                )

            return write

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            if name not in self.UNORDERED:
                self.settle()
            with self._first(), answering(self._uri, name):
                return attr(*args, **kwargs)

        return call

    def _sent(self, name: str, write: Callable[[], object]) -> None:
        with answering(self._uri, name):
            write()

    def later(self, write: Callable[[], object]) -> None:
        """Send `write` after every write queued before it, while the caller goes on."""
        self._raise_failure()
        if threading.current_thread() is self._writer:
            write()  # a deferred write's own writes: its turn is now
            return
        if os.getpid() != self._pid:
            with answering(self._uri, "a write"):
                write()
            return
        if self._writer is None:
            self._writer = threading.Thread(target=self._send, name="lmctrack-writes", daemon=True)
            self._writer.start()
            atexit.register(self._at_exit)
        self._writes.put(write)

    def settle(self) -> None:
        """Wait until every deferred write is sent; raise the first that failed."""
        writer = self._writer
        if (
            writer is not None
            and os.getpid() == self._pid
            and threading.current_thread() is not writer
        ):
            self._writes.join()
        self._raise_failure()

    def _raise_failure(self) -> None:
        if self._failed is not None:
            self._told = True
            raise self._failed

    @contextmanager
    def _first(self) -> Iterator[None]:
        """While a caller waits for an answer, no deferred write is sent (one may be in flight)."""
        if threading.current_thread() is self._writer:
            yield
            return
        with self._quiet:
            self._waiting += 1
        try:
            yield
        finally:
            with self._quiet:
                self._waiting -= 1
                self._quiet.notify_all()

    def _send(self) -> None:
        while True:
            write = self._writes.get()
            with self._quiet:  # the server answers a waiting caller first
                self._quiet.wait_for(lambda: self._waiting == 0)
            try:
                if self._failed is None:
                    with answering(self._uri, "a write"):
                        write()
            except BaseException as e:  # raised in the main thread by settle
                self._failed = e
            finally:
                self._writes.task_done()

    def _at_exit(self) -> None:
        """A process that never settled (the Python API) still sends what it wrote, and hears of
        a failure no caller was told of (nothing after a failure is sent)."""
        if self._told:
            return
        try:
            self.settle()
        except Exception as e:
            print(f"lmctrack: writes to {self._uri} were lost: {first_line(e)}", file=sys.stderr)


def _unless_refused(delete: Callable[..., T]) -> Callable[..., T | None]:
    """A delete an account may not make (EDIT, not MANAGE, on a basic-auth server) is skipped:
    lmctrack deletes only the copies re-sent requests made (store.copies), which then stay, as
    a killed process's do."""

    @functools.wraps(delete)
    def call(*args: Any, **kwargs: Any) -> T | None:
        try:
            return delete(*args, **kwargs)
        except MlflowException as e:
            if e.error_code != "PERMISSION_DENIED":
                raise
            return None

    return call


def deferred(client: MlflowClient | ServerClient, write: Callable[[], object]) -> None:
    """`write` after the client's deferred writes (a tracking server), or now."""
    if isinstance(client, ServerClient):
        client.later(write)
    else:
        write()


def settle(client: MlflowClient | ServerClient) -> None:
    """Wait until the client's deferred writes are stored (nothing to wait for but a server)."""
    if isinstance(client, ServerClient):
        client.settle()


def connect(tracking_uri: str, root: Path | None) -> MlflowClient | ServerClient:
    """Open the client; the schema of a new sqlite store is created once, under a lock.

    A store whose folder is read-only opens as it is (describe, lineage and load_state work).
    """
    try:
        if root is None:
            client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
            if tracking_uri.startswith(("http://", "https://")):
                probe_server(tracking_uri)
                return ServerClient(client, tracking_uri)
            return client
        if (root / DB_FILE).is_file() and not _writable(root):
            return _read_only_client(root / DB_FILE)
        root.mkdir(parents=True, exist_ok=True)
        with ExclusiveFileLock(str(root / f"{DB_FILE}.lock")):
            # One process at a time creates the tables (MLflow does not lock that step);
            # building both stores caches their engine per process.
            with closing(sqlite3.connect(root / DB_FILE)) as db:
                db.execute("PRAGMA journal_mode=WAL")
            client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
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
            f"cannot open the tracking store {tracking_uri} ({first_line(e)}); "
            "fix store.tracking_uri / MLFLOW_TRACKING_URI or unset them for the local store"
        ) from None


def _read_only_client(db: Path) -> MlflowClient:
    """A client that only reads db: sqlite opens a WAL database read-only through its -wal and
    -shm files when a writer left them, else as immutable (nothing else writes it, since nobody
    can create those files here)."""
    journal = all(db.with_name(f"{db.name}-{part}").exists() for part in ("wal", "shm"))
    uri = f"sqlite:///file:{db.as_posix()}?{'mode=ro' if journal else 'immutable=1'}&uri=true"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _writable(folder: Path) -> bool:
    """Whether this process can create files in folder (a probe: root ignores mode bits only
    when it holds CAP_DAC_OVERRIDE, so os.access can be wrong)."""
    try:
        with tempfile.TemporaryFile(dir=folder):  # a unique name: threads probe at once
            return True
    except OSError:
        return False
