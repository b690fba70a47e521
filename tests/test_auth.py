"""Accounts and secrets: a tracking server that lets in only its accounts, and no password ever
recorded.

Fast: a password in a URI is masked in messages, params and result JSON, and a URI's credentials
go to the environment MLflow's client reads. On a real server on 127.0.0.1 (deploy/services.py,
MLflow's basic-auth app as deployed; sqlite behind it), with an editor and a reader added by
deploy/users.py: a request without an account is refused (401), and a wrong password is one line
naming the account; an editor's sweep, its credentials in the tracking URI, records every state
with its lineage, and neither the server's store nor any file the command wrote nor its output
holds the password; a reader can neither register a state (nothing of it stays registered) nor
delete a run (403) until the admin grants it EDIT on the study (deploy/users.py); an account with
EDIT on a study's experiment but not on its registered model is stopped before its first run.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy"))
import services  # noqa: E402
import users  # noqa: E402

from lmctrack.config import schema  # noqa: E402
from lmctrack.engine.state import State  # noqa: E402
from lmctrack.errors import LmcError, redact  # noqa: E402
from lmctrack.results.serial import to_dict  # noqa: E402
from lmctrack.store import Store  # noqa: E402
from lmctrack.store.access import PASSWORD, USERNAME, without_credentials  # noqa: E402
from lmctrack.store.backend import flatten  # noqa: E402

EDITOR = ("editor", f"ed-{secrets.token_hex(8)}")
READER = ("reader", f"rd-{secrets.token_hex(8)}")
slow = pytest.mark.slow


def _signed_in(url: str, account: tuple[str, str]) -> str:
    return url.replace("http://", f"http://{account[0]}:{account[1]}@")


def test_a_password_in_a_uri_is_masked_in_messages_params_and_results() -> None:
    uri = "http://alice:s3cr@t@host:5000/path"
    masked = "http://alice:***@host:5000/path"
    assert redact(f"at {uri}, again ['{uri}']") == f"at {masked}, again ['{masked}']"
    plain = "http://host:5000 by alice@example.org, postgresql://bob@db/mlflow"
    assert redact(plain) == plain
    assert str(LmcError(f"cannot reach {uri}; fix it")) == f"cannot reach {masked}; fix it"
    assert flatten({"store": {"tracking_uri": uri}, "x": [uri]}) == {
        "store.tracking_uri": masked,
        "x": f'["{masked}"]',
    }
    assert to_dict({"made_with": {"tracking_uri": uri}, "n": 3}) == {
        "made_with": {"tracking_uri": masked},
        "n": 3,
    }


def test_credentials_in_a_uri_go_to_the_environment_of_mlflows_client(monkeypatch) -> None:
    monkeypatch.setenv(USERNAME, "someone")  # restored after the test
    monkeypatch.setenv(PASSWORD, "else")
    assert without_credentials("https://alice:p%40ss@host:5000/x") == "https://host:5000/x"
    assert (os.environ[USERNAME], os.environ[PASSWORD]) == ("alice", "p@ss")
    assert without_credentials("http://host:5000") == "http://host:5000"
    assert without_credentials("sqlite:///a/b.db") == "sqlite:///a/b.db"
    assert os.environ[USERNAME] == "alice"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """The server, its store in `folder` (database, artifacts, log), an editor and a reader."""
    folder = tmp_path_factory.mktemp("auth-server")
    (folder / "artifacts").mkdir()
    with services.mlflow_server(f"sqlite:///{folder / 'mlflow.db'}", folder / "artifacts") as s:
        with pytest.MonkeyPatch.context() as mp:
            for name, value in s.credentials.items():
                mp.setenv(name, value)
            for account in (EDITOR, READER):
                users.add_user(s.url, *account)
        s.folder = folder
        yield s


@pytest.fixture
def signed_out(monkeypatch):
    """No account in this process's environment (each store signs in by its URI)."""
    for name in (USERNAME, PASSWORD):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def _state(seed: int) -> State:
    return State({"w": torch.randn(4, 3, generator=torch.Generator().manual_seed(seed))})


@slow
def test_a_request_without_an_account_or_with_a_wrong_password_is_refused(server, signed_out):
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{server.url}/api/2.0/mlflow/experiments/search?max_results=1")
    assert refused.value.code == 401
    wrong = f"not-{READER[1]}"
    with pytest.raises(LmcError, match=r"refused the login of account 'reader' \(401\)") as e:
        Store(_signed_in(server.url, (READER[0], wrong))).find_state("any")
    assert wrong not in str(e.value) and "MLFLOW_TRACKING_PASSWORD" in str(e.value)


@slow
def test_an_editors_sweep_records_every_state_with_lineage_and_no_password(
    server, new_project, signed_out
):
    project = new_project("editor", instability={"inits": 1})
    uri = _signed_in(server.url, EDITOR)
    params = yaml.safe_load(project.params_file.read_text())
    params["store"] = {"tracking_uri": uri}
    project.params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    out = project.folder / "out"
    argv = [sys.executable, "-m", "lmctrack", "instability", "-q", "--out", str(out), "--json"]
    done = subprocess.run(argv, cwd=project.folder, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]

    store = Store(uri)
    states = store.search_states()
    assert len(states) == 7  # W0, W20, W_T of the init; a W_T per copy of W0 and of W20
    for info in states:
        node = store.lineage(info.uri)
        while node.parents:
            node = node.parents[0]
        assert node.info.tags["role"] == schema.INIT, info.uri  # every state goes back to W0
    client = MlflowClient(server.url)
    experiments = [e.experiment_id for e in client.search_experiments()]
    recorded = {r.data.params.get("store.tracking_uri") for r in client.search_runs(experiments)}
    assert redact(uri) in recorded and uri not in recorded

    password = EDITOR[1].encode()
    written = [p for p in (*server.folder.rglob("*"), *project.folder.rglob("*")) if p.is_file()]
    assert len([p for p in written if p.suffix == ".safetensors"]) >= 7
    assert any(p.parent == out for p in written)
    leaks = [p for p in written if p != project.params_file and password in p.read_bytes()]
    assert leaks == []
    assert EDITOR[1] not in done.stdout + done.stderr


@pytest.fixture(scope="module")
def study_run(server) -> str:
    """The editor's study: a run in experiment `study` that registered version 1 of study_net."""
    with pytest.MonkeyPatch.context() as mp:
        for name in (USERNAME, PASSWORD):
            mp.setenv(name, "")  # the editor's sign-in below is undone when the study is made
        editor = Store(_signed_in(server.url, EDITOR))
        with editor.run("study", "w0") as run:
            run.save_state(_state(0), model_name="study_net", role="W0", step=0, tags={})
        editor.settle()
    return run.id


@slow
def test_a_reader_can_neither_register_a_state_nor_delete_a_run(server, study_run, signed_out):
    reader = Store(_signed_in(server.url, READER))  # reads all, may start its own experiments
    refusal = r"refused account 'reader' permission for create_model_version \(403: it needs EDIT"
    with pytest.raises(LmcError, match=refusal), reader.run("notes", "try") as own:
        own.save_state(_state(1), model_name="study_net", role="W0", step=0, tags={}, key="r-0")
    reader.settle()
    client = MlflowClient(server.url)  # as the reader
    assert [v.version for v in client.search_model_versions("name = 'study_net'")] == ["1"]
    files = client.search_logged_models([client.get_run(own.id).info.experiment_id])
    assert [m.lifecycle_stage for m in files] in ([], ["deleted"])  # registered nowhere: gone

    study = pytest.raises(LmcError, match=r"permission for create_run \(403: it needs EDIT")
    with study, reader.run("study", "try"):
        pass
    with pytest.raises(MlflowException) as refused:
        client.delete_run(study_run)
    assert refused.value.error_code == "PERMISSION_DENIED"
    assert client.get_run(study_run).info.lifecycle_stage == "active"


@slow
def test_the_admin_grants_a_reader_edit_on_a_study_and_it_records_there(
    server, study_run, signed_out
):
    admin = {**os.environ, **server.credentials}
    for kind, name in (("experiment", "study"), ("registered_model", "study_net")):
        argv = [sys.executable, "deploy/users.py", server.url, "grant", READER[0], kind, name]
        subprocess.run([*argv, "EDIT"], env=admin, check=True, cwd=Path(__file__).parents[1])
    reader = Store(_signed_in(server.url, READER))
    with reader.run("study", "granted") as run:
        uri = run.save_state(_state(2), model_name="study_net", role="W0", step=0, tags={})
    reader.settle()
    assert uri == "models:/study_net/2"  # the reader's refused attempt left no version


@slow
def test_an_account_without_edit_on_the_model_is_stopped_before_anything_is_recorded(
    server, signed_out
):
    """EDIT on the experiment but not on its registered model: refused at the command's first
    run, in one line naming the account and the model, with no run created (not a run left
    FAILED after its training)."""
    editor = Store(_signed_in(server.url, EDITOR))
    with editor.run("shared_net", "w0") as run:
        run.save_state(_state(3), model_name="shared_net", role="W0", step=0, tags={})
    editor.settle()
    admin = {**os.environ, **server.credentials}
    argv = [sys.executable, "deploy/users.py", server.url, "grant", READER[0], "experiment"]
    subprocess.run(
        [*argv, "shared_net", "EDIT"], env=admin, check=True, cwd=Path(__file__).parents[1]
    )
    reader = Store(_signed_in(server.url, READER))
    client = MlflowClient(server.url)  # as the reader
    experiment = client.get_experiment_by_name("shared_net").experiment_id
    refusal = r"refused account 'reader' EDIT on the registered model 'shared_net'.*nothing was"
    with pytest.raises(LmcError, match=refusal), reader.run("shared_net", "try"):
        pass
    assert [r.info.run_id for r in client.search_runs([experiment])] == [run.id]
