"""The features the other end-to-end tests leave out, on real sqlite stores and tiny trainings:
the sparse sweep (`instability --imp`), one-shot IMP, IMP driven by another dataset
(`--prune-data`), resuming an interrupted copy training, `instability --mask`, `lmctrack ui`,
the `data` commands, and the analysis commands (`hessian`, `plane`, `plane-random`)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from datafiles import make_mnist_files
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_cli import invoke, ok, same
from test_workflows import PNG, ancestors

from lmctrack.config.params import DataConfig, ModelConfig, TrainConfig
from lmctrack.engine.data import generate_mnist1d, load_dataset, mnist1d_file
from lmctrack.engine.models import build_model, prunable_names
from lmctrack.engine.prune import full_mask, magnitude_prune
from lmctrack.engine.train import Noise, train
from lmctrack.execution.local import TrainJob, run_job
from lmctrack.workflows.fork import FORK_ARTIFACT
from lmctrack.workflows.fork import fork as run_fork
from lmctrack.workflows.imp import imp
from lmctrack.workflows.training_run import train_run

# End to end: real trainings, stores or subprocesses (seconds to minutes each).
pytestmark = pytest.mark.slow

SUBPROCESS_ENV = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {
    "NO_COLOR": "1",
    "DVC_NO_ANALYTICS": "1",
}


@pytest.fixture(scope="module")
def project(new_project):
    """One init, 2 copies, rewind steps 0it and 20it, 2 IMP levels; the working directory."""
    project = new_project("extras", instability={"inits": 1})
    with project.entered():
        yield project


@pytest.fixture(scope="module")
def trained(project) -> dict:
    return ok("train", "-q")


def direct(project, weights, mask, noise: Noise, dataset=None) -> dict[str, torch.Tensor]:
    """W20 (with `mask`) trained to T under `noise` by the engine alone."""
    ctx = project.context()
    p = ctx.params
    job = TrainJob("direct", "direct", p.model, p.train, noise, 20, 100, weights=weights, mask=mask)
    return run_job(job, dataset or ctx.dataset, ctx.device, None).weights


def kept(mask: dict[str, torch.Tensor]) -> int:
    return sum(int(m.sum()) for m in mask.values())


# ---- the sparse sweep: `lmctrack instability --imp` (Figures 6, 7, 9) -----------------------------


@pytest.fixture(scope="module")
def sparse(project, trained) -> dict:
    before = set(project.versions())
    result = ok("instability", "--imp", "-q", "--out", "outputs/sparse", "-s", "sparse.copies=2")
    return {"result": result, "new": sorted(set(project.versions()) - before)}


def test_sparse_sweep_rows_per_k_and_split_at_the_last_level(project, sparse):
    result = sparse["result"]
    rows = result["rows"]
    assert [(r["level"], r["k"], r["split"], r["barrier"]["n"]) for r in rows] == [
        (2, 0, "test", 1),
        (2, 20, "test", 1),
    ]
    for row in rows:
        assert row["density"] == pytest.approx(0.8**2, abs=1e-3)
        assert row["stable"] == (row["barrier"]["mean"] < 0.02)
        assert row["test_error"]["n"] == 2 and 0 < row["test_error"]["mean"] < 1
        assert row["matching"] == (row["drop"] < 0.002)
    assert [(e["level"], e["samples"]) for e in result["earliest"]] == [(2, 1)]
    assert result["claim_holds"] in (True, False) and "because" in result["claim"]
    out = project.folder / "outputs/sparse"
    for name in ("sparse_instability.png", "sparse_error.png", "earliest.png"):
        assert (out / name).read_bytes().startswith(PNG)
        assert project.store.run_artifact(result["run_id"], f"plots/{name}").is_file()
    assert json.loads((out / "sparse.json").read_text())["rows"] == rows
    metrics = json.loads((out / "sparse_metrics.json").read_text())
    assert metrics["claim_holds"] == result["claim_holds"]
    assert project.store.run_tags(result["run_id"])["kind"] == "sparse-instability"


def test_sparse_sweep_forks_the_subnetworks_and_rerun_reuses_it(project, sparse):
    store = project.store
    roles = {}
    for uri in sparse["new"]:
        roles.setdefault(store.describe(uri).tags["role"], []).append(uri)
    # IMP at k=0 and k=20 (one replicate, 2 levels, no baselines): per k the dense W_T, 2 masks,
    # 2 sparse W_T; the last level's subnetwork forked into 2 copies per k
    assert sorted((r, len(u)) for r, u in roles.items()) == [
        ("mask", 4),
        ("sparse", 4),
        ("trained", 2 + 4),
    ]
    copies = [u for u in roles["trained"] if store.describe(u).tags.get("copy") is not None]
    assert len(copies) == 4
    for uri in copies:
        (parent,) = store.describe(uri).parents
        assert parent in roles["mask"] and store.describe(parent).tags["level"] == "2"
        mask = store.load_state(parent).mask
        copy = store.load_state(uri)
        assert same(copy.mask, mask) and all((copy.weights[n][~mask[n]] == 0).all() for n in mask)

    before = project.versions()
    again = ok("instability", "--imp", "-q", "-s", "sparse.copies=2")
    assert project.versions() == before
    assert again["rows"] == sparse["result"]["rows"]
    assert again["run_id"] != sparse["result"]["run_id"]


# ---- one-shot IMP: `lmctrack imp --one-shot --density 0.3` ---------------------------------------


@pytest.fixture(scope="module")
def one_shot(project, trained) -> dict:
    return ok("imp", "--run-id", trained["run_id"], "--rewind", "20it", "--one-shot",
              "--density", 0.3, "-q", "--replicates", 1)  # fmt: skip


def levels_of(result: dict, replicate: int = 0) -> list[dict]:
    return sorted(
        (t for t in result["trainings"] if t["method"] == "imp" and t["replicate"] == replicate),
        key=lambda t: t["level"],
    )


def test_one_shot_prunes_the_dense_w_t_from_wk_to_the_density_in_one_level(
    project, trained, one_shot
):
    store, states = project.store, trained["states"]
    dense, level = levels_of(one_shot)
    assert (dense["level"], level["level"]) == (0, 1) and len(one_shot["rows"]) == 1
    mask = store.load_state(level["start"]).mask
    w_t = store.load_state(dense["trained"]).weights  # level 0: W20 trained to T, fresh noise
    prunable = prunable_names(project.context().template())
    assert sorted(mask) == sorted(prunable)
    total = sum(w_t[n].numel() for n in prunable)
    assert kept(mask) == round(0.3 * total)
    assert level["density"] == pytest.approx(kept(mask) / total, abs=1e-6)
    # global magnitude pruning of the dense W_T: every kept |w| is at least every pruned |w|
    magnitudes = {n: w_t[n].abs() for n in prunable}
    smallest_kept = min(float(magnitudes[n][mask[n]].min()) for n in prunable)
    largest_pruned = max(float(magnitudes[n][~mask[n]].max()) for n in prunable)
    assert smallest_kept >= largest_pruned
    assert same(store.load_state(level["start"]).weights, store.load_state(states["W20"]).weights)
    assert {dense["trained"], states["W20"], states["W0"]} <= ancestors(store, level["start"])
    assert level["start"] in ancestors(store, level["trained"])


# ---- IMP driven by another dataset: `lmctrack imp --prune-data FILE` -----------------------------


@pytest.fixture(scope="module")
def prune_data(project) -> Path:
    """The first 400 (normalised) MNIST-1D training examples: every class, another data order."""
    train = project.context().dataset.train
    path = project.folder / "prune.safetensors"
    save_file({"x_train": train.x[:400].contiguous(), "y_train": train.y[:400].contiguous()},
              str(path))  # fmt: skip
    return path


def test_prune_data_drives_the_mask_search_and_the_subnetwork_trains_on_the_real_data(
    project, trained, sparse, prune_data
):
    store, states = project.store, trained["states"]
    args = ["imp", "--run-id", trained["run_id"], "--rewind", "20it", "--levels", 1, "-q"]
    result = ok(*args, "--replicates", 1, "--prune-data", prune_data.name)
    dense, level = levels_of(result)
    mask = store.load_state(level["start"]).mask
    (search_uri,) = [p for p in store.describe(level["start"]).parents if p != states["W20"]]
    search = store.describe(search_uri)
    assert search.tags["role"] == "search" and search.parents == [states["W20"]]

    # the mask is the magnitude pruning of W20 trained on the prune data, not of the dense W_T
    search_ds = load_dataset(DataConfig(name="tensors", path=str(prune_data)))
    w20 = store.load_state(states["W20"]).weights
    seed = int(search.tags["data_order_seed"])
    searched = direct(project, w20, None, Noise(seed, seed), search_ds)
    assert same(store.load_state(search_uri).weights, searched)
    prunable = prunable_names(project.context().template())
    assert same(mask, magnitude_prune(searched, full_mask(w20, prunable), 0.2, "global"))
    real = imp(project.context("imp.replicates=1", "imp.levels=1"), states["W20"])
    real_mask = store.load_state(real.levels()[1].start).mask
    assert kept(mask) == kept(real_mask) and not same(mask, real_mask)

    # the sparse W_T trained on the real data from (W20, m)
    seed = level["noise_seed"]
    assert same(
        store.load_state(level["trained"]).weights, direct(project, w20, mask, Noise(seed, seed))
    )
    digests = {
        d.dataset.name: d.dataset.digest
        for run in (search.run_id, store.describe(level["trained"]).run_id)
        for d in store.client.get_run(run).inputs.dataset_inputs
    }
    assert digests == {
        "mnist1d": project.context().dataset_fingerprint[:36],
        prune_data.stem: search_ds.fingerprint()[:36],  # a file no run made: by its stem
    }

    # params.yaml's imp.prune_data names the same work
    before = project.versions()
    again = ok(*args, "--replicates", 1, "-s", "imp.prune_data.name=tensors",
               "-s", f"imp.prune_data.path={prune_data}")  # fmt: skip
    assert again["reused"] and again["run_id"] == result["run_id"]
    assert project.versions() == before


def test_bad_prune_data_is_one_clear_line(project, trained):
    """A missing file, and data the network cannot take (30 inputs, 3 classes)."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(20, 30, generator=g), torch.arange(20) % 3
    save_file({"x_train": x, "y_train": y}, str(project.folder / "narrow.safetensors"))
    before = project.versions()
    for name, message in (
        ("nowhere.safetensors", "--prune-data nowhere.safetensors not found"),
        ("narrow.safetensors", "inputs (30,) and 3 classes but the network takes (40,)"),
    ):
        result = invoke("imp", "--run-id", trained["run_id"], "--rewind", "20it", "--levels", 1,
                        "--prune-data", name)  # fmt: skip
        assert result.exit_code != 0 and "Traceback" not in result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), result.output
        assert message in lines[0]
    assert project.versions() == before


# ---- `lmctrack instability --mask URI` ------------------------------------------------------------


def test_instability_with_a_mask_prunes_every_wk_and_its_copies(project, one_shot):
    mask_uri = levels_of(one_shot)[1]["start"]
    mask = project.store.load_state(mask_uri).mask
    result = ok("instability", "--mask", mask_uri, "-q", "--out", "outputs/masked")
    assert [(r["k"], r["split"], r["barrier"]["n"]) for r in result["rows"]] == [
        (0, "test", 1),
        (20, "test", 1),
    ]
    for run_id in result["fork_runs"]:
        fork = json.loads(project.store.run_artifact(run_id, FORK_ARTIFACT).read_text())
        assert fork["mask"] == mask_uri and len(fork["copies"]) == 2
        for uri in fork["copies"]:
            copy = project.store.load_state(uri)
            assert same(copy.mask, mask)
            assert all((copy.weights[n][~mask[n]] == 0).all() for n in mask)
            assert mask_uri in project.store.describe(uri).parents


# ---- the analysis commands ----------------------------------------------------------------------


def test_hessian_plane_and_plane_random_commands(project, trained):
    states = trained["states"]
    hessian = ok("hessian", states["W_T"], "--samples", 2, "--limit", 200)
    assert {"uri", "run_id", "summary", "diagonal", "definition", "examples"} <= set(hessian)
    assert hessian["examples"] == 200 and hessian["density"] is None
    assert {"mean", "max", "min", "trace"} <= set(hessian["summary"])

    plane = ok("plane", states["W20"], states["W_T"], states["W0"], "--grid", 3)
    assert {"run_id", "points", "xs", "ys", "error", "loss", "summary"} <= set(plane)
    assert sorted(plane["points"]) == ["a", "b", "origin"]
    assert len(plane["error"]) == len(plane["ys"]) and len(plane["error"][0]) == len(plane["xs"])
    assert {"distance_a", "distance_b", "angle_ab_degrees"} <= set(plane["summary"])

    around = ok("plane-random", states["W_T"], "--grid", 3, "--span", 0.5)
    assert sorted(around["points"]) == ["center"] and around["params"]["span"] == 0.5
    assert len(around["xs"]) == len(around["ys"]) == 3
    # the centre of the grid is W_T itself: its error is W_T's test error, as on the plane above
    assert around["points"]["center"]["error"] == plane["points"]["a"]["error"]


# ---- resuming an interrupted copy training --------------------------------------------------------


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_train_resumes_bit_identically_from_its_last_checkpoint(data_root, tmp_path, optimizer):
    ds = load_dataset(DataConfig(name="mnist1d", num_samples=1000, root=str(data_root)))
    cfg = TrainConfig(optimizer=optimizer, lr=0.01, steps="60it")

    def network():
        return build_model(ModelConfig(name="mnist1d_cnn", width=8), 10, (40,), 0)

    mask = full_mask(network().state_dict(), ["features.conv2.weight"])
    mask["features.conv2.weight"][:, :, 0] = False
    kwargs = {"start": 10, "stop": 60, "noise": Noise(3, 4), "mask": mask}
    whole = network()
    train(whole, ds, cfg, **kwargs)

    def interrupt(step, net):
        raise KeyboardInterrupt

    checkpoint = tmp_path / "train.safetensors"
    with pytest.raises(KeyboardInterrupt):
        train(network(), ds, cfg, **kwargs, checkpoint=checkpoint, checkpoint_every=15,
              at_steps=[40], on_step=interrupt)  # fmt: skip
    with safe_open(str(checkpoint), framework="pt") as f:
        assert f.metadata()["step"] == "30"  # the last one before the interruption
    resumed = network()
    log = train(resumed, ds, cfg, **kwargs, checkpoint=checkpoint, checkpoint_every=15)
    assert log.resumed_from == 30 and log.steps == 30
    assert same(resumed.state_dict(), whole.state_dict())


RESUME = {  # the engine checkpoints every 500 steps: the copies are interrupted in 500..700
    "model": {"name": "mnist1d_cnn", "width": 8},
    "train": {"steps": "700it", "rewind_steps": ["20it"]},
}


def test_an_interrupted_fork_resumes_to_the_copies_of_an_uninterrupted_one(new_project):
    interrupted, reference = new_project("resume", **RESUME), new_project("resume_ref", **RESUME)
    run = train_run(interrupted.context())
    before = interrupted.versions()
    checkpoints = interrupted.store.root / "checkpoints"
    command = [sys.executable, "-m", "lmctrack", "fork", "--run-id", run.run_id, "--step", "20it",
               "--seeds", "2", "-q"]  # fmt: skip
    proc = subprocess.Popen(
        command,
        cwd=interrupted.folder,
        env=SUBPROCESS_ENV,
        start_new_session=True,  # its own process group, as a terminal's Ctrl-C would signal
        # a shell running this suite in the background ignores SIGINT, and children inherit that
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not list(checkpoints.glob("*/train.safetensors")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("error: interrupted; run the same command")
    left = list(checkpoints.glob("*/train.safetensors"))
    assert left and all(safe_open(str(p), framework="pt").metadata()["step"] == "500" for p in left)
    assert interrupted.versions() == before  # no copy registered

    resumed = run_fork(interrupted.context(), run.at(20), seeds=[1, 2])
    assert not list(checkpoints.glob("*/train.safetensors"))  # registered, then discarded
    ref_run = train_run(reference.context())
    expected = run_fork(reference.context(), ref_run.at(20), seeds=[1, 2])
    for got, want in zip(resumed.copies, expected.copies, strict=True):
        assert same(
            interrupted.store.load_state(got).weights, reference.store.load_state(want).weights
        )
    assert resumed.barriers("test") == expected.barriers("test")


# ---- `lmctrack ui` ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ui_serves_mlflow_on_localhost_and_stops_with_lmctrack(project, trained, tmp_path):
    port = free_port()
    log = (tmp_path / "ui.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmctrack", "ui", "--port", str(port)],
        cwd=project.folder,
        env=SUBPROCESS_ENV,
        start_new_session=True,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline, page = time.monotonic() + 240, None
        while page is None:
            if proc.poll() is not None:
                pytest.fail(
                    f"lmctrack ui exited ({proc.returncode}): {(tmp_path / 'ui.log').read_text()}"
                )
            if time.monotonic() > deadline:
                pytest.fail(f"no answer in 240 s: {(tmp_path / 'ui.log').read_text()}")
            try:
                page = fetch(f"http://127.0.0.1:{port}/")
            except (urllib.error.URLError, ConnectionError, TimeoutError):  # not up yet
                time.sleep(0.5)
        assert "<title>MLflow</title>" in page
        # the server reads this project's store: its registry holds the states trained above
        models = json.loads(
            fetch(f"http://127.0.0.1:{port}/api/2.0/mlflow/registered-models/search")
        )
        assert [m["name"] for m in models["registered_models"]] == ["mnist1d_cnn_mnist1d"]
        proc.terminate()  # lmctrack alone, as `kill PID` would: the server must stop with it
        proc.wait(timeout=120)
        deadline = time.monotonic() + 120
        while _group_alive(proc.pid):
            assert time.monotonic() < deadline, "MLflow server still running after SIGTERM"
            time.sleep(0.2)
    finally:
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return response.read().decode()


def _group_alive(pgid: int) -> bool:
    """Whether a process of the group still runs (zombies waiting for a reaper do not count)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended while we looked
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


# ---- the data commands --------------------------------------------------------------------------


def test_data_mnist1d_writes_the_file_load_dataset_reads(tmp_path):
    root = tmp_path / "data"
    result = invoke("data", "mnist1d", "--root", root, "--samples", 500)
    assert result.exit_code == 0, result.output
    path = mnist1d_file(root.resolve(), 500)
    assert result.stdout.strip() == str(path)
    written, generated = load_file(str(path)), generate_mnist1d(500)
    assert same(written, generated)
    on_disk = load_dataset(DataConfig(name="mnist1d", num_samples=500, root=str(root)))
    in_memory = load_dataset(DataConfig(name="mnist1d", num_samples=500, root=str(tmp_path / "no")))
    assert on_disk.fingerprint() == in_memory.fingerprint()


def test_data_import_mnist_places_it_and_dvc_tracks_it(tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    repo = tmp_path / "repo"
    repo.mkdir()
    for args in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(args, cwd=repo, check=True, capture_output=True)
    arrays = make_mnist_files(tmp_path / "download", compress=True)
    result = invoke("data", "import", "mnist", tmp_path / "download", "--root", repo / "data")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(repo / "data" / "mnist")
    raw = repo / "data/mnist/MNIST/raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(
        f"{s}-{k}-ubyte" for s in ("train", "t10k") for k in ("images-idx3", "labels-idx1")
    )
    dvc_file = repo / "data" / "mnist.dvc"
    assert "path: mnist" in dvc_file.read_text()
    assert "/mnist" in (repo / "data" / ".gitignore").read_text()
    ds = load_dataset(DataConfig(name="mnist", root=str(repo / "data")))
    assert ds.num_examples("train") == 12 and ds.num_examples("test") == 6
    assert ds.train.y.tolist() == arrays["train_labels"].tolist()
