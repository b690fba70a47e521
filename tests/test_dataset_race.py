"""Runs that record the same new dataset at the same moment (a sweep's first trainings, ending
together): MLflow checks for the dataset, then inserts it, without a lock, so all but one insert
fail (sqlite: UNIQUE constraint failed; PostgreSQL: UniqueViolation on dataset_pk). lmctrack
tries the loser again, which then finds the dataset and links it: every run records it, once."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "deploy"))
import services  # noqa: E402

from lmctrack.store import Store  # noqa: E402
from lmctrack.store.inputs import DataRef  # noqa: E402

WRITERS, EXPERIMENTS = 8, 4
DATA = DataRef("mnist1d", "f" * 64)


@pytest.fixture(params=["sqlite", pytest.param("server", marks=pytest.mark.slow)])
def tracking_uri(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'mlflow.db'}"
        return
    (tmp_path / "artifacts").mkdir()
    db = f"sqlite:///{tmp_path / 'server.db'}"
    with (
        services.mlflow_server(db, tmp_path / "artifacts") as server,
        pytest.MonkeyPatch.context() as mp,
    ):
        for name, value in server.credentials.items():
            mp.setenv(name, value)
        yield server.url


def _end_together(stores: list[Store], experiment: str) -> tuple[list[str], list[str]]:
    """A run per store recording DATA, all ending (so recording it) at once: (run ids, errors)."""
    together, ids, failed = threading.Barrier(len(stores)), [], []

    def write(store: Store) -> None:
        try:
            with store.run(experiment, "copy") as run:
                run.log_dataset(DATA)
                ids.append(run.id)
                together.wait()
            store.settle()
        except Exception as error:  # the test reports it
            failed.append(f"{type(error).__name__}: {error}"[:300])

    threads = [threading.Thread(target=write, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return ids, failed


def test_runs_recording_one_new_dataset_at_once_all_record_it(tracking_uri: str) -> None:
    Store(tracking_uri)  # the schema, created once
    stores = [Store(tracking_uri) for _ in range(WRITERS)]  # a writer each, as processes
    for e in range(EXPERIMENTS):  # new experiments: the dataset is new to each
        ids, failed = _end_together(stores, f"race-{e}")
        assert failed == [] and len(ids) == WRITERS
        client = Store(tracking_uri).client
        for run_id in ids:
            inputs = client.get_run(run_id).inputs.dataset_inputs
            assert [i.dataset.name for i in inputs] == [DATA.name]
            assert DATA.fingerprint.startswith(inputs[0].dataset.digest)  # MLflow keeps 36
