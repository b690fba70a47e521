"""The Ray backend and a shared tracking server, end to end on this machine's loopback.

Started here (deploy/services.py): PostgreSQL on a temp data folder, `mlflow server` on it with
proxied artifacts, and a Ray head with two worker CPUs. Checked: trainings on Ray give the
weights of local processes bit for bit; a worker killed with kill -9 is retried and resumes from
its checkpoint; a reduced `lmctrack instability` on Ray + the server registers the same states,
with the same lineage and weights, as the local backend on sqlite, each exactly once, also when a
worker is killed mid-sweep. Skips with one line where Ray or PostgreSQL is not installed.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy"))
import services  # noqa: E402

os.environ.update(services.RAY_LOOPBACK)  # read when Ray is imported: loopback only
ray = pytest.importorskip("ray", reason='Ray is not installed (pip install -e ".[cluster]")')

from lmctrack.batched import checkpoint_step  # noqa: E402
from lmctrack.config import DataConfig, ModelConfig, RunnerConfig, load_params  # noqa: E402
from lmctrack.data import load_dataset  # noqa: E402
from lmctrack.progress import Board, board  # noqa: E402
from lmctrack.runner import TrainJob, run_configured, run_job, run_jobs  # noqa: E402
from lmctrack.store import Store  # noqa: E402
from lmctrack.train import Noise  # noqa: E402

pytestmark = pytest.mark.slow
CPU = torch.device("cpu")
TASK_TITLE = "ray::_train"  # the process title of a Ray worker running lmctrack.cluster._train


@dataclass
class Cluster:
    ray_address: str
    ray_head: subprocess.Popen
    tracking_uri: str


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """The three services, Ray's head started while PostgreSQL and MLflow start."""
    artifacts = tmp_path_factory.mktemp("server") / "artifacts"
    artifacts.mkdir()
    with ExitStack() as stack, ThreadPoolExecutor(1) as pool:
        try:
            head = services.ray_head(cpus=2)
            starting = pool.submit(head.__enter__)
            db = stack.enter_context(services.postgres())
            url = stack.enter_context(services.mlflow_server(db, artifacts))
            address, proc = starting.result()
            stack.push(head.__exit__)
        except services.Unavailable as e:
            pytest.skip(str(e))
        yield Cluster(address, proc, url)
        ray.shutdown()


def _tasks(head: subprocess.Popen) -> list[int]:
    """Pids of the head's worker processes that are running a training right now."""
    table = subprocess.run(
        ["ps", "-e", "-o", "pid=,ppid=,args="], capture_output=True, text=True, check=True
    ).stdout
    rows = [line.split(None, 2) for line in table.splitlines()]
    children: dict[int, list[int]] = {}
    for pid, ppid, *_ in rows:
        children.setdefault(int(ppid), []).append(int(pid))
    below, todo = set(), [head.pid]
    while todo:
        for child in children.get(todo.pop(), []):
            below.add(child)
            todo.append(child)
    return [int(r[0]) for r in rows if int(r[0]) in below and r[2:] and r[2].startswith(TASK_TITLE)]


def _jobs(stop: int, folder: Path | None = None) -> list[TrainJob]:
    train = load_params(None, [f"train.steps={stop}it"]).train
    return [
        TrainJob(
            key=f"copy{seed}",
            label=f"copy {seed}",
            model=ModelConfig(name="mnist1d_cnn"),
            train=train,
            noise=Noise(seed, seed),
            start=0,
            stop=stop,
            snapshot_steps=[20],
            checkpoint=None if folder is None else folder / f"copy{seed}" / "train.safetensors",
        )
        for seed in (1, 2, 3)
    ]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_trainings_on_ray_equal_local_processes_and_report_progress(cluster):
    data = load_dataset(DataConfig(name="mnist1d", num_samples=600))
    runner = RunnerConfig(backend="ray", address=cluster.ray_address)
    screen = Console(file=io.StringIO(), force_terminal=True, width=100)
    with board(enabled=True, output=screen) as live:
        on_ray = run_configured(_jobs(60), data, CPU, live, runner)
        shown = [live.completed(job.key) for job in _jobs(60)]
    with board(enabled=False) as quiet:
        local = run_jobs(_jobs(60), data, CPU, quiet)
    assert shown == [60, 60, 60]
    for a, b in zip(on_ray, local, strict=True):
        assert _same(a.weights, b.weights) and _same(a.snapshots[20], b.snapshots[20])


def test_a_worker_killed_mid_training_is_retried_and_resumes(cluster, tmp_path):
    data = load_dataset(DataConfig(name="mnist1d", num_samples=600))
    runner = RunnerConfig(backend="ray", address=cluster.ray_address)
    job = _jobs(800, tmp_path)[0]
    finished: list = []
    sweep = threading.Thread(
        target=lambda: finished.extend(run_configured([job], data, CPU, Board(None), runner))
    )
    sweep.start()
    deadline = time.monotonic() + 300
    while not (job.checkpoint.is_file() and checkpoint_step(job.checkpoint) == 500):
        assert time.monotonic() < deadline and sweep.is_alive(), "no checkpoint at step 500"
        time.sleep(0.05)
    killed = _tasks(cluster.ray_head)
    assert len(killed) == 1
    os.kill(killed[0], signal.SIGKILL)
    sweep.join(600)
    (result,) = finished
    assert result.resumed_from == 500  # the retry continued from the checkpoint
    alone = run_job(_jobs(800)[0], data, CPU, None)
    assert _same(result.weights, alone.weights) and _same(result.snapshots[20], alone.snapshots[20])


# ---- the CLI: lmctrack instability on Ray + the tracking server ----------------------------------


def _instability(folder: Path, *sets: str, kill_one_in: subprocess.Popen | None = None) -> str:
    """`lmctrack instability` in the project folder; with kill_one_in, the first training seen
    on that Ray head is killed with SIGKILL. Returns its stderr."""
    argv = [sys.executable, "-m", "lmctrack", "instability", "-q"]
    for item in sets:
        argv += ["--set", item]
    env = {**os.environ, **services.RAY_LOOPBACK}
    proc = subprocess.Popen(
        argv, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    killed = []
    while kill_one_in is not None and not killed and proc.poll() is None:
        killed = _tasks(kill_one_in)
        if killed:
            time.sleep(0.5)  # mid-training
            os.kill(killed[0], signal.SIGKILL)
        time.sleep(0.05)
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    assert kill_one_in is None or killed, "no training was seen on Ray to kill"
    return err


def _states(store: Store) -> dict[str, tuple[dict, list[str], dict]]:
    """Every registered state by its key: (tags, parents' keys, weights); each key once."""
    found = store.client.search_model_versions(max_results=10000)
    infos = [store.describe(f"models:/{v.name}/{v.version}") for v in found]
    keys = Counter(info.tags["state_key"] for info in infos)
    assert [k for k, n in keys.items() if n > 1] == []  # registered exactly once
    key_of = {info.uri: info.tags["state_key"] for info in infos}
    return {
        info.tags["state_key"]: (
            {k: v for k, v in info.tags.items() if k in ("role", "step", "config_hash")},
            sorted(key_of[p] for p in info.parents),
            store.load_state(info.uri).weights,
        )
        for info in infos
    }


def test_instability_on_ray_and_the_server_equals_local_on_sqlite(cluster, new_project):
    local = new_project("local")
    _instability(local.folder)
    remote = new_project("remote")
    params = yaml.safe_load(remote.params_file.read_text())
    params["store"] = {"tracking_uri": cluster.tracking_uri}
    params["runner"] = {"backend": "ray", "address": cluster.ray_address}
    remote.params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    err = _instability(remote.folder)
    assert "runner.backend=ray: " in err, "the sweep did not train on Ray (jobs.train_all)"

    server = Store(cluster.tracking_uri)
    expected, got = _states(local.store), _states(server)
    assert got.keys() == expected.keys() and len(got) > 8
    for key, (tags, parents, weights) in expected.items():
        assert got[key][0] == tags and got[key][1] == parents, key  # same lineage
        assert _same(got[key][2], weights), key  # bit-identical

    # the fault drill: another sweep (new SGD noise) with one worker killed mid-training
    drill = "seeds.data_order=7"
    _instability(remote.folder, drill, kill_one_in=cluster.ray_head)
    _instability(local.folder, drill)
    expected, got = _states(local.store), _states(server)  # still every key once
    assert got.keys() == expected.keys()
    assert all(_same(got[key][2], expected[key][2]) for key in expected)
