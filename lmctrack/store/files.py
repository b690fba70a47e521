"""Artifact folders on disk: where a URI's files are, confined to the store, with one
permission rule for everything lmctrack writes.

Permissions: files are 0666 and folders 0777 minus the process umask (0644 / 0755 with the
usual umask 022), whatever the writer (MLflow copies artifacts from private 0600 temp files), so
a store shared by a group reads the same for everyone: set a umask of 002 to share writing too.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.utils.file_utils import local_file_uri_to_path

from lmctrack.errors import LmcError
from lmctrack.store.access import answering

_CHUNK = 1 << 20
_UPLOADS = 8  # files uploaded at once


def is_local(artifact_uri: str) -> bool:
    return urlparse(artifact_uri).scheme in ("", "file")


def local_path(artifact_uri: str) -> Path:
    return Path(local_file_uri_to_path(artifact_uri))


def confined(path: Path, base: Path, uri: str) -> Path:
    """path resolved (links and `..` followed), refused unless it lies inside base."""
    resolved = path.resolve()
    if not resolved.is_relative_to(base.resolve()):
        raise LmcError(
            f"{uri} points outside the store ({resolved} is not under {base}); "
            "pass a models:/ or runs:/ URI of a state in this store"
        )
    return resolved


@contextmanager
def local_folder(
    artifact_uri: str, tracking_uri: str | None = None, names: Collection[str] | None = None
) -> Iterator[Path]:
    """The artifacts as a local folder: read in place when local, else a temporary download
    (`mlflow-artifacts:` URIs are served by the tracking server at `tracking_uri`) of the files
    `names` when given (one request each, no listing), of everything otherwise."""
    if is_local(artifact_uri):
        yield local_path(artifact_uri)
        return
    with tempfile.TemporaryDirectory(prefix="lmctrack-") as tmp:
        repository = get_artifact_repository(artifact_uri, tracking_uri=tracking_uri)
        with answering(tracking_uri or artifact_uri, "download_artifacts"):
            folder = _download(repository, names, Path(tmp))
        yield folder


def _download(repository, names: Collection[str] | None, folder: Path) -> Path:
    """The files `names` into folder; everything there is when names is None or one of them is
    gone (HTTP 404: the folder as it is, which the caller checks)."""
    if names is not None:
        try:  # _download_file: every artifact repository's one-file primitive
            for name in names:
                repository._download_file(name, str(confined(folder / name, folder, name)))
            return folder
        except OSError:
            pass
    return Path(repository.download_artifacts("", dst_path=str(folder)))


@contextmanager
def writable_folder(artifact_uri: str, tracking_uri: str | None = None) -> Iterator[Path]:
    """A folder whose files end up at artifact_uri: written in place when local (no copy),
    else uploaded from a temporary folder on exit (through the server at `tracking_uri`)."""
    if is_local(artifact_uri):
        folder = local_path(artifact_uri)
        folder.mkdir(parents=True, exist_ok=True)
        yield folder
        share(folder)
        return
    with tempfile.TemporaryDirectory(prefix="lmctrack-") as tmp:
        yield Path(tmp)
        share(Path(tmp))
        repository = get_artifact_repository(artifact_uri, tracking_uri=tracking_uri)
        files = [f for f in Path(tmp).rglob("*") if f.is_file()]

        def upload(file: Path) -> None:
            folder = file.parent.relative_to(tmp).as_posix()
            repository.log_artifact(str(file), None if folder == "." else folder)

        # at once, not one after another: a state's files are a few small uploads, each a
        # round trip to the server
        with (
            answering(tracking_uri or artifact_uri, "log_artifact"),
            ThreadPoolExecutor(_UPLOADS) as pool,
        ):
            for _ in pool.map(upload, files):  # the first failure raised here
                pass


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def share(folder: Path) -> None:
    """Give folder and everything under it the store's permissions (module docstring)."""
    mask = _umask()
    for path in (folder, *folder.rglob("*")):
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def safe_name(text: str) -> str:
    """A logged-model / folder name MLflow accepts (no / : . % quotes)."""
    return re.sub(r"[^\w-]+", "_", text).strip("_") or "state"
