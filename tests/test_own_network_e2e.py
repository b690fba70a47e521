"""A researcher's own network and data (a package in a temp folder: residual blocks, BatchNorm,
a global-pool head; a factory of tensors) through every command, with the lineage and tags of a
built-in network; torchvision's resnet18 by name; refusals of code lmctrack cannot use."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
import torch
from own_package import DATA, MODEL, install, project_fixtures, uninstall
from test_cli import invoke, ok

import lmctrack as lmc
from lmctrack.engine.models import prunable_names

# End to end: real trainings on real stores (a minute or two in all).
pytestmark = pytest.mark.slow

OWN = {
    "data": {"name": DATA, "kwargs": {"train": 128, "test": 64}},
    "model": {"name": MODEL, "kwargs": {"channels": 8}},
    "train": {"lr": 0.05, "batch_size": 32, "steps": "30it", "rewind_steps": ["0it", "20it"]},
    "instability": {"rewind_steps": ["20it"], "inits": 1, "copies": 2, "alphas": 3},
    "imp": {"rewind": "20it", "levels": 1, "replicates": 1},
}


project, trained = project_fixtures("own", OWN)


def test_own_network_goes_through_every_analysis(project, trained, monkeypatch):
    states = trained["states"]
    assert list(states) == ["W0", "W20", "W_T"]
    from ownnet.data import blobs
    from ownnet.nets import TinyResNet

    again = lmc.train(project.params_file, model=TinyResNet, data=blobs)
    assert again.run_id == trained["run_id"]  # the class resolved to the same import path
    fork = ok("fork", "--run-id", trained["run_id"], "--step", "20it", "-q")
    copies = fork["copies"]
    assert len(copies) == 2 and fork["pairs"][0]["seeds"] == [1, 2]
    for bn in ("reset", "repair"):
        path = ok("interpolate", copies[0], copies[1], "--bn", bn)
        assert path["bn"] == bn and len(path["alphas"]) == 3
    imp = ok("imp", "--run-id", trained["run_id"], "--rewind", "20it", "--levels", "1")
    (row,) = imp["rows"]
    assert abs(row["density"] - 0.8) < 0.01 and len(row["accuracy"]) >= 3  # IMP + baselines
    spared = ok("imp", "--run-id", trained["run_id"], "--rewind", "20it", "--levels", "1",
                "-s", "prune.exclude=[stem]")  # fmt: skip
    assert spared["run_id"] != imp["run_id"]
    start = next(t["start"] for t in spared["trainings"] if t["method"] == "imp" and t["level"])
    assert "stem.weight" not in project.store.load_state(start).mask
    sweep = ok("instability", "--imp", "-q")
    assert sweep["rows"] and {(r["level"], r["k"]) for r in sweep["rows"]} == {(1, 20)}
    other = ok("train", "-q", "-s", "seeds.init=1")["states"]["W_T"]
    aligned = ok("align", states["W_T"], other, "--method", "weight")
    assert aligned["max_logit_diff"] < 1e-4
    hessian = invoke("hessian", states["W_T"], "--samples", 3, "--limit", 64)
    assert hessian.exit_code == 0, hessian.output
    network, info = lmc.load(states["W_T"], params=project.params_file)
    # set_tracking_uri exports MLFLOW_TRACKING_URI: undone after the test (later subprocesses)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", project.store.tracking_uri)
    mlflow.set_tracking_uri(project.store.tracking_uri)
    x = torch.randn(5, 3, 8, 8)
    logits = mlflow.pyfunc.load_model(states["W_T"]).predict(x.numpy().astype(np.float32))
    assert np.allclose(logits, network(x).detach().numpy(), atol=1e-5)
    assert info.architecture["kwargs"] == {"channels": 8}


def test_own_network_has_the_lineage_and_tags_of_a_builtin_network(project, trained, new_project):
    builtin = new_project("own_builtin")
    run = lmc.train(builtin.params_file)
    own = trained["states"]
    for mine, theirs in ((own["W_T"], run.final), (own["W20"], run.at(20))):
        a, b = project.store.describe(mine), builtin.store.describe(theirs)
        assert set(a.tags) == set(b.tags) and a.tags["role"] == b.tags["role"]
    chain = lmc.lineage(own["W_T"], params=project.params_file)
    roles = []
    while chain is not None:
        roles.append(chain.info.tags["role"])
        chain = chain.parents[0] if chain.parents else None
    assert roles == ["trained", "rewind", "init"]


REFUSALS = {
    "missing package": (["-s", "model.name=nopkg.nets:Net"], "no module named 'nopkg'"),
    "factory returns no network": (
        ["-s", f"model.name={DATA}", "-s", "model.kwargs={}"],
        "not a torch.nn.Module",
    ),
    "factory returns no data": (
        ["-s", "data.name=ownnet.bad:wrong", "-s", "data.kwargs={}"],
        "(x_train, y_train",
    ),
    "not importable": (["-s", "model.name=__main__:Net"], "move it into an importable module"),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_code_lmctrack_cannot_use_is_one_line_and_loses_nothing(project, trained, case):
    args, message = REFUSALS[case]
    before = project.versions()
    result = invoke("train", "-q", *args)
    lines = result.output.strip().splitlines()
    assert result.exit_code != 0 and len(lines) == 1 and message in lines[0], result.output
    assert project.versions() == before


def test_an_untraceable_network_trains_but_alignment_says_why(project, trained):
    sets = ["model.name=ownnet.bad:Branching", "model.kwargs={}", "train.steps=2it"]
    states = ok("train", "-q", *[a for s in sets for a in ("-s", s)], "-s", "train.rewind_steps=[]")
    before = project.versions()
    result = invoke("align", states["states"]["W0"], states["states"]["W_T"])
    lines = result.output.strip().splitlines()
    assert result.exit_code != 0 and len(lines) == 1 and "cannot trace Branching" in lines[0]
    assert project.versions() == before


def test_a_pair_of_datasets_trains_like_tensors(project, trained):
    sets = ["data.name=ownnet.data:blob_datasets", "train.steps=4it", "train.rewind_steps=[]"]
    run = ok("train", "-q", *[a for s in sets for a in ("-s", s)])
    info = project.store.describe(run["states"]["W_T"])
    assert info.name == "ownnet.nets.TinyResNet_ownnet.data.blob_datasets"
    assert info.architecture["input_shape"] == [3, 8, 8] and info.architecture["num_classes"] == 4


def test_torchvision_resnet18_trains_and_forks_without_fc_in_its_prunable_set(new_project):
    project = new_project(
        "resnet18",
        data={"name": DATA, "kwargs": {"train": 64, "test": 32, "classes": 10, "size": 32}},
        model={"name": "torchvision:resnet18", "kwargs": {"num_classes": 10}},
        train={"batch_size": 16, "steps": "4it", "rewind_steps": ["0it", "2it"]},
        instability={"alphas": 3},
    )
    folder = install(project.folder / "code")
    try:
        run = lmc.train(project.params_file)
        fork = lmc.fork(run.at(2), seeds=2, params=project.params_file)
        assert len(fork.copies) == 2
        names = prunable_names(project.context().template())
        assert "fc.weight" not in names and "conv1.weight" in names
    finally:
        uninstall(folder)
