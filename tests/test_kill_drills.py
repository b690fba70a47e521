"""Kill drills: `lmctrack imp` killed with SIGKILL at four points (mid-training, mid-registration,
between IMP levels, during a baseline), then run again. Every state must end up registered
exactly once, nothing may be left RUNNING, and the re-run must finish the work."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable

import pytest
from test_extras import SUBPROCESS_ENV

pytestmark = pytest.mark.slow

IMP = ["imp", "--run-id", "RUN", "--rewind", "20it", "--levels", "2", "--replicates", "2", "-q"]


def versions(project) -> list:
    return project.store.client.search_model_versions(max_results=10000)


def tagged(project, **tags: str) -> list:
    return [
        v
        for v in versions(project)
        if all(v.tags.get(f"lmctrack.{k}") == x for k, x in tags.items())
    ]


def running_imp(project) -> bool:
    experiment = project.store.client.get_experiment_by_name("mnist1d_cnn_mnist1d")
    runs = project.store.client.search_runs(
        [experiment.experiment_id], "attributes.status = 'RUNNING'"
    )
    return any(r.data.tags.get("lmctrack.kind") == "imp" for r in runs)


DRILLS: dict[str, tuple[Callable, float]] = {
    # (condition on the store, then how long to wait before SIGKILL)
    "mid-training": (running_imp, 0.3),
    "mid-registration": (lambda p: tagged(p, method="imp"), 0.0),
    "between levels": (lambda p: tagged(p, method="imp", level="1", role="sparse"), 0.0),
    "during a baseline": (
        lambda p: len(tagged(p, method="imp", level="2", role="sparse")) == 2,
        0.5,
    ),
}


@pytest.mark.parametrize("drill", DRILLS)
def test_killed_imp_reruns_to_every_state_registered_once(new_project, drill):
    from lmctrack.workflows.training_run import train_run

    project = new_project(f"drill_{drill.replace(' ', '_')}")
    run = train_run(project.context())
    command = [sys.executable, "-m", "lmctrack", *[run.run_id if a == "RUN" else a for a in IMP]]
    condition, wait = DRILLS[drill]
    proc = subprocess.Popen(
        command,
        cwd=project.folder,
        env=SUBPROCESS_ENV,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while not condition(project):
            assert proc.poll() is None, f"finished before the drill point: {proc.stderr.read()}"
            assert time.monotonic() < deadline, "drill point not reached in 180 s"
            time.sleep(0.05)
        time.sleep(wait)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"

    again = subprocess.run(
        command, cwd=project.folder, env=SUBPROCESS_ENV, capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr
    keys = Counter(v.tags.get("lmctrack.state_key") for v in versions(project))
    assert all(n == 1 for n in keys.values()), [k for k, n in keys.items() if n > 1]
    # 2 replicates x (dense W_T, 2 masks, 2 sparse W_T) + 2 baselines x 2 levels x 2 (start, W_T)
    assert len(tagged(project, method="imp")) == 2 * 5
    assert (
        len(tagged(project, method="random_prune")) + len(tagged(project, method="random_reinit"))
        == 2 * 2 * 2 * 2
    )
    for experiment in project.store.client.search_experiments():
        left = project.store.client.search_runs(
            [experiment.experiment_id], "attributes.status = 'RUNNING'"
        )
        assert not left, [r.info.run_name for r in left]
