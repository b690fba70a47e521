"""The one package that speaks MLflow: states as registered model versions, runs, lineage, URIs.

A State is saved as safetensors files inside an MLflow logged model and registered as a model
version whose `lmctrack.*` tags say what it is (role, step, seeds, density, config hash, parent
URIs, the files' sha256). The producing run records the parents and the dataset as inputs and the
new state as an output, so the MLflow UI links both ways. Loading reads the safetensors files
(nothing is unpickled) and verifies their hashes. A state registered with its architecture is
also a plain MLflow pyfunc model (mlflow.pyfunc.load_model(uri).predict(x) gives its logits) with
a signature. Experiments are of the model-training kind, so the UI opens on their runs, and every
run records what it cost. Every other module receives and returns States and URIs.

Importing this package does not import MLflow (seconds): Store, Run, StateInfo and LineageNode
import it on first use, and preload() starts that import in the background early.

Modules: backend (connection, sqlite retries, error translation), access (credentials, refused
logins and permissions, an unreachable server), files (artifact folders,
confinement, permissions), owners (which live process owns a run), runs (Run: logging),
registry (states, URIs, lineage, integrity), claims (one worker per identical request),
core (Store), location (paths and names, without MLflow), pyfunc (the MLmodel that lets
plain MLflow load a state), cost (what a run cost), ui (the UI server, opening on the runs),
views (the columns and charts an experiment opens on), pages (a version's description).
"""

import os

# Quiet, offline MLflow with bounded HTTP retries, set before MLflow is imported: no run-link
# banners, no progress bars, no telemetry upload, no git probing, no system metrics. A server
# that is unreachable when the store opens fails in seconds (store.access.probe_server); one that
# stops answering later is retried for about a minute (6 retries, waits 0, 2, 4 ... 32 s), long
# enough to ride out its restart (a user may still change these).
for _var, _value in {
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false",
    "GIT_PYTHON_REFRESH": "quiet",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "6",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
}.items():
    os.environ.setdefault(_var, _value)

import threading  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

from lmctrack.store.location import (  # noqa: E402
    DB_FILE,
    STORE_DIR,
    TAG_PREFIX,
    default_tracking_uri,
    project_root,
)

if TYPE_CHECKING:
    from lmctrack.store.core import Store
    from lmctrack.store.registry import LineageNode, StateInfo
    from lmctrack.store.runs import Run

# Importing MLflow takes seconds: `import lmctrack.store` does not, the names below import it on
# first use, and preload() starts that import in a background thread meanwhile.
_HEAVY = {
    "Store": "lmctrack.store.core",
    "Run": "lmctrack.store.runs",
    "StateInfo": "lmctrack.store.registry",
    "LineageNode": "lmctrack.store.registry",
}
# What opening a store imports: MLflow, its client, and its SQL tracking and registry stores.
_PRELOAD = (
    "mlflow",
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.model_registry.sqlalchemy_store",
)
_preloading: list[threading.Thread] = []


def preload() -> None:
    """Start importing MLflow in a background thread (idempotent), so that the import overlaps
    with the caller's work (importing torch, loading data); opening a Store then finds it done.

    Call it after the caller's own imports of shared libraries (pydantic, yaml) are done: the
    thread imports only third-party modules, never lmctrack's.
    """
    if _preloading:
        return

    def load() -> None:
        import importlib

        for module in _PRELOAD:
            try:
                importlib.import_module(module)
            except ImportError:  # an MLflow without the SQL extras: opening a store will say so
                return

    thread = threading.Thread(target=load, name="lmctrack-preload-mlflow", daemon=True)
    _preloading.append(thread)
    thread.start()


def __getattr__(name: str):
    if name not in _HEAVY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    for thread in _preloading:
        thread.join()
    value = globals()[name] = getattr(importlib.import_module(_HEAVY[name]), name)
    return value


__all__ = [
    "DB_FILE",
    "STORE_DIR",
    "TAG_PREFIX",
    "LineageNode",
    "Run",
    "StateInfo",
    "Store",
    "default_tracking_uri",
    "preload",
    "project_root",
]
