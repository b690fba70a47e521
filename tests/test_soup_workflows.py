"""What stability buys, end to end on a real sqlite store: every fork's copies are souped; `soup`
registers a soup with every ingredient as a parent (greedy only with a validation split); `train
--init FILE` starts from a checkpoint lmctrack exported, which predicts the same, then forks at
k = 0 and soups the fine-tuned copies; for another class count the output layer is replaced."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from lmctrack import api
from lmctrack.cli import app
from lmctrack.config import schema
from lmctrack.config.params import ModelConfig
from lmctrack.engine.models import build_model
from lmctrack.workflows.fork import fork
from lmctrack.workflows.training_run import train_run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(new_project):
    return new_project("soup", data={"validation": 0.2})


@pytest.fixture(scope="module")
def forked(ctx, run):
    return fork(ctx, run.at(20), seeds=[1, 2, 3])


def invoke(project, *args: object):
    with project.entered():
        return CliRunner().invoke(app, [str(a) for a in args])


def test_every_fork_reports_the_soup_of_its_copies(project, forked):
    assert forked.soup_error is not None
    numbers = forked.headline()
    assert numbers[schema.COPIES_MEAN_ERROR] == pytest.approx(sum(forked.copy_errors) / 3)
    assert numbers[schema.COPIES_BEST_ERROR] == min(forked.copy_errors)
    logged = project.store.client.get_run(forked.run_id).data.metrics
    assert logged[schema.SOUP_ERROR] == pytest.approx(forked.soup_error)


def test_soup_registers_the_mean_with_every_copy_as_parent_and_is_reused(project, forked):
    out = invoke(project, "soup", *forked.copies, "--json")
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)
    info = project.store.describe(result["uri"])
    assert info.tags[schema.ROLE] == schema.SOUP and info.parents == forked.copies
    assert result["headline"][schema.SOUP_ERROR] == pytest.approx(forked.soup_error)
    soup, _ = api.load(result["uri"], params=project.params_file)
    copies = [api.load(c, params=project.params_file)[0] for c in forked.copies]
    for name in ("features.conv1.weight", "fc.weight"):
        mean = torch.stack([c.state_dict()[name] for c in copies]).mean(0)
        assert torch.allclose(soup.state_dict()[name], mean)
    again = invoke(project, "soup", *forked.copies, "--json")
    assert json.loads(again.stdout)["uri"] == result["uri"] and json.loads(again.stdout)["reused"]


def test_greedy_soup_keeps_ingredients_chosen_on_the_validation_split(project, forked):
    out = invoke(project, "soup", *forked.copies, "--greedy", "--json")
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)
    accuracy = result["validation_accuracy"]
    assert result["kept"][0] == max(forked.copies, key=accuracy.get)
    assert set(result["kept"]) <= set(forked.copies)
    info = project.store.describe(result["uri"])
    assert info.tags[schema.SOUP_METHOD] == schema.GREEDY
    assert info.parents == forked.copies


def test_greedy_without_a_validation_split_and_a_lone_state_are_refused(new_project):
    plain = new_project("plain")
    trained = train_run(plain.context())
    before = plain.versions()
    out = invoke(plain, "soup", trained.final, trained.at(20), "--greedy")
    assert out.exit_code != 0 and "data.validation" in out.output
    assert len(out.output.strip().splitlines()) == 1
    lone = invoke(plain, "soup", trained.final)
    assert lone.exit_code != 0 and "at least 2 states" in lone.output
    assert plain.versions() == before


def test_fine_tuning_from_an_exported_checkpoint_then_forking_at_0_and_souping(
    project, run, new_project, tmp_path
):
    exported = project.state_file(run.final)  # the file lmctrack wrote for W_T
    tuned = new_project("tuned", train={"lr": 0.05})
    out = invoke(tuned, "train", "--init", exported, "--json")
    assert out.exit_code == 0, out.output
    states = json.loads(out.stdout)["states"]
    w0 = tuned.store.describe(states["W0"])
    assert w0.tags[schema.W0_SOURCE] == str(exported)
    assert w0.tags[schema.W0_SHA256] == hashlib.sha256(exported.read_bytes()).hexdigest()
    assert w0.tags[schema.OUTPUT_LAYER] == "kept"
    imported, _ = api.load(states["W0"], params=tuned.params_file)
    original, _ = api.load(run.final, params=project.params_file)
    x = torch.randn(16, 1, 40)
    assert torch.equal(imported(x), original(x))  # the checkpoint imported predicts the same
    forked = invoke(tuned, "fork", "--from", states["W0"], "--seeds", "2", "--json")
    assert forked.exit_code == 0, forked.output
    headline = json.loads(forked.stdout)["headline"]
    assert {schema.SOUP_ERROR, schema.COPIES_MEAN_ERROR} <= set(headline)
    before = tuned.versions()
    bad = tmp_path / "bad.pt"
    torch.save({"weights": [1, 2]}, bad)
    refused = invoke(tuned, "train", "--init", bad, "--set", "train.lr=0.07")
    assert refused.exit_code != 0 and "state_dict" in refused.output
    assert len(refused.output.strip().splitlines()) == 1 and tuned.versions() == before


def test_fine_tuning_to_another_class_count_replaces_the_output_layer(
    project, run, new_project, tmp_path
):
    data = project.context().dataset
    three = tmp_path / "three.safetensors"
    splits = {"train": data.train, "test": data.test}
    tensors = {f"x_{s}": split.x for s, split in splits.items()}
    save_file(tensors | {f"y_{s}": split.y % 3 for s, split in splits.items()}, three)
    tuned = new_project("three", data={"name": "tensors", "path": str(three)})
    exported = project.state_file(run.final)
    w0_uri = train_run(tuned.context(f"model.checkpoint={exported}")).w0
    info = tuned.store.describe(w0_uri)
    assert info.tags[schema.OUTPUT_LAYER] == "fc: 10 -> 3 classes, seeded"
    w0 = tuned.store.load_state(w0_uri).weights
    pretrained = project.store.load_state(run.final).weights
    seeded = build_model(ModelConfig(name="mnist1d_cnn"), 3, (1, 40), 0).state_dict()
    assert torch.equal(w0["features.conv1.weight"], pretrained["features.conv1.weight"])
    assert torch.equal(w0["fc.weight"], seeded["fc.weight"]) and w0["fc.bias"].shape == (3,)
