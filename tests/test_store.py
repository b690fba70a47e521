"""The MLflow store on a real sqlite database: states round-trip, lineage, URIs, errors, concurrency."""

from __future__ import annotations

import json
import multiprocessing
import os
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd
import pytest
import torch

from lmctrack.engine.state import WEIGHTS_FILE, State
from lmctrack.errors import LmcError
from lmctrack.store import Store, default_tracking_uri, project_root
from lmctrack.store.inputs import DataRef

MODEL = "lenet_tiny"


def _state(seed: int, masked: bool = False) -> State:
    """A small network's full state_dict: weights, BatchNorm buffers (float and int64), mask."""
    g = torch.Generator().manual_seed(seed)
    weights = {
        "fc.weight": torch.randn(8, 4, generator=g),
        "fc.bias": torch.randn(8, generator=g),
        "bn.running_mean": torch.randn(8, generator=g),
        "bn.running_var": torch.rand(8, generator=g),
        "bn.num_batches_tracked": torch.tensor(37, dtype=torch.int64),
    }
    mask = {"fc.weight": torch.rand(8, 4, generator=g) > 0.5} if masked else None
    return State(weights, mask)


def _copy_db(source: Path, target: Path) -> None:
    """A ready-made schema (MLflow's migrations take seconds), copied with sqlite's backup API."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(source)) as src, closing(sqlite3.connect(target)) as dst:
        src.backup(dst)


@pytest.fixture(scope="module")
def raced(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[list[str]]]:
    """3 processes open a NEW store at once (the schema creation races too) and each registers
    3 versions of the same model."""
    db = tmp_path_factory.mktemp("raced") / "mlflow.db"
    workers = 3
    # Fresh interpreters (no inherited connections), forked from one server that imported
    # torch and MLflow once: importing them per worker takes many seconds on a busy machine.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "lmctrack.store", __name__])
    with ctx.Pool(workers) as pool:
        results = pool.starmap(_register_in_child, [(f"sqlite:///{db}", w) for w in range(workers)])
    return db, results


@pytest.fixture(scope="module")
def store(template_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Store:
    db = tmp_path_factory.mktemp("store") / "mlflow.db"
    _copy_db(template_db, db)
    return Store(f"sqlite:///{db}")


@pytest.fixture(scope="module")
def chain(store: Store) -> dict[str, str]:
    """W0 -> Wk -> W_T registered by one run, each the parent of the next, plus a mask."""
    with store.run("exp", "train", params={"train": {"lr": 0.1}}, tags={"kind": "train"}) as run:
        seeds = {"init_seed": "1", "data_order_seed": "2", "augment_seed": "3", "config_hash": "h1"}
        data = DataRef("mnist1d", "f" * 64)
        w0 = run.save_state(
            _state(0), model_name=MODEL, role="init", step=0, tags=seeds, dataset=data
        )
        wk = run.save_state(
            _state(1),
            model_name=MODEL,
            role="rewind",
            step=100,
            tags=seeds,
            parents=[w0],
            dataset=data,
        )
        wt = run.save_state(
            _state(2),
            model_name=MODEL,
            role="trained",
            step=3000,
            tags=seeds,
            parents=[wk],
            dataset=data,
        )
        mask = run.save_state(
            _state(3, masked=True),
            model_name=MODEL,
            role="mask",
            step=None,
            tags={"level": "1"},
            parents=[f"runs:/{run.id}/trained-3000"],  # recorded as the canonical models:/ URI
        )
    return {"w0": w0, "wk": wk, "wt": wt, "mask": mask, "run_id": run.id}


def _count_versions(store: Store) -> int:
    return len(store.client.search_model_versions(max_results=1000))


def test_round_trip_is_bit_identical_with_buffers_and_mask(store: Store, chain: dict) -> None:
    original = _state(3, masked=True)
    loaded = store.load_state(chain["mask"])
    assert loaded.weights.keys() == original.weights.keys()
    for name, tensor in original.weights.items():
        assert loaded.weights[name].dtype == tensor.dtype
        assert torch.equal(loaded.weights[name], tensor), name
    assert loaded.mask is not None and loaded.mask["fc.weight"].dtype == torch.bool
    assert torch.equal(loaded.mask["fc.weight"], original.mask["fc.weight"])
    assert store.load_state(chain["w0"]).mask is None


def test_version_tags_parents_and_run_links_are_recorded(store: Store, chain: dict) -> None:
    wk = store.describe(chain["wk"])
    assert wk.tags["role"] == "rewind" and wk.tags["step"] == "100"
    assert (wk.tags["init_seed"], wk.tags["data_order_seed"], wk.tags["augment_seed"]) == (
        "1",
        "2",
        "3",
    )
    assert wk.tags["config_hash"] == "h1"
    assert wk.parents == [chain["w0"]] and wk.run_id == chain["run_id"]
    mask = store.describe(chain["mask"])
    assert "step" not in mask.tags
    assert float(mask.tags["density"]) == pytest.approx(_state(3, masked=True).density())
    raw = store.client.get_model_version(MODEL, str(mask.version)).tags
    assert json.loads(raw["lmctrack.parents"]) == [chain["wt"]]

    run = store.client.get_run(chain["run_id"])
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["mnist1d"]  # logged once
    parents = {store.describe(chain[k]).model_id for k in ("w0", "wk", "wt")}
    assert {m.model_id for m in run.inputs.model_inputs} == parents
    assert len(run.outputs.model_outputs) == 4
    assert (
        run.data.params["train.lr"] == "0.1" and store.run_tags(run.info.run_id)["kind"] == "train"
    )


def test_every_uri_form_resolves_to_the_same_state(store: Store, chain: dict) -> None:
    store.set_alias(chain["wk"], "rewound")
    expected = store.load_state(chain["wk"]).weights
    for uri in (chain["wk"], f"models:/{MODEL}@rewound", f"runs:/{chain['run_id']}/rewind-100"):
        assert store.describe(uri).uri == chain["wk"]
        loaded = store.load_state(uri).weights
        assert all(torch.equal(loaded[k], expected[k]) for k in expected)


def test_runs_uri_reads_a_plain_artifact_folder(store: Store, tmp_path: Path) -> None:
    from lmctrack.engine.state import save_state

    save_state(_state(7), tmp_path / "exported")
    with store.run("exp", "export") as run:
        run.log_file(tmp_path / "exported" / WEIGHTS_FILE, "exported")
    loaded = store.load_state(f"runs:/{run.id}/exported")
    assert torch.equal(loaded.weights["fc.weight"], _state(7).weights["fc.weight"])


def test_lineage_follows_three_levels_and_cuts_cycles(store: Store, chain: dict) -> None:
    node = store.lineage(chain["wt"])
    assert node.info.uri == chain["wt"]
    assert [p.info.uri for p in node.parents] == [chain["wk"]]
    assert [p.info.uri for p in node.parents[0].parents] == [chain["w0"]]
    assert node.parents[0].parents[0].parents == []

    with store.run("exp", "cycle") as run:
        a = run.save_state(_state(8), model_name="cyclic", role="init", step=0, tags={})
        b = run.save_state(
            _state(9), model_name="cyclic", role="trained", step=1, tags={}, parents=[a]
        )
    store.client.set_model_version_tag("cyclic", "1", "lmctrack.parents", json.dumps([b]))
    fresh = Store(store.tracking_uri)  # no cached descriptions
    top = fresh.lineage(b)
    assert top.parents[0].info.uri == a and top.parents[0].parents == []


def test_run_queries(store: Store, chain: dict) -> None:
    states = store.run_states(chain["run_id"])
    assert [s.uri for s in states] == [chain[k] for k in ("w0", "wk", "wt", "mask")]
    with store.run("exp", "sweep", tags={"config_hash": "sweep1"}) as parent:
        with parent.child("copy0", params={"seed": 0}) as child:
            child.log_metrics({"loss": 2.0}, step=0)
            child.log_metrics({"loss": 1.0}, step=1)
            assert store.run_metrics(child.id) == {"loss": 1.0}  # buffered, flushed on read
            child.log_curve("barrier", [0.0, 0.3, 0.1])
            child.log_json({"barrier": 0.3}, "result.json")
            child.log_table([{"alpha": 0.0, "error": 0.1}, {"alpha": 1.0}], "curve.json")
        with store.run("exp", "copy1", parent=parent) as second:
            pass
    assert store.child_runs(parent.id) == [child.id, second.id]
    history = store.client.get_metric_history(child.id, "barrier")
    assert [(m.step, m.value) for m in history] == [(0, 0.0), (1, 0.3), (2, 0.1)]
    assert json.loads(store.run_artifact(child.id, "result.json").read_text()) == {"barrier": 0.3}
    table = json.loads(store.run_artifact(child.id, "curve.json").read_text())
    assert table == {"columns": ["alpha", "error"], "data": [[0.0, 0.1], [1.0, None]]}
    # found and read as MLflow's load_table does: the run's tag, then pandas' split layout
    listed = """tags.mlflow.loggedArtifacts LIKE '%"path"%:%"curve.json",%"type"%:%"table"%'"""
    assert [r.info.run_id for r in store.client.search_runs([child.experiment_id], listed)] == [
        child.id
    ]
    read = pd.read_json(store.run_artifact(child.id, "curve.json"), orient="split")
    assert read["alpha"].tolist() == [0.0, 1.0]
    assert read["error"].iloc[0] == 0.1 and read["error"].isna().iloc[1]
    assert store.client.get_run(child.id).data.tags["mlflow.parentRunId"] == parent.id


def test_find_run_returns_only_finished_runs(store: Store) -> None:
    with store.run("idem", "ok", tags={"config_hash": "c0ffee"}) as done:
        pass
    with (
        pytest.raises(RuntimeError),
        store.run("idem", "bad", tags={"config_hash": "c0ffee"}) as bad,
    ):
        raise RuntimeError("training diverged")
    assert store.find_run("idem", "c0ffee") == done.id
    assert store.find_run("idem", "c0ffee", status="FAILED") == bad.id
    assert store.find_run("idem", "other") is None
    assert store.find_run("no_such_experiment", "c0ffee") is None


def test_failed_and_interrupted_runs_are_marked(store: Store) -> None:
    with pytest.raises(ValueError), store.run("exp", "fails") as failed:
        raise ValueError("boom")
    with pytest.raises(KeyboardInterrupt), store.run("exp", "stopped") as stopped:
        raise KeyboardInterrupt
    assert store.client.get_run(failed.id).info.status == "FAILED"
    assert store.client.get_run(stopped.id).info.status == "KILLED"


@pytest.mark.parametrize(
    ("uri", "problem", "fix"),
    [
        ("lenet_tiny/1", "not a state URI", "write models:/<name>/<version>"),
        ("models:/lenet_tiny", "not a state URI", "write models:/<name>/<version>"),
        ("models:/lenet_tiny/999", "does not exist", "pick an existing version"),
        ("models:/no_such_model/1", "no registered model", "check the name or the store"),
        ("models:/lenet_tiny@missing", "no alias", "use an existing alias or a version"),
        (
            "runs:/0123456789abcdef0123456789abcdef/init-0",
            "does not exist",
            "copy the run id from lmctrack's output",
        ),
        ("RUN_ID/nothing_here", "holds no lmctrack state", "that run's states are: init-0"),
    ],
)
def test_bad_uris_are_one_line_errors_that_name_the_fix_and_delete_nothing(
    store: Store, chain: dict, uri: str, problem: str, fix: str
) -> None:
    uri = uri.replace("RUN_ID", f"runs:/{chain['run_id']}")
    before = _count_versions(store)
    with pytest.raises(LmcError) as err:
        store.load_state(uri)
    message = str(err.value)
    assert problem in message and fix in message and "\n" not in message
    assert _count_versions(store) == before
    assert store.load_state(chain["w0"]).weights.keys() == _state(0).weights.keys()


def test_corrupted_safetensors_is_an_error_and_keeps_the_file(store: Store) -> None:
    with store.run("exp", "corrupt") as run:
        uri = run.save_state(_state(5), model_name="corruptible", role="init", step=0, tags={})
    location = store.client.get_logged_model(store.describe(uri).model_id).artifact_location
    folder = Path(urlparse(location).path)
    (folder / WEIGHTS_FILE).write_bytes(b"\x00garbage, not safetensors")
    with pytest.raises(LmcError, match="corrupted") as err:
        store.load_state(uri)
    assert uri in str(err.value) and "\n" not in str(err.value)
    assert (folder / WEIGHTS_FILE).exists() and store.describe(uri).version == 1


def test_quiet_no_banners_or_warnings(store: Store, capfd: pytest.CaptureFixture) -> None:
    with store.run("exp", "quiet") as run:
        uri = run.save_state(_state(6), model_name=MODEL, role="init", step=0, tags={})
        run.log_metrics({"x": 1.0})
        run.log_json({"a": 1}, "a.json")
    store.load_state(uri)
    store.run_artifact(run.id, "a.json")
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def _register_in_child(uri: str, worker: int) -> list[str]:
    store = Store(uri)
    uris = []
    with store.run("concurrent", f"worker{worker}") as run:
        for i in range(3):
            state = _state(10 * worker + i)
            uris.append(run.save_state(state, model_name="shared", role="trained", step=i, tags={}))
            run.log_metrics({"i": float(i)}, step=i)
    return uris


@pytest.mark.slow
def test_concurrent_writers_on_a_new_store_all_succeed(raced: tuple[Path, list]) -> None:
    db, results = raced
    uris = [u for worker in results for u in worker]
    store = Store(f"sqlite:///{db}")
    assert sorted(store.describe(u).version for u in uris) == list(range(1, len(uris) + 1))
    runs = [{store.describe(u).run_id for u in worker} for worker in results]
    assert all(len(r) == 1 for r in runs) and len(set.union(*runs)) == len(results)
    for w, worker in enumerate(results):
        loaded = store.load_state(worker[2])
        assert torch.equal(loaded.weights["fc.weight"], _state(10 * w + 2).weights["fc.weight"])


def test_project_root_rules(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    (project / "src" / "deep").mkdir(parents=True)
    (project / "params.yaml").write_text("{}")
    assert project_root(project / "src" / "deep") == project
    queued = project / ".dvc" / "tmp" / "exps" / "tmpabc123" / "sub"
    queued.mkdir(parents=True)
    (queued.parent / "params.yaml").write_text("{}")  # the temp copy has its own params.yaml
    assert project_root(queued) == project
    assert default_tracking_uri(queued) == f"sqlite:///{project}/.lmctrack/mlflow.db"


def test_default_location_env_override_and_explicit_uri(
    template_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "proj"
    (project / "work").mkdir(parents=True)
    (project / "dvc.yaml").write_text("stages: {}\n")
    _copy_db(template_db, project / ".lmctrack" / "mlflow.db")
    monkeypatch.chdir(project / "work")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    local = Store()
    assert local.tracking_uri == f"sqlite:///{project}/.lmctrack/mlflow.db"
    assert local.root == project / ".lmctrack"
    with local.run("loc", "r") as run:
        uri = run.save_state(_state(4), model_name="located", role="init", step=0, tags={})
    assert list((project / ".lmctrack" / "artifacts").rglob(WEIGHTS_FILE))
    assert local.checkpoint_dir("abc123") == project / ".lmctrack" / "checkpoints" / "abc123"
    argv = local.ui_command(5001)
    assert argv[argv.index("--backend-store-uri") + 1] == local.tracking_uri
    assert argv[argv.index("--host") + 1] == "127.0.0.1"  # never listens beyond this machine
    assert argv[argv.index("--port") + 1] == "5001"

    other = tmp_path / "elsewhere" / "mlflow.db"
    _copy_db(template_db, other)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{other}")
    from_env = Store()
    assert from_env.tracking_uri == f"sqlite:///{other}"
    with pytest.raises(LmcError, match="no registered model"):
        from_env.load_state(uri)
    assert from_env.checkpoint_dir("k") == other.parent / "checkpoints" / "k"
    explicit = Store(local.tracking_uri)
    assert explicit.tracking_uri == local.tracking_uri and explicit.describe(uri).uri == uri
    with pytest.raises(LmcError, match="checkpoint key"):
        local.checkpoint_dir("../escape")


def test_a_run_that_reads_states_lists_them_as_model_inputs(store: Store, chain: dict) -> None:
    with store.run("readers", "interpolate") as run:
        run.log_input_states([chain["wt"], chain["wk"]])
    inputs = store.client.get_run(run.id).inputs.model_inputs
    expected = {store.describe(chain[k]).model_id for k in ("wt", "wk")}
    assert {m.model_id for m in inputs} == expected
    with pytest.raises(LmcError), store.run("readers", "bad") as bad:
        bad.log_input_states(["models:/nope/1"])


def test_search_states_filters_on_tags_and_model_newest_first(store: Store, chain: dict) -> None:
    found = store.search_states(model=MODEL, config_hash="h1")
    assert [s.uri for s in found] == [chain["wt"], chain["wk"], chain["w0"]]
    assert [s.uri for s in store.search_states(role="rewind", step=100)] == [chain["wk"]]
    assert store.search_states(model="no_such_model", role="rewind") == []
    with store.run("search", "two") as run:
        for step in (1, 2):
            run.save_state(_state(20 + step), model_name="searched", role="init", step=0, tags={})
    store.client.set_model_version_tag("searched", "2", "lmctrack.corrupt", "true")
    fresh = Store(store.tracking_uri)
    assert [s.uri for s in fresh.search_states(model="searched")] == ["models:/searched/1"]
    for bad in ({"role": "it's"}, {"bad key": "x"}):
        with pytest.raises(LmcError, match="search|tag"):
            store.search_states(**bad)


def test_experiments_get_the_training_kind_and_runs_their_cost(store: Store) -> None:
    kind = ("mlflow.experimentKind", "custom_model_development")
    store.client.create_experiment("made_before")
    with store.run("made_before", "reader") as run:
        run.log_dataset(DataRef("mnist1d", "e" * 64))
        run.log_dataset(DataRef("mnist1d", "e" * 64))
        busy, began = sum(os.times()[:2]), time.monotonic()  # the clocks the cost reads
        # CPU work the run's cost must count; the process's other threads can add CPU time
        # faster than the wall clock runs, so both clocks are waited for.
        while sum(os.times()[:2]) - busy < 0.06 or time.monotonic() - began < 0.06:
            pass
    for name in ("made_before", "exp"):
        tags = store.client.get_experiment_by_name(name).tags
        assert tags.get(kind[0]) == kind[1], name
    recorded = store.client.get_run(run.id)
    assert [d.dataset.name for d in recorded.inputs.dataset_inputs] == ["mnist1d"]
    cost = recorded.data.metrics
    assert cost["cost.cpu_seconds"] >= 0.05
    assert cost["cost.wall_seconds"] >= 0.05
    assert recorded.data.tags["lmctrack.cost.device"] == "cpu"


def test_a_version_describes_itself_in_words_with_links_to_its_parent_and_run(
    store: Store, chain: dict
) -> None:
    wt, wk = store.describe(chain["wt"]), store.describe(chain["wk"])
    page = store.client.get_model_version(MODEL, str(wt.version)).description
    run = store.client.get_run(chain["run_id"]).info
    assert page == (
        f"trained of init seed 1, from [rewind = version {wk.version}]"
        f"(#/models/{MODEL}/versions/{wk.version}), trained to 3000 it; made by "
        f"[this run](#/experiments/{run.experiment_id}/runs/{run.run_id})."
    )
    w0 = store.client.get_model_version(MODEL, str(store.describe(chain["w0"]).version))
    assert w0.description.startswith("init of init seed 1, at step 0 it; made by [this run]")


def test_experiments_open_on_the_shared_view_of_the_papers_columns(store: Store) -> None:
    """The tag MLflow's `?viewStateShareKey=lmctrack` link reads: the barrier column, k, and
    the barrier against k."""
    tags = store.client.get_experiment_by_name("exp").tags
    view = json.loads(tags["mlflow.sharedViewState.lmctrack"])
    assert {"params.`k`", "metrics.`test.error_barrier.mean`"} <= set(view["selectedColumns"])
    chart = view["compareRunCharts"][0]
    assert (chart["xaxis"]["key"], chart["yaxis"]["key"]) == ("k", "test.error_barrier.mean")
