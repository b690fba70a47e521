"""The one package that speaks MLflow: states as registered model versions, runs, lineage, URIs.

A State is saved as safetensors files inside an MLflow logged model and registered as a model
version whose `lmctrack.*` tags say what it is (role, step, seeds, density, config hash, parent
URIs, the files' sha256). The producing run records the parents and the dataset as inputs and the
new state as an output, so the MLflow UI links both ways. Loading reads the safetensors files
(nothing is unpickled) and verifies their hashes. Every other module receives and returns States
and URIs.

Modules: backend (connection, sqlite retries, error translation), files (artifact folders,
confinement, permissions), owners (which live process owns a run), runs (Run: logging),
registry (states, URIs, lineage, integrity), claims (one worker per identical request),
core (Store).
"""

import os

# Quiet, offline MLflow with bounded HTTP retries, set before MLflow is imported: no run-link
# banners, no progress bars, no telemetry upload, no git probing, no system metrics, and an
# unreachable server fails in seconds, not minutes (a user may still raise these).
for _var, _value in {
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false",
    "GIT_PYTHON_REFRESH": "quiet",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
}.items():
    os.environ.setdefault(_var, _value)

from lmctrack.store.backend import (  # noqa: E402
    DB_FILE,
    STORE_DIR,
    TAG_PREFIX,
    default_tracking_uri,
    project_root,
)
from lmctrack.store.core import Store  # noqa: E402
from lmctrack.store.registry import LineageNode, StateInfo  # noqa: E402
from lmctrack.store.runs import Run  # noqa: E402

__all__ = [
    "DB_FILE",
    "STORE_DIR",
    "TAG_PREFIX",
    "LineageNode",
    "Run",
    "StateInfo",
    "Store",
    "default_tracking_uri",
    "project_root",
]
