"""`lmctrack ui` in a real headless browser: a fresh browser profile opening an lmctrack
experiment lands on its training runs, not on MLflow's GenAI overview, with the paper's columns
shown; the compare page lines runs up by their params (k); a version's page links its parent."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from contextlib import closing
from pathlib import Path

import pytest

from lmctrack.results.paper import Imp
from lmctrack.results.sweeps import Sweep
from lmctrack.store import Store, ui
from lmctrack.workflows.imp import imp
from lmctrack.workflows.instability import instability

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
needs_browser = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium binary on PATH (CI installs Debian's chromium)"
)


def _free_port() -> int:
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(store: Store, port: int, log: Path) -> subprocess.Popen:
    """`lmctrack ui`'s server on the store; returns once it answers /health."""
    server = subprocess.Popen(
        store.ui_command(port),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                return server
        except OSError:
            assert server.poll() is None, f"the MLflow server exited: {log.read_text()[-3000:]}"
            time.sleep(0.5)
    os.killpg(server.pid, signal.SIGTERM)
    raise AssertionError("the MLflow server did not answer within 180 s")


def _rendered(url: str) -> str:
    """The page's DOM after its scripts ran, in a fresh browser profile (empty localStorage)."""
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                f"--user-data-dir={profile}",
                "--window-size=1400,900",
                "--virtual-time-budget=20000",
                "--dump-dom",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow  # the server's start and the page's scripts: about 50 s
@needs_browser
def test_a_fresh_browser_opens_an_experiment_on_its_training_runs(
    template_db: Path, tmp_path: Path
) -> None:
    db = tmp_path / "mlflow.db"
    shutil.copy(template_db, db)
    store = Store(f"sqlite:///{db}")
    with store.run("instability", "pair") as run:
        run.log_metrics({"test.error_barrier": 0.0123, "test.error": 0.25})
    port = _free_port()
    server = _serve(store, port, tmp_path / "server.log")
    try:
        page = _rendered(f"http://127.0.0.1:{port}/#/experiments/{run.experiment_id}")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    heading = re.search(r"<h2[^>]*>([^<]+)</h2>", page)
    assert heading and heading.group(1) == "Runs", heading and heading.group(1)
    assert "Detect Issues" not in page  # the GenAI overview's guidance
    assert "Ask a question" not in page  # the assistant panel stays closed on a first visit
    assert ">pair<" in page  # the run itself is listed


@pytest.fixture(scope="module")
def compared(new_project) -> tuple[object, Sweep, Imp]:
    """A reduced sweep (one init, two copies of W20) and an IMP from W20 (one level)."""
    project = new_project(
        "ui",
        instability={"inits": 1, "copies": 2, "rewind_steps": ["20it"]},
        imp={"levels": 1, "replicates": 1},
    )
    ctx = project.context()
    sweep = instability(ctx)
    w20 = next(s.uri for s in ctx.store.run_states(sweep.train_runs[0]) if s.tags["step"] == "20")
    return project, sweep, imp(ctx, w20, with_baselines=False)


def _runs(store: Store, kind: str) -> list:
    found = store.client.search_runs(
        [e.experiment_id for e in store.client.search_experiments()],
        f"tags.`lmctrack.kind` = '{kind}'",
    )
    assert found, f"no {kind} run"
    return found


@pytest.mark.slow  # a reduced sweep and IMP: about 30 s
def test_every_run_carries_its_defining_params_and_sweeps_nest_what_they_made(compared) -> None:
    project, sweep, _ = compared
    forks, imps = _runs(project.store, "fork"), _runs(project.store, "imp")
    for run in forks + imps:
        assert {"k", "init_seed", "network", "data"} <= set(run.data.params), run.info.run_name
    for run in _runs(project.store, "imp-training"):
        assert {"k", "density", "level", "criterion"} <= set(run.data.params)
    assert {run.data.tags.get("mlflow.parentRunId") for run in forks} == {sweep.run_id}
    every = project.store.client.search_runs(
        [e.experiment_id for e in project.store.client.search_experiments()]
    )
    unnamed = [r.info.run_name for r in every if not {"network", "data"} <= set(r.data.params)]
    assert not unnamed, f"runs without their network and data: {unnamed}"
    train = _runs(project.store, "train")[0].data.params  # the sections it read, beside them
    assert {"data.name", "model.name", "train.lr", "store.tracking_uri"} <= set(train)
    assert sorted(run.data.params["copy_seed"] for run in _runs(project.store, "copy")) == [
        "1",
        "2",
    ]


@pytest.mark.slow  # a reduced sweep and IMP, the server's start and three pages: about 90 s
@needs_browser
def test_the_ui_shows_the_barrier_column_compares_k_and_links_versions(compared, tmp_path):
    project, sweep, result = compared
    store = project.store
    trained = store.describe(result.trainings[-1].trained)  # a sparse W_T, from its (Wk, m)
    parent = store.describe(trained.parents[0])
    link = f"#/models/{parent.name}/versions/{parent.version}"
    page = store.client.get_model_version(trained.name, str(trained.version)).description
    assert f"]({link})" in page and "trained to 100 it" in page
    forks = _runs(store, "fork")
    experiment = forks[0].info.experiment_id
    runs = ",".join(f'"{run.info.run_id}"' for run in forks[:2])
    port = _free_port()
    server = _serve(store, port, tmp_path / "server.log")
    try:
        base = f"http://127.0.0.1:{port}/#"
        table = _rendered(f"{base}/experiments/{experiment}")
        compare = _rendered(f'{base}/compare-runs?runs=[{runs}]&experiments=["{experiment}"]')
        version = _rendered(f"{base}/models/{trained.name}/versions/{trained.version}")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    assert ">test.error_barrier.mean<" in table  # a column header, with no click
    assert re.search(r">k</", compare), "k is not among the compared parameters"
    assert f'href="{link}"' in version


@needs_browser
def test_the_defaults_leave_a_users_own_choice_as_it_is(tmp_path: Path) -> None:
    """The script `lmctrack ui` puts at the top of MLflow's page, run in Chromium after the user
    chose the GenAI view: that choice stands, and an unset default is set."""
    chosen = json.dumps("genai")
    page = tmp_path / "page.html"
    page.write_text(
        f"<html><head><script>localStorage.setItem('mlflow.workflowType_v1', '{chosen}')</script>"
        + ui.defaults_script(ui.BROWSER_DEFAULTS)
        + "</head><body><pre id='seen'></pre><script>document.getElementById('seen').textContent"
        "=JSON.stringify(Object.fromEntries(Object.entries(localStorage)))</script></body></html>"
    )
    seen = re.search(r"<pre id=\"seen\">([^<]*)</pre>", _rendered(page.as_uri()))
    assert seen, "the page did not run its scripts"
    stored = json.loads(seen.group(1).replace("&quot;", '"'))
    assert stored["mlflow.workflowType_v1"] == chosen  # the user's choice, not machine_learning
    assert stored["mlflow.assistant.fab.autoOpenedOnFirstLoad_v1"] == "true"
