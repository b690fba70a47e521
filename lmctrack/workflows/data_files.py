"""Putting datasets where load_dataset looks: generate MNIST-1D once, import local copies of
torchvision datasets, and hand them to DVC so a lab shares one copy through a DVC remote."""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from safetensors.torch import save_file

from lmctrack.config.params import DataConfig
from lmctrack.engine.data import LAYOUTS, generate_mnist1d, load_dataset, mnist1d_file
from lmctrack.errors import LmcError

_ARCHIVES = (".tar.gz", ".tgz", ".tar", ".zip")


def write_mnist1d(root: Path, num_samples: int) -> Path:
    """Generate MNIST-1D (deterministic) into the file load_dataset reads instead of regenerating."""
    path = mnist1d_file(Path(root).resolve(), num_samples)
    tensors = generate_mnist1d(num_samples)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"generator": "mnist1d.make_dataset, default seed"})
    return path


def _present(folder: Path, entry: str) -> bool:
    """An entry is there as itself or, for MNIST's idx files, gzipped as distributed."""
    return (folder / entry).exists() or (folder / f"{entry}.gz").is_file()


def _find_layout(name: str, source: Path) -> Path | None:
    """The folder inside source that holds the dataset's entries (source may be any level of it)."""
    layout = LAYOUTS[name]
    candidates = [source / name / layout.subdir, source / layout.subdir, source]
    found = [c for c in candidates if all(_present(c, e) for e in layout.entries)]
    return found[0] if found else None


def _place(found: Path, entries: tuple[str, ...], target: Path) -> None:
    target.mkdir(parents=True)
    for entry in entries:
        src = found / entry
        if src.is_dir():
            shutil.copytree(src, target / entry)
        elif src.is_file():
            shutil.copy2(src, target / entry)
        else:  # torchvision reads the idx files uncompressed
            with gzip.open(found / f"{entry}.gz", "rb") as fin, open(target / entry, "wb") as fout:
                shutil.copyfileobj(fin, fout)


def _unpack(archive: Path, target: Path) -> None:
    """Extract a .zip or tar archive into target; a member that would land outside it (an
    absolute path, `..`, a link out) is refused before anything is written."""
    refused = f"{archive} has a member outside the archive's folder"
    try:
        if archive.name.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                for member in zf.namelist():
                    if not (target / member).resolve().is_relative_to(target.resolve()):
                        raise LmcError(f"{refused} ({member}); repack it with relative paths")
                zf.extractall(target)
        else:
            with tarfile.open(archive) as tf:
                tf.extractall(target, filter="data")
    except tarfile.FilterError as e:
        raise LmcError(f"{refused} ({e}); repack it with relative paths") from None
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
        raise LmcError(
            f"cannot unpack {archive} ({e}); check that the archive is complete"
        ) from None


def _dvc_root(path: Path) -> Path | None:
    return next((p for p in (path, *path.parents) if (p / ".dvc").is_dir()), None)


def _dvc_add(folder: Path, repo: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dvc", "add", str(folder)],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines() or ["no output"]
        raise LmcError(
            f"`dvc add {folder}` failed ({lines[-1]}); the data is in place: fix that and run "
            "`dvc add` yourself"
        )


def import_dataset(name: str, source: Path, root: Path) -> Path:
    """Copy a local dataset (folder or archive, torchvision layout) to <root>/<name>, check that it
    loads, and `dvc add` it when root is inside a DVC repository; returns <root>/<name>."""
    if name not in LAYOUTS:
        raise LmcError(f"cannot import '{name}'; importable datasets: {', '.join(LAYOUTS)}")
    source, root = Path(source).expanduser().resolve(), Path(root).expanduser().resolve()
    if not source.exists():
        raise LmcError(f"{source} does not exist; pass the folder or archive holding {name}")
    placed = root / name
    if placed.exists():
        raise LmcError(f"{placed} already exists; delete it to import {name} again")
    layout = LAYOUTS[name]
    with tempfile.TemporaryDirectory() as scratch:
        if source.is_file() and source.name.endswith(_ARCHIVES):
            _unpack(source, Path(scratch))
            source = Path(scratch)
        found = _find_layout(name, source)
        if found is None:
            raise LmcError(
                f"no {name} in {source}: expected {', '.join(layout.entries)} in it, in "
                f"{source / layout.subdir} or in {source / name / layout.subdir} ({layout.kind})"
            )
        _place(found, layout.entries, layout.folder(root, name))
    try:
        load_dataset(DataConfig(name=name, root=str(root)))
    except LmcError:
        shutil.rmtree(placed)
        raise
    repo = _dvc_root(root)
    if repo is not None:
        _dvc_add(placed, repo)
    return placed
