"""Plain MLflow clients on lmctrack's store, each in a fresh process: mlflow.pyfunc loads a state
(nothing unpickled) and gives the network's logits; the MLflow server's REST API shows the
experiment's kind, the runs' dataset inputs and costs, and the version's schema; importing the
CLI or the store does not import MLflow."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
import torch

from lmctrack.config.params import ModelConfig
from lmctrack.engine.models import build_model, prunable_names
from lmctrack.engine.state import State
from lmctrack.store import Store
from lmctrack.store.inputs import DataRef

# End to end: real trainings, stores or subprocesses (seconds to minutes each).
pytestmark = pytest.mark.slow

ARCH = {"name": "mnist1d_cnn_bn", "width": None, "num_classes": 10, "input_shape": [40]}
DATA = DataRef("mnist1d", "d" * 64)

# Loads a version through plain MLflow with every unpickler disabled; saves its logits as .npy
# (no pickle for float arrays) and prints the signature's shapes and the input example's shape.
LOAD = """
import json, pickle, sys
def refuse(*args, **kwargs):
    raise AssertionError("something was unpickled")
pickle.load = pickle.loads = refuse
import torch
torch.load = refuse
import numpy as np
import mlflow.pyfunc
uri, x_file, out_file = sys.argv[1:]
model = mlflow.pyfunc.load_model(uri)
np.save(out_file, model.predict(np.load(x_file)))
meta = model.metadata
example = meta.load_input_example(mlflow.artifacts.download_artifacts(uri))
print(json.dumps({
    "inputs": [list(s.shape) for s in meta.signature.inputs.inputs],
    "outputs": [[s.name, list(s.shape)] for s in meta.signature.outputs.inputs],
    "example": list(np.asarray(example).shape),
}))
"""


def _python(code: str, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _store_uri(template_db: Path, folder: Path) -> str:
    """A new store's database, copied from the ready-made schema."""
    db = folder / ".lmctrack" / "mlflow.db"
    db.parent.mkdir(parents=True)
    with closing(sqlite3.connect(template_db)) as src, closing(sqlite3.connect(db)) as dst:
        src.backup(dst)
    return f"sqlite:///{db}"


def _store(template_db: Path, folder: Path) -> Store:
    return Store(_store_uri(template_db, folder))


def _logits(state: State, arch: dict, x: np.ndarray) -> np.ndarray:
    """What lmctrack's own network gives: build_model + the stored weights, mask applied."""
    cfg = ModelConfig(name=arch["name"], width=arch["width"])
    net = build_model(cfg, arch["num_classes"], tuple(arch["input_shape"]), init_seed=0)
    net.load_state_dict(state.masked_weights())
    with torch.no_grad():
        return net.eval()(torch.from_numpy(x)).numpy()


def _plain_mlflow(store: Store, uri: str, x: np.ndarray, tmp_path: Path) -> tuple[np.ndarray, dict]:
    np.save(tmp_path / "x.npy", x)
    env = {"MLFLOW_TRACKING_URI": store.tracking_uri}
    printed = _python(LOAD, uri, str(tmp_path / "x.npy"), str(tmp_path / "y.npy"), env=env)
    return np.load(tmp_path / "y.npy"), json.loads(printed.stdout.strip().splitlines()[-1])


def _masked_bn_state(seed: int) -> State:
    """A network with BatchNorm whose running statistics matter (eval mode) and a mask."""
    cfg = ModelConfig(name=ARCH["name"])
    net = build_model(cfg, ARCH["num_classes"], tuple(ARCH["input_shape"]), init_seed=seed)
    g = torch.Generator().manual_seed(seed)
    weights = {k: v.clone() for k, v in net.state_dict().items()}
    for name in weights:
        if name.endswith(("running_mean", "running_var")):
            weights[name] = torch.rand(weights[name].shape, generator=g) + 0.5
    mask = {k: torch.rand(weights[k].shape, generator=g) > 0.3 for k in prunable_names(net)}
    return State(weights, mask)


def test_plain_mlflow_loads_a_state_without_unpickling(template_db: Path, tmp_path: Path) -> None:
    store = _store(template_db, tmp_path)
    state = _masked_bn_state(3)
    with store.run("plain", "register") as run:
        uri = run.save_state(
            state, model_name="plain_net", role="trained", step=7, tags={}, architecture=ARCH
        )
    assert store.describe(uri).architecture == ARCH
    assert store.describe(uri).tags["network"] == ARCH["name"]
    x = np.random.default_rng(0).standard_normal((5, 40)).astype(np.float32)
    logits, schema = _plain_mlflow(store, uri, x, tmp_path)
    np.testing.assert_allclose(logits, _logits(state, ARCH, x), rtol=1e-5, atol=1e-6)
    assert schema == {"inputs": [[-1, 40]], "outputs": [["logits", [-1, 10]]], "example": [1, 40]}


@pytest.mark.slow
def test_a_state_from_lmctrack_train_loads_in_plain_mlflow(new_project, tmp_path: Path) -> None:
    """Needs jobs.register() to pass the architecture to save_state."""
    project = new_project("plain_train")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run(
        [sys.executable, "-m", "lmctrack", "train", "-q", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=project.folder,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    uri = json.loads(done.stdout)["states"]["W_T"]
    info = project.store.describe(uri)
    assert info.architecture, "register() must pass architecture= to save_state"
    x = np.random.default_rng(1).standard_normal((8, *info.architecture["input_shape"]))
    x = x.astype(np.float32)
    logits, _ = _plain_mlflow(project.store, uri, x, tmp_path)
    expected = _logits(project.store.load_state(uri), info.architecture, x)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)


def _free_port() -> int:
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(base: str, path: str) -> dict | str:
    with urllib.request.urlopen(f"{base}{path}", timeout=30) as response:
        body = response.read().decode()
    return json.loads(body) if body.startswith("{") else body


def _post(base: str, path: str, payload: dict) -> dict:
    request = urllib.request.Request(
        f"{base}{path}",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read().decode())


def _serve(store: Store, port: int) -> subprocess.Popen:
    """`lmctrack ui`'s server on the store; returns once it answers /health."""
    server = subprocess.Popen(
        store.ui_command(port),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            _get(f"http://127.0.0.1:{port}", "/health")
            return server
        except OSError:
            assert server.poll() is None, "the MLflow server exited"
            time.sleep(0.5)
    os.killpg(server.pid, signal.SIGTERM)
    raise AssertionError("the MLflow server did not answer within 180 s")


@pytest.mark.slow
def test_the_rest_api_shows_kind_datasets_costs_and_schema(
    template_db: Path, tmp_path: Path
) -> None:
    store = _store(template_db, tmp_path)
    store.client.create_experiment("legacy")  # made before experiments had a kind
    with store.run("fresh", "train") as trained:
        uri = trained.save_state(
            _masked_bn_state(1),
            model_name="served",
            role="trained",
            step=1,
            tags={},
            dataset=DATA,
            architecture=ARCH,
        )
    with store.run("legacy", "evaluate") as reader:
        reader.log_dataset(DATA)
        reader.log_dataset(DATA)  # once per run
    port = _free_port()
    server = _serve(store, port)
    base = f"http://127.0.0.1:{port}/api/2.0/mlflow"
    try:
        for name in ("fresh", "legacy"):
            experiment = _get(base, f"/experiments/get-by-name?experiment_name={name}")
            tags = {t["key"]: t["value"] for t in experiment["experiment"]["tags"]}
            assert tags["mlflow.experimentKind"] == "custom_model_development", name
        ids = [trained.experiment_id, reader.experiment_id]
        runs = _post(base, "/runs/search", {"experiment_ids": ids})["runs"]
        assert {r["info"]["run_id"] for r in runs} == {trained.id, reader.id}
        for run in runs:
            inputs = run["inputs"]["dataset_inputs"]
            assert [i["dataset"]["name"] for i in inputs] == ["mnist1d"]
            metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
            assert metrics["cost.wall_seconds"] > 0 and metrics["cost.cpu_seconds"] >= 0
            tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
            assert tags["lmctrack.cost.device"] == "cpu"
        version = store.describe(uri)
        mlmodel = _get(
            f"http://127.0.0.1:{port}",
            f"/model-versions/get-artifact?path=MLmodel&name=served&version={version.version}",
        )
        assert "loader_module: lmctrack.mlflow_model" in mlmodel
        assert "signature:" in mlmodel and "[-1, 40]" in mlmodel and "logits" in mlmodel
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_importing_the_cli_or_the_store_does_not_import_mlflow(
    template_db: Path, tmp_path: Path
) -> None:
    timed = _python("import lmctrack.cli", env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert "lmctrack.cli" in timed.stderr and "mlflow" not in timed.stderr
    code = (
        "import sys, lmctrack.store as s\n"
        "assert 'mlflow' not in sys.modules and 'torch' not in sys.modules\n"
        "s.preload()\n"
        "store = s.Store(sys.argv[1])\n"
        "assert 'mlflow' in sys.modules and store.find_run('none', 'abc') is None\n"
    )
    _python(code, _store_uri(template_db, tmp_path))
