"""A store written by an earlier lmctrack is read by this one: its states load (by lmctrack and by
any MLflow client through the pyfunc loader), their lineage is followed, and the same commands
reuse its finished work instead of training again.

tests/stores/release-0.1.tar.gz was written by tests/stores/make_release_store.sh with lmctrack
at commit 6570c46, the last commit before the package moved into layer packages (engine/,
execution/, results/, config/): module paths changed, stored names must not."""

from __future__ import annotations

import json
import sqlite3
import tarfile
from contextlib import closing
from pathlib import Path

import mlflow
import numpy as np
import pytest
from test_cli import ok

import lmctrack as lmc
from lmctrack.workflows.data_files import write_mnist1d

pytestmark = pytest.mark.slow

ARCHIVE = Path(__file__).parent / "stores" / "release-0.1.tar.gz"
WRITTEN_AT = "/tmp/lmctrack-release-store"


def relocate(db: Path, old: str, new: str) -> None:
    """Rewrite the absolute paths an MLflow sqlite store keeps (artifact locations, sources)."""
    with closing(sqlite3.connect(db)) as con, con:
        tables = [
            row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type='table'")
        ]
        for table in tables:
            for _, column, kind, *_ in con.execute(f"PRAGMA table_info('{table}')"):
                if kind.upper().startswith(("VARCHAR", "TEXT")):
                    con.execute(
                        f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?)', (old, new)
                    )


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """The earlier release's project, unpacked and entered, with its data regenerated."""
    folder = tmp_path_factory.mktemp("release")
    with tarfile.open(ARCHIVE) as archive:
        archive.extractall(folder, filter="data")
    db = folder / ".lmctrack" / "mlflow.db"
    relocate(db, WRITTEN_AT, str(folder))
    params = folder / "params.yaml"
    params.write_text(params.read_text().replace(WRITTEN_AT, str(folder)))
    write_mnist1d(folder / "data", 1000)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield folder


def recorded(folder: Path, name: str) -> dict:
    return json.loads((folder / "out" / name).read_text())


def versions() -> list[str]:
    found = lmc.api.open_store().client.search_model_versions(max_results=1000)
    return sorted(f"models:/{v.name}/{v.version}" for v in found)


def test_its_states_load_and_predict_as_they_did(release):
    expected = recorded(release, "predictions.json")
    # W0, W10, W_T; two copies of W10; IMP's dense training, its mask and the mask's training
    assert len(expected["predictions"]) == 8
    mlflow.set_tracking_uri(f"sqlite:///{release / '.lmctrack' / 'mlflow.db'}")
    try:
        x = np.asarray(expected["input"], dtype=np.float32)
        for uri, predicted in expected["predictions"].items():
            network, info = lmc.load(uri)
            assert info.tags["role"]
            out = mlflow.pyfunc.load_model(uri).predict(x)
            np.testing.assert_allclose(np.asarray(out), np.asarray(predicted), rtol=0, atol=1e-6)
    finally:
        mlflow.set_tracking_uri(None)


def test_its_lineage_is_followed_from_a_copy_to_w0(release):
    train = recorded(release, "train/train.json")["states"]
    copy = recorded(release, "fork/fork.json")["copies"][0]
    node = lmc.lineage(copy)
    chain = []
    while node is not None:
        chain.append(node.info.uri)
        node = node.parents[0] if node.parents else None
    assert chain == [copy, train["W10"], train["W0"]]


def test_the_same_commands_reuse_its_finished_work(release):
    before = versions()
    train = ok("train", "-q")
    assert train["reused"] and train["states"] == recorded(release, "train/train.json")["states"]
    fork = ok("fork", "-q", "--run-id", train["run_id"], "--step", "10it", "--seeds", "2")
    assert fork["copies"] == recorded(release, "fork/fork.json")["copies"]
    assert "soup.test_error" in fork["headline"]  # measured for a fork made before soups
    imp = ok("imp", "-q", "--run-id", train["run_id"])
    assert imp["reused"] and imp["trainings"] == recorded(release, "imp/imp.json")["trainings"]
    assert versions() == before
