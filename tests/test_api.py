"""The Python API: the example script runs end to end on a tiny project, and `lmc.load` gives
the network a registered state describes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_extras import SUBPROCESS_ENV

import lmctrack as lmc
from lmctrack.engine.evaluate import evaluate

# End to end: real trainings, stores or subprocesses (seconds to minutes each).
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def test_the_example_analysis_runs_through_the_api(new_project, tmp_path):
    project = new_project("api_example")
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "instability_notebook.py"),
            "params.yaml",
            str(tmp_path),
        ],
        cwd=project.folder,
        env=SUBPROCESS_ENV,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "k=0: test error barrier" in done.stdout and "k=20: test error barrier" in done.stdout
    assert "2 trained copies of W20 registered" in done.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fork_k0.png", "fork_k20.png"]


def test_load_gives_the_registered_network_and_its_tags(new_project):
    project = new_project("api_load")
    params = project.params_file
    run = lmc.train(params)
    network, info = lmc.load(run.final, params=params)
    assert info.tags["role"] == "trained" and info.parents == [run.at(20)]
    state = project.store.load_state(run.final)
    assert all(torch.equal(network.state_dict()[k], v) for k, v in state.weights.items())
    ctx = project.context()
    assert evaluate(network, ctx.dataset, "test").error == ctx.error(state)
    assert lmc.train(params).run_id == run.run_id  # reused
    fork = lmc.fork(run.at(20), seeds=2, params=params, sets={"instability.alphas": 3})
    assert len(fork.pairs[0].alphas) == 3 and list(fork.to_frame()["k"]) == [20]
    by_params = lmc.fork(run.at(20), params=params, sets={"instability.copies": 3})
    assert len(by_params.copies) == 3  # no seeds: instability.copies
