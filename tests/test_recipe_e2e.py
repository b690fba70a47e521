"""A network with an embedding layer, trained on integer tokens with
torch.optim:AdamW (weight decay by kwargs), a cosine schedule, label smoothing and clipping, goes
through train, fork (restart and carry), IMP and find-k; carried copies continue the training's
optimizer bit for bit."""

from __future__ import annotations

import pytest
import torch
from own_package import project_fixtures
from test_cli import ok
from test_recipe import BAG, RECIPE, TOKENS

from lmctrack import load as lmc_load
from lmctrack.config import schema

# End to end: real trainings on a real store (tens of seconds).
pytestmark = pytest.mark.slow

SECTIONS = {
    "data": {"name": TOKENS, "kwargs": {"train": 128, "test": 64}},
    "model": {"name": BAG},
    "train": {**RECIPE, "rewind_steps": ["0it", "20it"]},
    "seeds": {"data_order": 1, "augment": 1},  # the training's noise is copy 1's: seed 1
    "instability": {"rewind_steps": ["20it"], "inits": 1, "copies": 2, "alphas": 3},
    "imp": {"rewind": "20it", "levels": 1, "replicates": 1, "baseline_levels": []},
}
CARRY = ("--set", "instability.optimizer_state=carry")


project, trained = project_fixtures("recipe", SECTIONS)


def _weights(project, uri: str) -> dict[str, torch.Tensor]:
    return project.store.load_state(uri).weights


def test_tokens_go_through_train_fork_imp_and_find_k(project, trained):
    states = trained["states"]
    assert list(states) == ["W0", "W20", "W_T"]
    w20 = project.store.load_state(states["W20"])
    assert w20.optimizer is not None and "exp_avg_sq" in w20.optimizer[0]  # AdamW's moments
    restart = ok("fork", "--run-id", trained["run_id"], "--step", "20it", "-q")
    carry = ok("fork", "--run-id", trained["run_id"], "--step", "20it", "-q", *CARRY)
    assert restart["optimizer_state"] == "restart" and carry["optimizer_state"] == "carry"
    assert restart["run_id"] != carry["run_id"] and not set(restart["copies"]) & set(
        carry["copies"]
    )
    final = _weights(project, states["W_T"])
    carried, restarted = (
        _weights(project, carry["copies"][0]),
        _weights(project, restart["copies"][0]),
    )
    # copy 1 under the training's own noise: carried, it is the training's W_T bit for bit
    assert all(torch.equal(final[k], carried[k]) for k in final)
    assert not torch.equal(final["hidden.weight"], restarted["hidden.weight"])
    tags = project.store.describe(carry["copies"][0]).tags
    assert tags[schema.OPTIMIZER_STATE] == schema.CARRY
    again = ok("fork", "--run-id", trained["run_id"], "--step", "20it", "-q", *CARRY)
    assert again["run_id"] == carry["run_id"]  # found by its key
    imp = ok("imp", "--run-id", trained["run_id"], "--rewind", "20it", "--levels", "1")
    assert abs(imp["rows"][0]["density"] - 0.8) < 0.01
    search = ok(
        "find-k", "-q", *CARRY, "--set", "instability.candidates=[0it, 10it, 20it]",
        "--set", "instability.max_copies=3",
    )["search"]  # fmt: skip
    assert search["candidates"] == [0, 10, 20] and search["probes"]


def test_carry_from_a_state_without_its_optimizer_state_is_refused(project, trained):
    """W_T keeps no optimizer state: carrying from it is one line with the fix."""
    from test_cli import invoke

    result = invoke("fork", "--from", trained["states"]["W_T"], "-q", *CARRY)
    assert result.exit_code != 0
    assert "registered without its optimizer state" in result.output
    assert "instability.optimizer_state=restart" in result.output


def test_plain_mlflow_serves_the_token_network_on_integer_inputs(project, trained, monkeypatch):
    import mlflow
    import numpy as np

    monkeypatch.setenv("MLFLOW_TRACKING_URI", project.store.tracking_uri)
    mlflow.set_tracking_uri(project.store.tracking_uri)
    model = mlflow.pyfunc.load_model(trained["states"]["W_T"])
    assert model.metadata.get_input_schema().inputs[0].type == np.dtype(np.int64)
    tokens = np.arange(24).reshape(2, 12) % 32
    network, _ = lmc_load(trained["states"]["W_T"])
    expected = network(torch.as_tensor(tokens)).detach().numpy()
    assert np.allclose(model.predict(tokens), expected, atol=1e-6)


def test_a_checkpoint_of_the_token_network_starts_a_training(project, trained, tmp_path):
    """`train --init FILE` probes the network on the data's own integer tokens, as every build
    does: the checkpoint becomes W0, bit for bit, with its sha256 in the lineage."""
    network, _ = lmc_load(trained["states"]["W_T"])
    checkpoint = tmp_path / "checkpoint.pt"
    torch.save(network.state_dict(), checkpoint)
    w0 = ok("train", "-q", "--init", str(checkpoint))["states"]["W0"]
    loaded = _weights(project, w0)
    assert all(torch.equal(loaded[k], v) for k, v in network.state_dict().items())
    assert project.store.describe(w0).tags[schema.W0_SHA256]
