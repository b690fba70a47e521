"""What one registered state asks of a tracking server, counted against a real `mlflow server`
(sqlite in a temp folder, proxied artifacts, 127.0.0.1; deploy/services.py starts it): the HTTP
requests of one run that registers a state with a parent, a dataset and its architecture, as a
sweep's copy run does, and everything that registration records is still there.

The budget is what the cut reached (benchmarks/server_requests.py gives the whole sweep's count
per state): a change that adds requests to a registration fails here, not silently on a cluster.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "deploy"))
sys.path.insert(0, str(ROOT / "benchmarks"))
import services  # noqa: E402
from server_requests import Requests  # noqa: E402

from lmctrack.engine.state import State  # noqa: E402
from lmctrack.store import Store  # noqa: E402
from lmctrack.store.inputs import DataRef  # noqa: E402

ARCH = {"name": "mnist1d_cnn", "width": None, "num_classes": 10, "input_shape": [40]}
# one run (create, one batch of its params, metrics and tags, inputs, outputs, end), one state
# (logged model, finalization, version, the search for an earlier one by key) and, when the
# store settles, the searches for copies of re-sent creations (runs, logged models: the versions
# made of them are listed on them): 11; and the state's 6 files when the server proxies them
BUDGET = {"proxied": 17, "direct": 11}


@pytest.fixture(scope="module", params=["proxied", "direct"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """The server proxying files, or clients writing them into its artifact root themselves."""
    folder = tmp_path_factory.mktemp("server")
    (folder / "artifacts").mkdir()
    db, proxied = f"sqlite:///{folder / 'mlflow.db'}", request.param == "proxied"
    with (
        services.mlflow_server(db, folder / "artifacts", proxied=proxied) as s,
        pytest.MonkeyPatch.context() as mp,
    ):
        for name, value in s.credentials.items():  # signed in: what a login costs is counted
            mp.setenv(name, value)
        s.files = request.param
        yield s


def _state(seed: int) -> State:
    generator = torch.Generator().manual_seed(seed)
    return State({"w": torch.randn(10, 40, generator=generator), "b": torch.zeros(10)})


def test_one_registration_sends_at_most_its_budget_of_requests(server) -> None:
    store = Store(server.url)
    with store.run("budget", "parent") as run:
        parent = run.save_state(
            _state(0), model_name="budget", role="W0", step=0, tags={}, key="budget-0"
        )
    store.settle()
    with Requests() as sent:
        with store.run("budget", "child", params={"lr": 0.1}) as run:
            run.log_metrics({"loss": 0.5}, step=1)
            uri = run.save_state(
                _state(1),
                model_name="budget",
                role="trained",
                step=100,
                tags={"copy": "1"},
                parents=[parent],
                dataset=DataRef("mnist1d", "f" * 64),
                key="budget-1",
                architecture=ARCH,
            )
        store.settle()
    budget = BUDGET[server.files]
    assert sent.count <= budget, f"{sent.count} requests for one registration: {dict(sent.sent)}"
    with Requests() as read:  # what this process registered, it reads back from memory
        assert torch.equal(store.load_state(uri).weights["w"], _state(1).weights["w"])
    assert read.count == 0
    # what the registration records, read by another client
    other = Store(server.url)
    info = other.describe(uri)
    assert (info.parents, info.tags["copy"], info.architecture["name"]) == (
        [parent],
        "1",
        "mnist1d_cnn",
    )
    assert torch.equal(other.load_state(uri).weights["w"], _state(1).weights["w"])
    seen = other.client.get_run(run.id)
    assert (seen.info.status, seen.data.params, seen.data.metrics["loss"]) == (
        "FINISHED",
        {"lr": "0.1"},
        0.5,
    )
    assert [d.dataset.name for d in seen.inputs.dataset_inputs] == ["mnist1d"]
    assert [m.model_id for m in seen.inputs.model_inputs] == [other.describe(parent).model_id]
    assert [m.model_id for m in seen.outputs.model_outputs] == [info.model_id]
    model = other.client.get_logged_model(info.model_id)
    assert str(model.status) == "READY"
    assert json.loads(model.tags["mlflow.modelVersions"]) == [{"name": "budget", "version": 2}]
    assert other.lineage(uri).parents[0].info.uri == parent
