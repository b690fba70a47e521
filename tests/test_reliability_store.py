"""The store survives kills, duplicate requests, bit-rot, a missing server, hostile URIs, a full
disk and a read-only folder: each failure reproduced on a real sqlite MLflow store."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest
import sqlalchemy
import torch

from lmctrack.engine.state import WEIGHTS_FILE, State
from lmctrack.errors import LmcError
from lmctrack.store import Store
from lmctrack.store.claims import run_claim

MODEL = "net"


def _state(seed: int, size: int = 8) -> State:
    g = torch.Generator().manual_seed(seed)
    return State({"fc.weight": torch.randn(size, 4, generator=g), "fc.bias": torch.zeros(size)})


def _copy_db(template: Path, folder: Path) -> str:
    db = folder / ".lmctrack" / "mlflow.db"
    db.parent.mkdir(parents=True)
    with closing(sqlite3.connect(template)) as src, closing(sqlite3.connect(db)) as dst:
        src.backup(dst)
    return f"sqlite:///{db}"


@pytest.fixture
def store(template_db: Path, tmp_path: Path) -> Store:
    return Store(_copy_db(template_db, tmp_path))


def _versions(store: Store) -> list[str]:
    found = store.client.search_model_versions(max_results=1000)
    return sorted(f"models:/{v.name}/{v.version}" for v in found)


def _statuses(store: Store, experiment: str) -> list[str]:
    exp = store.client.get_experiment_by_name(experiment)
    return [r.info.status for r in store.client.search_runs([exp.experiment_id])]


def _python(code: str, *prefix: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run code in a fresh interpreter (optionally under a command prefix such as setpriv)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    return subprocess.run(
        [*prefix, sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


# ---- 1, 2: a kill mid-registration, runs left RUNNING ---------------------------------------


def test_a_state_key_is_registered_once(store: Store) -> None:
    with store.run("exp", "first") as run:
        uri = run.save_state(_state(0), model_name=MODEL, role="init", step=0, tags={}, key="h.0")
    with store.run("exp", "again") as again:
        same = again.save_state(
            _state(1), model_name=MODEL, role="init", step=0, tags={}, key="h.0"
        )
    assert same == uri and _versions(store) == [uri]
    assert store.find_state("h.0") == uri and store.find_state("h.1") is None
    outputs = store.client.get_run(again.id).outputs.model_outputs
    assert [o.model_id for o in outputs] == [store.describe(uri).model_id]  # adopted, linked


@pytest.mark.parametrize("left", ["failed", "deleted"])
def test_work_found_by_shared_params_still_adopts_what_a_failed_run_registered(
    store: Store, left: str
) -> None:
    """find_runs looks up many pieces of work in one search and lets those without any run skip
    the search for earlier states; a piece whose run failed (or was deleted) after registering
    its state is not among them: its re-run adopts the state instead of registering it twice."""
    source = {"source": "models:/net/1"}
    with pytest.raises(RuntimeError), store.run("exp", "doomed", params=source,
                                                tags={"config_hash": "aaa"}) as doomed:  # fmt: skip
        uri = doomed.save_state(_state(0), model_name=MODEL, role="trained", step=9, tags={},
                                key="aaa:W_T")  # fmt: skip
        raise RuntimeError("the copy's run dies after registering its W_T")
    if left == "deleted":
        store.client.delete_run(doomed.id)
    assert store.find_runs("exp", ["aaa", "bbb"], source) == {}  # nothing finished
    assert "bbb" in store.unregistered and "aaa" not in store.unregistered
    states = {}
    for key in ("aaa", "bbb"):
        with store.run("exp", "again", params=source, tags={"config_hash": key}) as again:
            states[key] = again.save_state(_state(1), model_name=MODEL, role="trained", step=9,
                                           tags={}, key=f"{key}:W_T")  # fmt: skip
    assert states["aaa"] == uri and len(_versions(store)) == 2
    assert store.find_runs("exp", ["aaa", "bbb", "ccc"], source).keys() == {"aaa", "bbb"}
    assert store.unregistered == {"ccc"}


@pytest.mark.slow
def test_kill_after_registration_adopts_the_state_and_reaps_the_run(store: Store) -> None:
    script = f"""
import os, torch
from lmctrack.engine.state import State
from lmctrack.store import Store
store = Store({store.tracking_uri!r})
with store.run("exp", "doomed", tags={{"config_hash": "abc"}}) as run:
    state = State({{"w": torch.ones(3)}})
    print(run.save_state(state, model_name="net", role="init", step=0, tags={{}}, key="abc.init"))
    print(run.id, flush=True)
    os.kill(os.getpid(), 9)
"""
    done = _python(script)
    assert done.returncode == -signal.SIGKILL, done.stderr
    uri, run_id = done.stdout.split()
    fresh = Store(store.tracking_uri)
    assert fresh.client.get_run(run_id).info.status == "RUNNING"  # what the kill left
    assert fresh.find_run("exp", "abc") is None
    assert fresh.client.get_run(run_id).info.status == "KILLED"
    assert fresh.find_run("exp", "abc", status="KILLED") == run_id
    with fresh.run("exp", "rerun", tags={"config_hash": "abc"}) as rerun:
        state = State({"w": torch.ones(3)})
        again = rerun.save_state(
            state, model_name="net", role="init", step=0, tags={}, key="abc.init"
        )
    assert again == uri and _versions(fresh) == [uri]


def test_live_runs_and_other_hosts_runs_are_not_reaped(store: Store) -> None:
    with store.run("live", "mine") as mine:
        assert store.reap("live") == [] and _statuses(store, "live") == ["RUNNING"]
        store.client.set_tag(mine.id, "lmctrack.owner.host", "some-other-machine")
        store.client.set_tag(mine.id, "lmctrack.owner.token", "boot:1:1")
        assert Store(store.tracking_uri).reap("live") == []
    assert _statuses(store, "live") == ["FINISHED"]


# ---- 3: concurrent identical requests ---------------------------------------------------------


def _claimed_work(uri: str, log: list[str], claim=None) -> None:
    """What a workflow does: under the claim, reuse a finished run or do the work."""
    store = Store(uri)
    with (claim or store.claim)(["cfg1"]):
        if (done := store.find_run("work", "cfg1")) is not None:
            log.append(f"reused {done}")
            return
        with store.run("work", "train", tags={"config_hash": "cfg1"}) as run:
            time.sleep(0.3)
        log.append(f"did {run.id}")


@pytest.mark.slow  # two racing requests end to end (threads, claims, polling)
@pytest.mark.parametrize("protocol", ["file lock", "claim runs"])
@pytest.mark.parametrize("claimants", [2, 4])
def test_the_same_work_requested_twice_at_once_is_done_once(
    store: Store, protocol: str, claimants: int
) -> None:
    log: list[str] = []

    def claim(keys: list[str]):
        return run_claim(Store(store.tracking_uri), keys, poll=0.05)

    chosen = claim if protocol == "claim runs" else None
    threads = [
        threading.Thread(target=_claimed_work, args=(store.tracking_uri, log, chosen))
        for _ in range(claimants)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    did = [entry for entry in log if entry.startswith("did")]
    assert len(did) == 1 and log.count(did[0].replace("did", "reused")) == claimants - 1
    assert _statuses(store, "work") == ["FINISHED"]


@pytest.mark.slow  # two racing claimants, one of them slow to land
def test_a_claimant_whose_run_lands_late_waits_for_one_that_began_after_it(store: Store) -> None:
    """The first claimant's run is stamped before, but stored after, the second's: the order of
    the claims must not come from the clock (both held, and both did the work, before tickets)."""
    log: list[str] = []
    late = Store(store.tracking_uri)
    create = late.client.create_run

    def lands_late(experiment_id, start_time=None, tags=None, run_name=None):
        stamped = int(time.time() * 1000)
        time.sleep(0.3)
        return create(experiment_id, start_time=stamped, tags=tags, run_name=run_name)

    late.client.create_run = lands_late
    slow = threading.Thread(
        target=_claimed_work,
        args=(store.tracking_uri, log, lambda keys: run_claim(late, keys, poll=0.05)),
    )
    slow.start()
    time.sleep(0.05)
    _claimed_work(store.tracking_uri, log, lambda keys: run_claim(Store(store.tracking_uri), keys))
    slow.join(60)
    assert [entry.split()[0] for entry in log] == ["did", "reused"]
    assert log[1] == log[0].replace("did", "reused")


def test_a_claim_left_without_its_lock_is_removed_and_does_not_block(store: Store) -> None:
    folder = store.root / "claims"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "gone-1.claim").write_text(json.dumps({"keys": ["k"], "choosing": True}))
    with store.claim(["k"]):
        pass
    assert _claim_files(store) == []


@pytest.mark.slow  # three claimants polling claim runs or the claims folder
@pytest.mark.parametrize("protocol", ["file claims", "claim runs"])
def test_claims_hold_many_keys_at_once_and_wait_only_on_shared_ones(
    store: Store, protocol: str
) -> None:
    """{a, b} holds first; {b, c} shares b and waits for it; {d} shares nothing and does not."""
    events: list[str] = []
    first_holds, release = threading.Event(), threading.Event()

    def claim(keys: list[str]):
        if protocol == "file claims":
            return store.claim(keys)
        return run_claim(Store(store.tracking_uri), keys, poll=0.05)

    def claimant(keys: list[str], hold: threading.Event | None = None) -> None:
        with claim(keys):
            events.append("+" + "".join(sorted(keys)))
            if hold is not None:
                first_holds.set()
                release.wait(30)
        events.append("-" + "".join(sorted(keys)))

    first = threading.Thread(target=claimant, args=(["a", "b"], release))
    first.start()
    assert first_holds.wait(30)
    sharing = threading.Thread(target=claimant, args=(["c", "b"],))
    sharing.start()
    claimant(["d"])  # returns while {a, b} is still held
    time.sleep(0.5)
    assert "+bc" not in events  # b is still held by {a, b}
    release.set()
    for t in (first, sharing):
        t.join(30)
    assert events.index("-ab") < events.index("+bc") and events[:2] == ["+ab", "+d"]
    if protocol == "file claims":
        assert _claim_files(store) == []
        return
    claims = store.client.get_experiment_by_name("lmctrack.claims").experiment_id
    runs = store.client.search_runs([claims])
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 3
    assert {r.data.tags["lmctrack.claim.1"] for r in runs if "lmctrack.claim.1" in r.data.tags} == {
        "b",
        "c",
    }


def _claim_files(store: Store) -> list[str]:
    folder = store.root / "claims"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_a_claim_of_thousands_of_keys_opens_one_file_and_leaves_none(store: Store) -> None:
    """A fork of 5000 copies claims 5001 keys: one open file for all of them (not one per key,
    which ran out of file descriptors), and nothing left in the claims folder afterwards."""
    keys = [f"copy-{i}" for i in range(5000)]
    before = len(os.listdir("/proc/self/fd"))
    with store.claim(keys):
        assert len(os.listdir("/proc/self/fd")) <= before + 1
        assert len(_claim_files(store)) <= 2
    assert _claim_files(store) == []


def test_a_failure_inside_a_claim_leaves_no_claim_files(store: Store) -> None:
    with pytest.raises(RuntimeError, match="training failed"), store.claim(["a", "b"]):
        raise RuntimeError("training failed")
    assert _claim_files(store) == []
    with store.claim(["b"]):  # and the keys are free again
        pass
    assert _claim_files(store) == []


def test_a_killed_claimant_neither_blocks_the_next_nor_leaves_its_files(store: Store) -> None:
    """The kernel drops a killed holder's lock: the next claimant of the key goes ahead at once
    and removes what the dead one left."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from lmctrack.store import Store\n"
            f"with Store({store.tracking_uri!r}).claim(['shared']):\n"
            "    print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert len(_claim_files(store)) == 2
    finally:
        holder.kill()
        holder.wait()
    started = time.monotonic()
    with store.claim(["shared"]):
        assert time.monotonic() - started < 5
    assert _claim_files(store) == []


# ---- 4: integrity ----------------------------------------------------------------------------


def _weights_file(store: Store, uri: str) -> Path:
    location = store.client.get_logged_model(store.describe(uri).model_id).artifact_location
    return Path(location.removeprefix("file://")) / WEIGHTS_FILE


@pytest.mark.slow  # a failure reproduced end to end, then the re-run
def test_bit_rot_is_detected_marked_and_recreated_by_a_rerun(store: Store) -> None:
    with store.run("rot", "fork", tags={"config_hash": "r1"}) as run, run.child("copy") as copy:
        uri = copy.save_state(_state(2), model_name=MODEL, role="init", step=0, tags={}, key="r1.0")
    path = _weights_file(store, uri)
    data = bytearray(path.read_bytes())
    data[-16:] = torch.full((4,), float("nan")).numpy().tobytes()  # weights past the header
    path.write_bytes(bytes(data))
    fresh = Store(store.tracking_uri)
    with pytest.raises(LmcError) as err:
        fresh.load_state(uri)
    message = str(err.value)
    assert uri in message and "sha256" in message and "re-run" in message and "\n" not in message
    assert fresh.find_state("r1.0") is None and fresh.find_run("rot", "r1") is None
    with fresh.run("rot", "rerun", tags={"config_hash": "r1"}) as rerun:
        new = rerun.save_state(
            _state(2), model_name=MODEL, role="init", step=0, tags={}, key="r1.0"
        )
    assert (
        new != uri and fresh.find_state("r1.0") == new and fresh.find_run("rot", "r1") == rerun.id
    )
    assert torch.equal(fresh.load_state(new).weights["fc.weight"], _state(2).weights["fc.weight"])


def test_truncated_and_non_finite_states_are_errors(store: Store) -> None:
    with store.run("rot", "train") as run:
        cut = run.save_state(_state(3), model_name=MODEL, role="init", step=0, tags={})
        nan = State({"w": torch.tensor([1.0, float("inf")])})
        with pytest.raises(LmcError, match="non-finite values in w: training diverged"):
            run.save_state(nan, model_name=MODEL, role="trained", step=9, tags={})
    path = _weights_file(store, cut)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(LmcError, match="corrupted"):
        Store(store.tracking_uri).load_state(cut)
    assert len(_versions(store)) == 1


# ---- 5, 6: unreachable server, hostile URIs --------------------------------------------------


def test_an_unreachable_tracking_server_is_one_line_naming_it() -> None:
    with pytest.raises(LmcError) as err:
        Store("http://127.0.0.1:9")
    message = str(err.value)
    assert "http://127.0.0.1:9" in message and "check that the server" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "path", ["../../..", "../../../../etc", "../../../.lmctrack/mlflow.db", "x/../../../.."]
)
def test_runs_uris_are_confined_to_the_run(store: Store, path: str) -> None:
    with store.run("exp", "r") as run:
        run.log_json({"a": 1}, "a.json")
    for read in (
        lambda: store.load_state(f"runs:/{run.id}/{path}"),
        lambda: store.run_artifact(run.id, path),
    ):
        with pytest.raises(LmcError) as err:
            read()
        assert "\n" not in str(err.value)
    with pytest.raises(LmcError, match="outside the store"):
        store.load_state(f"runs:/{run.id}/{path}")


@pytest.mark.parametrize("uri", ["models:/../1", "models:/./1", "models:/..@x", "runs:/../x"])
def test_malformed_uris_are_one_line_errors(store: Store, uri: str) -> None:
    with pytest.raises(LmcError) as err:
        store.lineage(uri)
    assert "\n" not in str(err.value)


# ---- 7: disk full, read-only, permissions ----------------------------------------------------


def _full(connection, _record) -> None:
    (pages,) = connection.execute("PRAGMA page_count").fetchone()
    connection.execute(f"PRAGMA max_page_count = {pages}")


@pytest.mark.slow  # a failure reproduced end to end, then the re-run
def test_a_full_database_is_one_line_and_leaves_no_run_running(store: Store) -> None:
    with store.run("full", "warm") as run:  # the experiment and its first pages exist
        pass
    engines = {store.client._tracking_client.store.engine}
    engines.add(store.client._get_registry_client().store.engine)
    for engine in engines:
        sqlalchemy.event.listen(engine, "connect", _full)
        engine.dispose()
    try:
        with pytest.raises(LmcError) as err, store.run("full", "train") as run:
            for i in range(200):
                run.save_state(_state(i, 256), model_name=MODEL, role="t", step=i, tags={})
    finally:
        for engine in engines:
            sqlalchemy.event.remove(engine, "connect", _full)
            engine.dispose()
    message = str(err.value)
    assert "database or disk is full" in message and "free disk space" in message
    assert "\n" not in message
    assert "RUNNING" not in _statuses(Store(store.tracking_uri), "full")


@pytest.mark.slow  # a failure reproduced end to end, then the re-run
def test_a_file_too_big_for_the_disk_is_one_line_and_the_rerun_finishes(store: Store) -> None:
    big = State({"w": torch.zeros(8 * 2**20)})  # 32 MiB
    limit = max(p.stat().st_size for p in store.root.glob("mlflow.db*")) + 8 * 2**20
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes fail with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        with pytest.raises(LmcError) as err, store.run("disk", "train") as run:
            run.save_state(big, model_name=MODEL, role="init", step=0, tags={}, key="d.0")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert "cannot write to the store" in str(err.value) and "\n" not in str(err.value)
    assert _statuses(store, "disk") == ["FAILED"] and _versions(store) == []
    with store.run("disk", "rerun") as run:
        uri = run.save_state(big, model_name=MODEL, role="init", step=0, tags={}, key="d.0")
    assert store.load_state(uri).weights["w"].shape == big.weights["w"].shape


def test_files_and_folders_get_the_store_permissions(store: Store) -> None:
    old = os.umask(0o022)
    try:
        with store.run("perm", "r") as run:
            run.save_state(_state(4), model_name=MODEL, role="init", step=0, tags={})
            run.log_json({"a": 1}, "a.json")
    finally:
        os.umask(old)
    paths = list((store.root / "artifacts").rglob("*"))
    assert any(p.name == WEIGHTS_FILE for p in paths) and any(p.name == "a.json" for p in paths)
    modes = {stat.S_IMODE(p.stat().st_mode) for p in paths if p.is_file()}
    assert modes == {0o644}
    assert {stat.S_IMODE(p.stat().st_mode) for p in paths if p.is_dir()} == {0o755}


_NO_ROOT_POWERS = ("setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner")


def _read_only(folder: Path) -> None:
    for path in (folder, *folder.rglob("*")):
        path.chmod(path.stat().st_mode & ~0o222)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv to drop root's powers")
def test_a_read_only_store_can_be_read_not_written(store: Store) -> None:
    with store.run("ro", "train") as run:
        w0 = run.save_state(_state(5), model_name=MODEL, role="init", step=0, tags={})
        wt = run.save_state(
            _state(6), model_name=MODEL, role="trained", step=9, tags={}, parents=[w0]
        )
    root = Path(store.root)
    for client in (store.client._tracking_client, store.client._get_registry_client()):
        client.store.engine.dispose()  # the last connection closes: sqlite drops -wal and -shm
    assert not (root / "mlflow.db-wal").exists()
    _read_only(root)
    script = f"""
import json
from lmctrack.errors import LmcError
from lmctrack.engine.state import State
from lmctrack.store import Store
import torch
store = Store({store.tracking_uri!r})
node = store.lineage({wt!r})
state = store.load_state({wt!r})
try:
    with store.run("ro", "more") as run:
        run.save_state(State({{"w": torch.ones(2)}}), model_name="net", role="x", step=0, tags={{}})
    print("WROTE")
except LmcError as e:
    print("ERROR", e)
print(json.dumps([node.parents[0].info.uri, float(state.weights["fc.bias"].sum())]))
"""
    prefix = _NO_ROOT_POWERS if os.geteuid() == 0 else ()
    try:
        done = _python(script, *prefix)
    finally:
        for path in (root, *root.rglob("*")):
            path.chmod(path.stat().st_mode | 0o200)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("ERROR cannot write to the store") and len(lines) == 2
    assert json.loads(lines[1]) == [w0, 0.0]
