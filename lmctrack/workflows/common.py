"""What every workflow needs: the params, the store, the dataset, the device, progress bars."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from lmctrack.config import schema
from lmctrack.config.params import DataConfig, Params, config_hash
from lmctrack.config.user import BUILTIN_DATA
from lmctrack.engine.train import resolve_device
from lmctrack.errors import LmcError
from lmctrack.execution.executor import Executor, executor
from lmctrack.execution.progress import Board
from lmctrack.store.backend import flatten
from lmctrack.store.inputs import DataRef

PARAMS_ARTIFACT = "params.json"


@dataclass
class Context:
    params: Params
    store: object  # lmctrack.store.Store; typed loosely so that only store.py imports mlflow
    dataset: object  # lmctrack.engine.data.Dataset
    device: torch.device
    board: Board
    dataset_fingerprint: str
    out: Path | None = None  # where DVC-facing files (metrics JSON, plots, CSV) are written
    on_close: Callable[[], None] | None = None  # e.g. stop the live progress display

    @property
    def executor(self) -> Executor:
        """Where trainings and a sweep's analyses run: this machine or Ray (runner.backend)."""
        return executor(self.params.runner)

    def template(self) -> torch.nn.Module:
        """A network of the configured architecture on the device (weights to be overwritten)."""
        from lmctrack.engine.models import build_for_data

        ds = self.dataset
        return build_for_data(self.params.model, ds, 0).to(self.device)

    def scratch(self) -> Path:
        """A private temporary folder for files on their way into the store."""
        if not hasattr(self, "_scratch"):
            self._scratch = Path(tempfile.mkdtemp(prefix="lmctrack-"))
        return self._scratch

    def close(self) -> None:
        """End the command: stop the progress display and drop the scratch folder."""
        import shutil

        if hasattr(self, "_scratch"):
            shutil.rmtree(self._scratch, ignore_errors=True)
            del self._scratch
        if self.on_close is not None:
            self.on_close()

    @property
    def model_name(self) -> str:
        """Registered-model name and experiment of every state of this network on this data."""
        from lmctrack.config.imports import registry_name

        return registry_name(f"{self.params.model.name}_{self.params.data.name}")

    def steps(self, step) -> int:
        """A config Step as an iteration count for this dataset and batch size."""
        return step.iterations(self.dataset.iterations_per_epoch(self.params.train.batch_size))

    @property
    def total_steps(self) -> int:
        return self.steps(self.params.train.steps)

    def training_hash(self, *extra) -> str:
        """Hash of everything that decides a training's outcome: not where it runs, nor which
        rewind states it registers (a run asked for more of them is extended, not retrained).
        The user's own data is named by code that can change under the same name: its
        fingerprint is part of the hash."""
        p = self.params
        train = p.train.model_dump(mode="json", exclude={"device", "rewind_steps"})
        own = [self.dataset_fingerprint] if p.data.name not in BUILTIN_DATA else []
        return config_hash(p.data, p.model, train, *own, *extra)

    def run_params(self, **named) -> dict:
        """What defines a run, as MLflow params named alike across run kinds (schema: k,
        init_seed, density, ...), those None left out; `run` adds the network and data."""
        return {name: value for name, value in named.items() if value is not None}

    def init_seed(self, uri: str) -> str | None:
        """The init seed of the W0 a state descends from (its own tag, else its first parent's)."""
        info = self.store.describe(uri)
        seed = info.tags.get(schema.INIT_SEED)
        if seed is None and info.parents:
            return self.init_seed(info.parents[0])
        return seed

    @contextmanager
    def run(self, label: str, *, parent=None, params: dict | None = None, tags=None) -> Iterator:
        """A run in this network's experiment that records the dataset it reads as an input; every
        run names its network and data, so runs of every kind line up in one table (beside a
        training's `data.*` section: params are flattened first)."""
        own = {schema.NETWORK: self.params.model.name, schema.DATA: self.params.data.name}
        params = {**own, **flatten(params or {})}
        with self.store.run(self.model_name, label, parent=parent, params=params, tags=tags) as run:
            run.log_dataset(self.data_ref)
            yield run

    @property
    def data_ref(self) -> DataRef:
        """This context's dataset as runs record it (looked up once)."""
        if not hasattr(self, "_data_ref"):
            self._data_ref = data_ref(self.store, self.params.data, self.dataset_fingerprint)
        return self._data_ref

    def error(self, state, split: str = "test") -> float:
        """The error of a state on a split (the mask applied; BatchNorm in eval mode)."""
        from lmctrack.engine.evaluate import evaluate, load_into

        model = load_into(self.template(), state)
        limit = self.params.instability.eval_limit if split == "train" else None
        return evaluate(model, self.dataset, split, device=self.device, limit=limit).error

    def write_output(self, name: str, obj) -> Path | None:
        """Write a JSON file for DVC (metrics, URIs) when an output folder was given."""
        if self.out is None:
            return None
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / name
        path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
        return path


def data_ref(store, data: DataConfig, fingerprint: str) -> DataRef:
    """A built-in dataset by its name; a file of tensors by the run that made it (a
    distillation, found by the file's digest) or else by the file's stem, with its path."""
    if data.name != schema.TENSORS or data.path is None:
        return DataRef(data.name, fingerprint)
    path = Path(data.path).expanduser().resolve()
    made = store.tagged_run(schema.DISTILLED_FINGERPRINT, fingerprint)
    if made is None:
        return DataRef(path.stem, fingerprint, json.dumps({"path": str(path)}))
    return made_by(path, fingerprint, *made)


def made_by(path: Path, fingerprint: str, run_id: str, run_name: str, context="train") -> DataRef:
    """A file of tensors a run produced: named by that run, found at `path` and among the run's
    artifacts."""
    source = {
        "path": str(path),
        "run_id": run_id,
        "run_name": run_name,
        "artifact": f"runs:/{run_id}/{path.name}",
    }
    return DataRef(run_name, fingerprint, json.dumps(source), context)


def open_store(params: Params):
    from lmctrack.store import Store

    return Store(params.store.tracking_uri)


def make_context(params: Params, *, board: Board, store=None, out: Path | None = None) -> Context:
    """Open the store and load the dataset once for a whole command."""
    from lmctrack.engine.data import dataset_fingerprint, load_dataset

    device = resolve_device(params.train.device)
    if device.type == "cpu":
        torch.set_num_threads(1)  # small networks on few cores: one thread per process is fastest
    dataset = load_dataset(params.data).to(device)
    return Context(
        params=params,
        store=store or open_store(params),
        dataset=dataset,
        device=device,
        board=board,
        dataset_fingerprint=dataset_fingerprint(dataset),
        out=out,
    )


def params_of_run(store, run_id: str) -> Params:
    """The exact params a run was made with, so forks and IMP continue the same training."""
    path = store.run_artifact(run_id, PARAMS_ARTIFACT)
    try:
        return Params.model_validate_json(Path(path).read_text())
    except ValueError:
        raise LmcError(
            f"run {run_id} has no readable {PARAMS_ARTIFACT}: it was not made by lmctrack train"
        ) from None
