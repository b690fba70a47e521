"""The Ray backend and a shared tracking server, end to end on this machine's loopback.

Started once for the module (deploy/services.py): a Ray head with two worker CPUs, which this
process joins, and meanwhile PostgreSQL on a temp data folder and `mlflow server` on it with
proxied artifacts; both as deployed, with authentication (Ray's token; the server's basic-auth
app, every client here signed in as its admin through the environment). Checked: trainings on Ray give the weights of local processes bit for bit; a
worker killed with kill -9 is retried and resumes from its checkpoint; a reduced instability
sweep, with a worker killed mid-sweep, a reduced IMP and LMC across inits (connect) on Ray + the
server register the same states, with the same lineage and weights, as the local backend on
sqlite, each exactly once; a new driver's workers are warmed up before its first tasks;
`lmctrack instability --backend ray` rides out a server restart mid-sweep (one that stays down
is named), and when that command is killed with kill -9, the driver started again reuses what
finished and interpolates the sweep's pairs as Ray tasks, with the local numbers. The tests
share the two projects' registries and run in order: a state's key holds its parents' URIs,
which match only while both registries have the same history. Skips with one line where Ray or
PostgreSQL is not installed.
"""

from __future__ import annotations

import io
import json
import os
import secrets
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
from mlflow.exceptions import MlflowException
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy"))
import services  # noqa: E402

# Read when Ray is imported: loopback only, and Ray's token authentication with a token of this
# session's own, which the head and every driver here read from the environment: a token in the
# user's home (~/.ray/auth_token, which a local Ray leaves there) changes nothing, and none is
# written there.
RAY_TOKEN = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
os.environ.update({**services.RAY_LOOPBACK, **RAY_TOKEN})
ray = pytest.importorskip("ray", reason='Ray is not installed (pip install -e ".[cluster]")')

from lmctrack.config.params import (  # noqa: E402
    DataConfig,
    ModelConfig,
    RunnerConfig,
    load_params,
    schema,  # noqa: E402
)
from lmctrack.engine.batched import checkpoint_step  # noqa: E402
from lmctrack.engine.data import load_dataset  # noqa: E402
from lmctrack.engine.state import State  # noqa: E402
from lmctrack.engine.train import Noise  # noqa: E402
from lmctrack.errors import LmcError  # noqa: E402
from lmctrack.execution import cluster as ray_backend  # noqa: E402
from lmctrack.execution.executor import executor  # noqa: E402
from lmctrack.execution.local import TrainJob, run_job, run_jobs  # noqa: E402
from lmctrack.execution.progress import Board, board  # noqa: E402
from lmctrack.store import Store  # noqa: E402
from lmctrack.workflows.connect import connect  # noqa: E402
from lmctrack.workflows.imp import imp  # noqa: E402
from lmctrack.workflows.instability import instability  # noqa: E402

pytestmark = pytest.mark.slow
CPU = torch.device("cpu")
TASK_TITLE = (
    "ray::_train"  # the process title of a Ray worker running lmctrack.execution.cluster._train
)
SWEEP = {"inits": 1}  # one W0 -> W_T, then 2 copies of W0 and of W20: 5 trainings, 2 pairs


@dataclass
class Cluster:
    ray_address: str
    ray_head: subprocess.Popen


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory):
    """Ray's head, started here while PostgreSQL and the MLflow server start in a thread (the
    tests that need only Ray run meanwhile); this process joins Ray, so that the in-process
    sweeps reuse its workers. Yields the Cluster (or why not) and the server's future; at the
    end Ray's head stops in the thread while the others stop here."""
    artifacts = tmp_path_factory.mktemp("server") / "artifacts"
    artifacts.mkdir()
    with ThreadPoolExecutor(1) as pool, ExitStack() as servers:

        def start_server() -> services.MlflowServer:
            db = servers.enter_context(services.postgres())
            server = servers.enter_context(services.mlflow_server(db, artifacts))
            os.environ.update(server.credentials)  # every client here, the commands too
            servers.callback(_sign_out, server.credentials)
            return server

        server = pool.submit(start_server)
        head = services.ray_head(cpus=2)
        try:
            address, proc = head.__enter__()
        except services.Unavailable as e:
            yield e, server
        else:
            ray_backend.connect(address)
            yield Cluster(address, proc), server
            ray.shutdown()
            pool.submit(head.__exit__, None, None, None)
        server.exception()  # started (or failed) before the stack stops it


def _sign_out(credentials: dict[str, str]) -> None:
    for name in credentials:
        os.environ.pop(name, None)


@pytest.fixture(scope="module")
def cluster(started) -> Cluster:
    if isinstance(started[0], services.Unavailable):
        pytest.skip(str(started[0]))
    return started[0]


@pytest.fixture(scope="module")
def server(started) -> services.MlflowServer:
    try:
        return started[1].result()
    except services.Unavailable as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def projects(cluster: Cluster, server: services.MlflowServer, new_project) -> tuple:
    """A local project (processes, sqlite) and a remote one (Ray, the server), reduced sweeps."""
    local = new_project("local", instability=SWEEP)
    remote = new_project("remote", instability=SWEEP)
    params = yaml.safe_load(remote.params_file.read_text())
    params["store"] = {"tracking_uri": server.url}
    params["runner"] = {"backend": "ray", "address": cluster.ray_address}
    remote.params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    remote.store = Store(server.url)
    return local, remote


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


def _kill_a_training(head: subprocess.Popen, killed: list[int], until: threading.Event) -> None:
    """kill -9 the first worker seen running a training (recorded in `killed`)."""
    while not until.is_set() and not killed:
        for pid in _tasks(head)[:1]:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        time.sleep(0.02)


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
        on_ray = executor(runner).train(_jobs(60), data, CPU, live)
        shown = [live.shown(job.key) for job in _jobs(60)]
    with board(enabled=False) as quiet:
        local = run_jobs(_jobs(60), data, CPU, quiet)
    assert [bar["completed"] for bar in shown] == [60, 60, 60]
    # the workers' last reports reached the board: each bar shows its training's final loss
    assert all(0 < bar["loss"] < 10 and 0 <= bar["acc"] <= 1 for bar in shown), shown
    for a, b in zip(on_ray, local, strict=True):
        assert _same(a.weights, b.weights) and _same(a.snapshots[20], b.snapshots[20])


def test_a_worker_killed_mid_training_is_retried_and_resumes(cluster, tmp_path):
    data = load_dataset(DataConfig(name="mnist1d", num_samples=600))
    runner = RunnerConfig(backend="ray", address=cluster.ray_address)
    job = _jobs(800, tmp_path)[0]
    finished: list = []
    sweep = threading.Thread(
        target=lambda: finished.extend(executor(runner).train([job], data, CPU, Board(None)))
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


# ---- workflows on Ray + the tracking server vs local processes + sqlite -------------------------


PROBE = """
import sys, ray
from lmctrack.execution import cluster
from lmctrack.config.params import RunnerConfig
runner = RunnerConfig(backend="ray", address=sys.argv[1])
ray.get(cluster.warm_up(runner)) if sys.argv[2] == "warm" else cluster.connect(runner.address)
probe = ray.remote(lambda: "lmctrack.execution.job" in sys.modules).options(num_cpus=1)
print(ray.get([probe.remote() for _ in range(4)]))
"""


@pytest.mark.parametrize("warm", [True, False])
def test_a_command_warms_its_workers_up_before_its_first_tasks(cluster, warm):
    """A new driver is a new Ray job with fresh workers; after warm_up, every one of them has
    imported what a training runs (without it, none has)."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, cluster.ray_address, "warm" if warm else "cold"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **services.RAY_LOOPBACK},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == str([warm] * 4)


CONNECT = """
import sys
from lmctrack.execution import cluster
from lmctrack.errors import LmcError
try:
    cluster.connect(sys.argv[1])
except LmcError as e:
    print(e)
    sys.exit(3)
"""


def test_a_driver_without_the_heads_token_is_told_the_cause_and_the_fix(cluster):
    """Ray itself says only "Failed to connect" (the authentication error is in its log)."""
    env = {k: v for k, v in os.environ.items() if k not in RAY_TOKEN}  # a user's plain driver
    done = subprocess.run(
        [sys.executable, "-c", CONNECT, cluster.ray_address],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 3, done.stderr[-2000:]
    message = done.stdout.strip()
    assert "\n" not in message and "authentication" in message, message
    assert "RAY_AUTH_MODE=token" in message and "~/.ray/auth_token" in message, message


LOCAL = """
import ray
from lmctrack.execution import cluster
cluster.connect(None)
print(ray.get(ray.remote(lambda: 6 * 7).remote()))
"""


def test_a_local_ray_leaves_no_token_in_the_home_folder(tmp_path):
    """A token there would make every later `ray start --head` on this machine demand it."""
    env = {k: v for k, v in os.environ.items() if k not in RAY_TOKEN}
    done = subprocess.run(
        [sys.executable, "-c", LOCAL],
        capture_output=True,
        text=True,
        timeout=300,
        env={**env, "HOME": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "42"
    assert not (tmp_path / ".ray" / "auth_token").exists()


def _states(store: Store, before: set[str] = frozenset()) -> dict[str, tuple]:
    """Every registered state but those of `before` (URIs), by key: (tags, parents' keys,
    weights); the registry holds each key once."""
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
        if info.uri not in before
    }


def _uris(store: Store) -> set[str]:
    return {f"models:/{v.name}/{v.version}" for v in store.client.search_model_versions()}


def _assert_same_new_states(local, remote, before: tuple[set, set], at_least: int) -> None:
    """The states each registry gained: the same keys, tags, lineage and weights."""
    expected, got = _states(local.store, before[0]), _states(remote.store, before[1])
    assert got.keys() == expected.keys() and len(got) >= at_least
    for key, (tags, parents, weights) in expected.items():
        assert got[key][0] == tags and got[key][1] == parents, key  # same lineage
        assert _same(got[key][2], weights), key  # bit-identical


def _cli_sweep(folder: Path, *sets: str) -> subprocess.Popen:
    """`lmctrack instability --backend ray` in the project folder."""
    argv = [sys.executable, "-m", "lmctrack", "instability", "-q", "--backend", "ray"]
    for item in sets:
        argv += ["--set", item]
    return subprocess.Popen(
        argv, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_instability_on_ray_and_the_server_equals_local_on_sqlite(cluster, projects, capfd):
    local, remote = projects
    before = _uris(local.store), _uris(remote.store)
    expected = instability(local.context())
    killed: list[int] = []
    done = threading.Event()
    killer = threading.Thread(target=_kill_a_training, args=(cluster.ray_head, killed, done))
    killer.start()
    try:
        got = instability(remote.context())
    finally:
        done.set()
        killer.join()
    assert killed, "no training was seen on Ray to kill"
    assert "runner.backend=ray: 4 trainings" in capfd.readouterr().err  # the copies, on Ray
    assert [r.barrier for r in got.rows] == [r.barrier for r in expected.rows]  # to the bit
    _assert_same_new_states(local, remote, before, at_least=7)  # W0, W20, W_T, 4 copies


def test_imp_on_ray_and_the_server_equals_local_on_sqlite(projects):
    local, remote = projects
    before = _uris(local.store), _uris(remote.store)
    sets = ("imp.levels=1", "imp.replicates=1")
    (w20,) = local.store.search_states(role="rewind", step=20)
    assert remote.store.describe(w20.uri).tags["state_key"] == w20.tags["state_key"]
    expected = imp(local.context(*sets), w20.uri)
    got = imp(remote.context(*sets), w20.uri)
    assert got.rows == expected.rows  # the same accuracies, to the bit
    _assert_same_new_states(local, remote, before, at_least=6)  # masks, subnetworks, baselines


def test_connect_on_ray_and_the_server_equals_local_on_sqlite(projects):
    """LMC across inits: its paths, each kind with its own BatchNorm policy, as Ray tasks give the
    local numbers, and the aligned state is registered alike."""
    local, remote = projects
    before = _uris(local.store), _uris(remote.store)
    sets = ("align.inits=2", "instability.splits=[test]")
    expected, got = connect(local.context(*sets)), connect(remote.context(*sets))
    assert not expected.reused and not got.reused
    assert {k: got.barrier(k, "test") for k in schema.PAIR_KINDS} == {
        k: expected.barrier(k, "test") for k in schema.PAIR_KINDS
    }  # to the bit
    _assert_same_new_states(local, remote, before, at_least=1)  # B aligned to A


def _wait_until(ready, proc: subprocess.Popen, what: str) -> None:
    """Until ready(); the driver must still be running."""
    deadline = time.monotonic() + 300
    while not ready():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"no {what} after 300 s"
        time.sleep(0.1)


def test_a_server_restart_and_a_killed_driver_lose_and_duplicate_nothing(
    cluster, server, projects, monkeypatch, capfd
):
    local, remote = projects
    before = _uris(local.store), _uris(remote.store)

    def versions() -> int:
        return len(_uris(remote.store)) - len(before[1])

    seed = "seeds.init=7"
    first = _cli_sweep(remote.folder, seed)
    with ThreadPoolExecutor(1) as pool:
        twin = pool.submit(instability, local.context(seed))  # meanwhile
        try:
            _wait_until(lambda: versions() >= 1, first, "W0")  # mid-sweep: W20, W_T to register
            server.stop()
            with monkeypatch.context() as down:  # while it is down, a client without retries fails
                down.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
                with pytest.raises(LmcError, match=f"server {server.url} stopped"):
                    remote.store.find_run("drill", "0" * 16)
            server.start()  # the sweep's writes were waiting in their retries
            _wait_until(lambda: versions() >= 3, first, "W_T")
            _wait_until(lambda: _tasks(cluster.ray_head), first, "copy training")  # W_T's run ended
        finally:
            first.kill()  # kill -9 of the driver while the copies train
            first.communicate()
        expected = twin.result()

    spread: list[int] = []  # the driver started again (here): what it sends to Ray
    original = ray_backend.map_on_ray
    monkeypatch.setattr(
        ray_backend,
        "map_on_ray",
        lambda fn, calls, *a: spread.append(len(calls)) or original(fn, calls, *a),
    )
    capfd.readouterr()
    got = instability(remote.context(seed))
    err = capfd.readouterr().err
    assert "runner.backend=ray: 4 trainings" in err and "1 trainings" not in err  # W_T reused
    assert spread == [2]  # both forks' pairs, as Ray tasks at once
    assert [r.barrier for r in got.rows] == [r.barrier for r in expected.rows]  # to the bit
    _assert_same_new_states(local, remote, before, at_least=7)


def _resend(monkeypatch, client, method: str) -> None:
    """Under load MLflow's client sends a create request again when the answer is lost (a read
    timeout, a 5xx): the first request was stored too. Here every `method` request reaches the
    server twice and the caller gets the second answer."""
    call = getattr(client, method)

    def resent(*args, **kwargs):
        call(*args, **kwargs)  # stored, answer lost
        return call(*args, **kwargs)

    monkeypatch.setattr(client, method, resent)


def test_a_version_whose_answer_was_lost_and_request_resent_is_registered_once(server, monkeypatch):
    """Once the store settles the state is one version, the one the caller got and loads, of one
    logged model (a copy of which would stay PENDING, without files, among the experiment's
    models); the copies are found by one search per kind (store.copies)."""
    store = Store(server.url)
    _resend(monkeypatch, store.client, "create_model_version")
    _resend(monkeypatch, store.client, "create_logged_model")
    weights = {"w": torch.arange(6.0).reshape(2, 3)}
    with store.run("resent", "twice") as run:
        uri = run.save_state(
            State(weights), model_name="resent", role="final", step=1, tags={}, key="resent-1"
        )
    store.settle()
    versions = store.client.search_model_versions("name = 'resent'")
    assert [f"models:/resent/{v.version}" for v in versions] == [uri] == ["models:/resent/2"]
    assert torch.equal(store.load_state(uri).weights["w"], weights["w"])
    assert store.find_state("resent-1") == uri
    models = store.client.search_logged_models([run.experiment_id])
    assert [(m.model_id, str(m.status)) for m in models] == [
        (store.describe(uri).model_id, "READY")
    ]
    # the server linked the logged model to both versions; it names only the one kept
    assert json.loads(models[0].tags["mlflow.modelVersions"]) == [{"name": "resent", "version": 2}]
    assert Store(server.url).describe(f"runs:/{run.id}/final-1").uri == uri


def test_the_server_links_a_logged_model_to_its_version(server):
    """MLflow's server tags the logged model with the version made of it (lmctrack sends no
    request for that): the UI links them and runs:/ URIs resolve."""
    store = Store(server.url)
    with store.run("linked", "once") as run:
        uri = run.save_state(
            State({"w": torch.ones(3)}), model_name="linked", role="w0", step=0, tags={}
        )
    model = store.client.get_logged_model(store.describe(uri).model_id)
    assert json.loads(model.tags["mlflow.modelVersions"]) == [{"name": "linked", "version": 1}]
    assert Store(server.url).describe(f"runs:/{run.id}/w0-0").uri == uri == "models:/linked/1"


def test_a_run_whose_answer_was_lost_and_request_resent_exists_once(server, monkeypatch):
    """The run is one run, the one the caller ends; a claim run's copy, left RUNNING, would hold
    the claim against its own owner forever: the claim is taken and given back."""
    store = Store(server.url)
    _resend(monkeypatch, store.client, "create_run")
    with store.run("resent runs", "twice") as run:
        pass
    taken = threading.Event()

    def claim() -> None:
        with store.claim(["resent-run"]):
            taken.set()

    claimant = threading.Thread(target=claim, daemon=True)
    claimant.start()
    claimant.join(60)
    assert taken.is_set() and not claimant.is_alive()
    store.settle()  # the run's copy is deleted when the store settles (a claim run's at once)
    runs = store.client.search_runs([run.experiment_id])
    assert [(r.info.run_id, r.info.status) for r in runs] == [(run.id, "FINISHED")]
    claims = store.client.get_experiment_by_name("lmctrack.claims").experiment_id
    claim_runs = store.client.search_runs([claims], "tags.`lmctrack.claim.0` = 'resent-run'")
    assert [r.info.status for r in claim_runs] == ["FINISHED"]


def test_writes_to_the_server_land_in_order_and_one_refused_ends_nothing_after_it(server):
    """A run's writes whose answers nobody reads are sent behind the caller, in the order made:
    once the store settles, another client sees them all (the last tag written wins, the run
    ends FINISHED). A write the server refuses is raised at the caller's next read, and the
    writes after it are not sent: that run is never FINISHED, so its work is not reused."""
    store, other = Store(server.url), Store(server.url)  # other: another process's view
    with store.run("deferred writes", "fine") as run:
        for step in range(3):
            run.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
            run.set_tags({"stage": str(step)})
        run.log_json({"steps": [0, 1, 2]}, "steps.json")
    store.settle()
    seen = other.client.get_run(run.id)
    assert (seen.info.status, other.run_tags(run.id)["stage"]) == ("FINISHED", "2")
    history = other.client.get_metric_history(run.id, "loss")
    assert [(m.step, m.value) for m in history] == [(0, 1.0), (1, 0.5), (2, 1 / 3)]
    assert json.loads(other.run_artifact(run.id, "steps.json").read_text()) == {"steps": [0, 1, 2]}

    refusal = pytest.raises(MlflowException, match="[Cc]hanging param values is not allowed")
    with refusal, store.run("deferred writes", "refused") as refused:
        refused.log_params({"lr": 0.1})
        refused.log_params({"lr": 0.2})  # MLflow refuses to change a param
        store.run_tags(refused.id)  # a read: waits for the writes before it
    assert other.client.get_run(refused.id).info.status == "RUNNING"  # its end was not sent
