"""Shared fixtures for the end-to-end tests: tiny lmctrack projects on real sqlite MLflow stores.

A project is a folder with a params.yaml (MNIST-1D with 1000 examples, the 1-D CNN, 100 steps)
whose store.tracking_uri points at its own sqlite database, so the CLI run inside the folder and
the workflow functions given `project.context()` use the same store.
"""

from __future__ import annotations

import gc
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import torch
import yaml

from lmctrack.config.params import Params, load_params
from lmctrack.execution.progress import Board
from lmctrack.store import Store
from lmctrack.workflows.common import Context, make_context
from lmctrack.workflows.data_files import write_mnist1d
from lmctrack.workflows.training_run import TrainedRun, train_run

TINY_SAMPLES = 1000


def tiny_params(data_root: Path) -> dict:
    """8 iterations per epoch, T = 100it, W20 registered; 5 alphas on the test split."""
    return {
        "data": {"name": "mnist1d", "num_samples": TINY_SAMPLES, "root": str(data_root)},
        "model": {"name": "mnist1d_cnn"},
        "train": {
            "lr": 0.1,
            "momentum": 0.9,
            "batch_size": 100,
            "steps": "100it",
            "rewind_steps": ["0it", "20it"],
            "device": "cpu",
        },
        "instability": {
            "rewind_steps": ["0it", "20it"],
            "inits": 2,
            "copies": 2,
            "alphas": 5,
            "splits": ["test"],
        },
        "imp": {"rewind": "20it", "levels": 2, "replicates": 2},
    }


@dataclass
class Project:
    """A project folder, its params.yaml and its store."""

    folder: Path
    store: Store

    @property
    def params_file(self) -> Path:
        return self.folder / "params.yaml"

    def params(self, *overrides: str) -> Params:
        return load_params(self.params_file, list(overrides))

    def context(self, *overrides: str) -> Context:
        return make_context(self.params(*overrides), board=Board(None), store=self.store)

    @contextmanager
    def entered(self) -> Iterator[Project]:
        """This project as the working directory, as a user runs the CLI in it: its params.yaml
        and its own store (no tracking URI from the environment)."""
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(self.folder)
            mp.delenv("MLFLOW_TRACKING_URI", raising=False)
            yield self

    def versions(self) -> list[str]:
        """Every registered state version, as models:/name/version."""
        found = self.store.client.search_model_versions(max_results=10000)
        return sorted(f"models:/{v.name}/{v.version}" for v in found)

    def state_file(self, uri: str) -> Path:
        """The safetensors file that holds a state's weights, in the artifact folder."""
        return Path(unquote(urlparse(self.store.describe(uri).source).path)) / "state.safetensors"


def pytest_collection_finish(session: pytest.Session) -> None:
    """Freeze what importing torch, MLflow and the test modules allocated: it lives to the end, so
    every garbage collection during the tests (and pytest's at exit) skips it (seconds saved)."""
    gc.collect()
    gc.freeze()


@pytest.fixture(scope="session", autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty store's database: MLflow's migrations take seconds, a copy takes milliseconds."""
    folder = tmp_path_factory.mktemp("template")
    Store(f"sqlite:///{folder / 'mlflow.db'}")
    return folder / "mlflow.db"


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MNIST-1D written once, so that loading it does not regenerate it."""
    root = tmp_path_factory.mktemp("data")
    write_mnist1d(root, TINY_SAMPLES)
    return root


@pytest.fixture(scope="session")
def new_project(
    tmp_path_factory: pytest.TempPathFactory, template_db: Path, data_root: Path
) -> Callable[..., Project]:
    """new_project(name, **sections): a fresh project; sections update the tiny params."""

    def make(name: str, **sections: dict) -> Project:
        folder = tmp_path_factory.mktemp(name)
        db = folder / ".lmctrack" / "mlflow.db"
        db.parent.mkdir()
        with closing(sqlite3.connect(template_db)) as src, closing(sqlite3.connect(db)) as dst:
            src.backup(dst)
        params = tiny_params(data_root)
        for section, values in sections.items():
            params[section] = {**params.get(section, {}), **values}
        params["store"] = {"tracking_uri": f"sqlite:///{db}"}
        (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        return Project(folder, Store(params["store"]["tracking_uri"]))

    return make


@pytest.fixture(scope="module")
def ctx(project: Project) -> Context:
    """The workflow context of the test module's own `project` fixture."""
    return project.context()


@pytest.fixture(scope="module")
def run(ctx: Context) -> TrainedRun:
    """The test module's project trained once: W0, its Wk and W_T registered."""
    return train_run(ctx)
