"""Where a project's store is and the names lmctrack gives things in it: nothing here imports
MLflow, so commands that only need a path or a tag name stay fast."""

from __future__ import annotations

from pathlib import Path

TAG_PREFIX = "lmctrack."
STORE_DIR = ".lmctrack"
DB_FILE = "mlflow.db"
_ROOT_MARKERS = ("dvc.yaml", "params.yaml", ".git", "pyproject.toml")
_DVC_TMP = "/.dvc/tmp/"


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
    return sqlite_uri(project_root(cwd) / STORE_DIR / DB_FILE)


def sqlite_uri(path: Path) -> str:
    return f"sqlite:///{path.resolve().as_posix()}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite URI (relative paths made absolute), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(path).resolve()
