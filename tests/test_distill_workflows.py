"""Distillation as tracked work and the 2023 follow-up, end to end on a real sqlite store: experts
are registered trainings reused by config, the distilled set is written and registered with its
lineage (real data, expert states), drives `imp --prune-data`, and the follow-up compares
real-data with distilled-data IMP and says whether its claim holds. Tiny: MNIST-1D of 1000
examples, 2 examples per class, a few matching iterations, T = 100it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from lmctrack.cli import app
from lmctrack.config import schema
from lmctrack.store import TAG_PREFIX
from lmctrack.workflows.distillation import distill
from lmctrack.workflows.followup import followup
from lmctrack.workflows.training_run import train_run

# End to end: real trainings, stores or subprocesses (seconds to minutes each).
pytestmark = pytest.mark.slow

TINY_DISTILL = {
    "images_per_class": 2,
    "iterations": 4,
    "syn_steps": 3,
    "expert_epochs": 1,
    "max_start_epoch": 2,
    "experts": 2,
    "lr_img": 1.0,
    "eval_steps": "10ep",
}
TINY_FOLLOWUP = {
    "levels": 1,
    "copies": 2,
    "hessian_samples": 2,
    "hessian_limit": 100,
    "plane_grid": 3,
}


@pytest.fixture(scope="module")
def project(new_project):
    return new_project("distill", distill=TINY_DISTILL, followup=TINY_FOLLOWUP)


@pytest.fixture(scope="module")
def ctx(project):
    return project.context()


@pytest.fixture(scope="module")
def distilled(ctx, project):
    return distill(ctx, project.folder / "outputs" / "distill")


def invoke(project, *args: object):
    with project.entered():
        return CliRunner().invoke(app, [str(a) for a in args])


def inputs(store, run_id: str) -> tuple[set[tuple[str, str]], set[str]]:
    """A run's dataset inputs (name, digest) and model inputs (logged-model ids)."""
    got = store.client.get_run(run_id).inputs
    datasets = {(d.dataset.name, d.dataset.digest) for d in got.dataset_inputs}
    return datasets, {m.model_id for m in got.model_inputs}


def sources(store, run_id: str) -> dict[str, dict]:
    """A run's dataset inputs by name: their source (JSON) and context (train, distilled)."""
    return {
        d.dataset.name: {
            **json.loads(d.dataset.source),
            "context": {t.key: t.value for t in d.tags}["mlflow.data.context"],
        }
        for d in store.client.get_run(run_id).inputs.dataset_inputs
    }


def names_the_distillation(source: dict, distilled) -> bool:
    """The source a person can follow: the file's path and the run that made it."""
    return (
        source["path"] == str(Path(distilled.path).resolve())
        and source["run_id"] == distilled.run_id
        and source["artifact"] == f"runs:/{distilled.run_id}/{schema.DISTILLED_FILE}"
        and source["fingerprint"] == distilled.fingerprint
    )


@pytest.mark.slow
def test_distill_writes_and_registers_the_set_with_its_lineage(ctx, distilled):
    content = Path(distilled.path).read_bytes()
    assert hashlib.sha256(content).hexdigest() == distilled.sha256
    tags = ctx.store.run_tags(distilled.run_id)
    assert tags[schema.KIND] == schema.KIND_DISTILL
    assert tags[schema.DISTILLED_SHA256] == distilled.sha256
    assert tags[schema.DISTILLED_FINGERPRINT] == distilled.fingerprint
    datasets, models = inputs(ctx.store, distilled.run_id)
    assert ("mnist1d", ctx.dataset_fingerprint) in datasets  # the real data
    name = "distill mtt 2/class"  # the distilled set by the run that made it, not "tensors"
    assert (name, distilled.fingerprint) in datasets
    made = sources(ctx.store, distilled.run_id)[name]
    assert names_the_distillation(made, distilled) and made["context"] == "distilled"
    experts = {ctx.store.describe(uri).model_id for uri in distilled.expert_states}
    assert len(distilled.expert_runs) == 2 and len(distilled.expert_states) == 2 * 3  # epochs 0-2
    assert models == experts
    for run_id in distilled.expert_runs:  # experts are ordinary trainings
        assert ctx.store.run_tags(run_id)[schema.KIND] == schema.KIND_TRAIN
    stored = ctx.store.run_artifact(distilled.run_id, schema.DISTILLED_FILE).read_bytes()
    assert hashlib.sha256(stored).hexdigest() == distilled.sha256
    assert len(distilled.distilled_accuracy) == len(distilled.random_accuracy) == 3
    assert distilled.size == 20 and distilled.quality.size == 20


@pytest.mark.slow
def test_redistilling_reuses_the_experts_and_an_identical_distillation(
    project, ctx, distilled, tmp_path
):
    before = project.versions()
    again = distill(ctx, tmp_path / "again")
    assert again.reused and again.run_id == distilled.run_id
    assert Path(again.path).read_bytes() == Path(distilled.path).read_bytes()
    other = distill(project.context("distill.seed=1"), tmp_path / "seed1")
    assert not other.reused and other.run_id != distilled.run_id
    assert other.expert_states == distilled.expert_states
    assert project.versions() == before  # no expert trained or registered again


@pytest.mark.slow
def test_the_distilled_file_drives_imp_with_lineage_back_to_the_experts(project, ctx, distilled):
    wk = train_run(ctx).at(20)
    result = invoke(
        project,
        "imp",
        "--from",
        wk,
        "--prune-data",
        distilled.path,
        "--levels",
        "1",
        "--replicates",
        "1",
        "--set",
        "imp.baseline_levels=[]",
    )
    assert result.exit_code == 0, result.output
    mask = next(line.split("\t")[1] for line in result.stdout.splitlines() if "mask" in line)
    search = next(
        p
        for p in ctx.store.describe(mask).parents
        if ctx.store.describe(p).tags["role"] == schema.SEARCH
    )
    searched = sources(ctx.store, ctx.store.describe(search).run_id)
    assert "tensors" not in searched
    assert names_the_distillation(searched["distill mtt 2/class"], distilled)
    assert searched["distill mtt 2/class"]["context"] == "train"
    experiment = ctx.store.client.get_experiment_by_name(ctx.model_name).experiment_id
    producers = ctx.store.client.search_runs(
        [experiment],
        f"tags.`{TAG_PREFIX}{schema.DISTILLED_FINGERPRINT}` = '{distilled.fingerprint}'",
    )
    assert {r.info.run_id for r in producers} >= {distilled.run_id}


def test_a_file_no_run_made_is_named_by_its_stem_with_its_path(project, tmp_path):
    """A file of tensors from elsewhere: its stem names it, its path is its source."""
    file = tmp_path / "my_subset.safetensors"
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 40, generator=g), torch.arange(40) % 10
    save_file({"x_train": x, "y_train": y}, file)
    ctx = project.context("data.name=tensors", f"data.path={file}")
    with ctx.run("reads the file") as run:
        pass
    (source,) = sources(ctx.store, run.id).items()
    assert source[0] == "my_subset" and source[1]["path"] == str(file.resolve())
    assert "run_id" not in source[1]


def test_images_per_class_beyond_the_data_is_one_line_error(project):
    before = project.versions()
    result = invoke(project, "distill", "--set", "distill.images_per_class=5000")
    assert result.exit_code == 1
    assert result.output.startswith("error: images_per_class=5000 but class")
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert project.versions() == before  # refused before any expert trained


def test_dm_through_the_cli_writes_the_file_and_its_json(project, tmp_path):
    out = tmp_path / "dm"
    result = invoke(project, "distill", "--method", "dm", "--out", out, "-q")
    assert result.exit_code == 0, result.output
    lines = dict(line.split("\t") for line in result.stdout.splitlines())
    assert lines["file"] == str(out / schema.DISTILLED_FILE)
    written = json.loads((out / "distill.json").read_text())
    assert written["method"] == "dm" and written["expert_runs"] == []
    assert written["sha256"] == lines["sha256"]


def test_a_prune_data_file_of_the_wrong_shape_is_one_line_error(project, tmp_path):
    bad = tmp_path / "bad.safetensors"
    save_file({"x_train": torch.zeros(10, 7), "y_train": torch.zeros(10, dtype=torch.long)}, bad)
    result = invoke(project, "followup", "--prune-data", bad, "--out", tmp_path / "f")
    assert result.exit_code == 1
    assert result.output.startswith("error: the prune data has inputs (7,)")
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.slow
def test_followup_compares_the_searches_and_gives_a_verdict(project, ctx, distilled, tmp_path):
    out = tmp_path / "followup"
    result = invoke(project, "followup", "--prune-data", distilled.path, "--out", out, "-q")
    assert result.exit_code == 0, result.output
    data = json.loads((out / "followup.json").read_text())
    assert (out / "followup.png").stat().st_size > 0
    real, dist = data["sides"]
    assert (real["data"], dist["data"]) == (schema.REAL_DATA, schema.DISTILLED_DATA)
    [row] = data["rows"]
    assert row["level"] == 1 and row["density"] == pytest.approx(0.8, abs=0.01)
    for side in data["sides"]:
        mask = ctx.store.describe(side["mask"])
        assert float(mask.tags[schema.DENSITY]) == pytest.approx(row["density"])
        assert len(side["copies"]) == 2 and side["hessian"]["trace"] != 0
        for copy in side["copies"]:  # copies of (Wk, m) trained on the real data
            assert side["mask"] in ctx.store.describe(copy).parents
    gap = real["barrier"]["mean"] - dist["barrier"]["mean"]
    spread = max(real["barrier"]["std"], dist["barrier"]["std"])
    assert data["more_stable"] == (gap > spread)
    verdict = "yes" if data["more_stable"] else "no"
    assert data["claim"].startswith(
        f"distilled-data subnetworks are more stable than real-data ones: {verdict}, because"
    )
    again = followup(ctx, data["wk"], distilled.prune_data())
    assert again.reused and again.run_id == data["run_id"]
