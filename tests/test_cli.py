"""The lmctrack command line end to end, in a project folder with its own sqlite store: commands
chain through the URIs they print, finished work is reused, and every bad input ends in one
clear line and a non-zero exit with nothing stored lost."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from lmctrack.cli import app
from lmctrack.config.params import ModelConfig
from lmctrack.engine.evaluate import evaluate, load_into
from lmctrack.engine.models import build_model, prunable_names
from lmctrack.engine.prune import full_mask, layer_densities
from lmctrack.engine.state import State

# End to end: real trainings, stores or subprocesses (seconds to minutes each).
pytestmark = pytest.mark.slow


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def ok(*args: object) -> dict:
    """Run a command with --json and return what it printed on stdout."""
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def project(new_project):
    """A project folder as the working directory (the CLI finds params.yaml there)."""
    project = new_project("cli")
    with project.entered():
        yield project


@pytest.fixture(scope="module")
def trained(project) -> dict:
    return ok("train", "-q", "--out", "outputs/train")


@pytest.fixture(scope="module")
def imp_run(project, trained) -> dict[str, str]:
    """`lmctrack imp` rewinding to 20it, one level: its run and the subnetwork (W20, m1)."""
    result = invoke("imp", "--run-id", trained["run_id"], "--rewind", "20it", "--levels", "1")
    assert result.exit_code == 0, result.output
    lines = [line.split("\t") for line in result.stdout.splitlines()]
    assert [name for name, _ in lines] == ["run_id", "mask level 1 density 0.8000"]
    return dict(zip(["run_id", "mask"], [value for _, value in lines]))


@pytest.fixture(scope="module")
def subnetwork(imp_run) -> str:
    return imp_run["mask"]


def test_train_prints_uris_and_lineage_shows_w_t_wk_w0(trained):
    states = trained["states"]
    assert sorted(states) == ["W0", "W20", "W_T"] and not trained["reused"]
    result = invoke("lineage", states["W_T"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    where = [next(i for i, line in enumerate(lines) if uri in line) for uri in states.values()]
    order = dict(zip(states, where))
    assert order["W_T"] < order["W20"] < order["W0"]
    # each state's tags on the line under its name and URI
    assert "role=trained" in lines[order["W_T"] + 1] and "role=init" in lines[order["W0"] + 1]


def test_second_train_reuses_the_run_and_writes_its_uris(project, trained):
    before = project.versions()
    result = invoke("train", "-q")
    assert result.exit_code == 0, result.output
    printed = dict(line.split("\t") for line in result.stdout.splitlines())
    assert printed == {"run_id": trained["run_id"], **trained["states"]}
    assert project.versions() == before
    written = json.loads((project.folder / "outputs/train/train.json").read_text())
    assert written["states"] == trained["states"]


def test_fork_by_run_and_step_registers_copies_and_reuses(project, trained):
    before = project.versions()
    result = ok("fork", "--run-id", "outputs/train/train.json", "--step", "20it", "--seeds", 3)
    assert len(result["copies"]) == 3 and len(result["pairs"]) == 3
    assert len(project.versions()) == len(before) + 3
    for copy in result["copies"]:
        tree = invoke("lineage", copy).output
        assert trained["states"]["W20"] in tree and trained["states"]["W0"] in tree
    before = project.versions()
    again = ok("fork", "--run-id", trained["run_id"], "--step", "20it", "--seeds", 3, "-q")
    assert again["reused"] and again["run_id"] == result["run_id"]
    assert project.versions() == before
    assert again["headline"] == result["headline"]  # read back from the run's JSON, derived again


def test_a_fork_with_more_copies_trains_only_the_new_ones(project, trained):
    """Copies that an earlier fork of the same state finished are found (one search for all of
    them) and reused; only the copy it did not make is trained and registered."""
    two = ok("fork", "--run-id", trained["run_id"], "--step", "20it", "--seeds", 2, "-q")
    before = project.versions()
    five = ok("fork", "--run-id", trained["run_id"], "--step", "20it", "--seeds", 5, "-q")
    assert not five["reused"] and five["run_id"] != two["run_id"]
    assert five["copies"][:2] == two["copies"]
    new = set(project.versions()) - set(before)  # copy 5 at least; no fork above made it
    assert five["copies"][-1] in new and new <= set(five["copies"][2:])


def test_fork_without_seeds_forks_instability_copies(project, trained):
    """No --seeds: the params' instability.copies decide (here 3, as the fork above: reused)."""
    result = ok("fork", "--run-id", trained["run_id"], "--step", "20it", "--seeds", 3, "-q")
    before = project.versions()
    by_params = ok("fork", "--run-id", trained["run_id"], "--step", "20it", "-q",
                   "-s", "instability.copies=3")  # fmt: skip
    assert len(by_params["copies"]) == 3 and by_params["run_id"] == result["run_id"]
    assert project.versions() == before


def test_fork_json_carries_its_barriers_named_as_its_metrics(project, trained):
    """`jq` on fork --json finds the barrier per pair and its statistics and verdict per fork,
    under the names of the run's MLflow metrics, with the definitions they use."""
    result = ok("fork", "--run-id", trained["run_id"], "--step", "20it", "--seeds", 3, "-q")
    barriers = []
    for pair in result["pairs"]:
        errors, headline = pair["curves"]["test"]["error"], pair["headline"]
        barriers.append(max(errors) - (errors[0] + errors[-1]) / 2)
        assert headline["test.error_barrier"] == pytest.approx(barriers[-1])
        assert "test.loss_barrier_linear" in headline
        logged = project.store.run_metrics(pair["run_id"])
        assert {k: logged[k] for k in headline} == pytest.approx(headline)
    summary = result["headline"]
    assert summary["test.error_barrier.mean"] == pytest.approx(sum(barriers) / 3)
    assert summary["test.error_barrier.n"] == 3 and "test.error_barrier.median" in summary
    assert summary["test.stable"] == (summary["test.error_barrier.mean"] < 0.02)
    logged = project.store.run_metrics(result["run_id"])
    assert {k: logged[k] for k in summary} == pytest.approx(
        {k: float(v) for k, v in summary.items()}
    )
    assert "sup_a E(a)" in result["definitions"]["error_barrier"]


def test_fork_of_several_steps_trains_them_together_and_reuses_each(trained):
    one = ok("fork", "--run-id", trained["run_id"], "--step", "20it", "-q")
    both = ok("fork", "--run-id", trained["run_id"], "--step", "20it", "--step", "0it", "-q")
    assert [f["k"] for f in both["forks"]] == [20, 0]
    assert both["forks"][0]["reused"] and both["forks"][0]["run_id"] == one["run_id"]
    assert set(both["forks"][1]["copies"]).isdisjoint(one["copies"])
    every = ok("fork", "--run-id", trained["run_id"], "--step", "all", "-q")["forks"]
    assert [f["k"] for f in every] == [0, 20]  # every Wk the run registered, W_T excluded
    assert [f["run_id"] for f in every] == [f["run_id"] for f in both["forks"][::-1]]


def test_fork_reset_schedule_and_track_every(trained):
    plain = ok("fork", "--run-id", trained["run_id"], "--step", "20it", "-q")
    reset = ok(
        "fork", "--run-id", trained["run_id"], "--step", "20it", "-q",
        "--reset-schedule", "--track-every", "40it",
    )  # fmt: skip
    assert reset["reset_schedule"] and not plain["reset_schedule"]
    assert sorted(reset["tracked"], key=int) == ["40", "80"]
    assert set(reset["copies"]).isdisjoint(plain["copies"])


def test_interpolate_prints_labelled_barriers_and_endpoint_errors(project, trained):
    w0, wt = trained["states"]["W0"], trained["states"]["W_T"]
    result = ok("interpolate", w0, wt)
    assert result["bn"] == "reset" and len(result["alphas"]) == 5
    assert result["a"] == w0 and result["b"] == wt and result["run_id"]
    errors = result["curves"]["test"]["error"]
    shown = invoke("interpolate", w0, wt).output
    assert "error barrier (paper)" in shown and "loss barrier (Entezari)" in shown
    assert f"{max(errors) - (errors[0] + errors[-1]) / 2:.4f}" in shown
    ctx = project.context()
    for uri, end in ((w0, 0), (wt, -1)):
        network = load_into(ctx.template(), ctx.store.load_state(uri))
        own = evaluate(network, ctx.dataset, "test")
        assert result["curves"]["test"]["error"][end] == pytest.approx(own.error, abs=1e-12)
        assert result["curves"]["test"]["loss"][end] == pytest.approx(own.loss, rel=1e-5)
    other = ok("interpolate", w0, wt, "--bn", "interpolate", "--alphas", 3, "--split", "train")
    assert other["bn"] == "interpolate" and list(other["curves"]) == ["train"]
    assert len(other["alphas"]) == 3


def test_instability_writes_its_outputs(project, trained):
    result = ok("instability", "-s", "instability.inits=1", "--out", "outputs/sweep")
    assert result["train_runs"] == [trained["run_id"]]
    assert [(r["k"], r["barrier"]["n"]) for r in result["rows"]] == [(0, 1), (20, 1)]
    out = project.folder / "outputs/sweep"
    assert {"instability.png", "instability.csv", "instability_metrics.json"} <= {
        p.name for p in out.iterdir()
    }


def test_imp_prune_and_reinit_register_subnetworks(project, trained, imp_run, subnetwork):
    store = project.store
    before = project.versions()
    again = ok("imp", "--from", trained["states"]["W20"], "--levels", 1)
    assert again["reused"] and again["run_id"] == imp_run["run_id"]
    assert project.versions() == before
    sub = store.load_state(subnetwork)
    assert sub.density() == pytest.approx(0.8, abs=1e-3)
    assert same(sub.weights, store.load_state(trained["states"]["W20"]).weights)

    shuffled_uri = invoke("prune", "--random", "--from", subnetwork, "--seed", 3).stdout.strip()
    shuffled = store.load_state(shuffled_uri)
    assert layer_densities(shuffled.mask) == layer_densities(sub.mask)
    assert not same(shuffled.mask, sub.mask) and same(shuffled.weights, sub.weights)
    assert store.describe(shuffled_uri).parents == [subnetwork]

    reinit_uri = invoke("reinit", "--from", subnetwork, "--seed", 4).stdout.strip()
    reinit = store.load_state(reinit_uri)
    assert same(reinit.mask, sub.mask) and not same(reinit.weights, sub.weights)
    assert store.describe(reinit_uri).tags["role"] == "reinit"


def test_fork_from_a_subnetwork_and_with_a_mask(project, trained, subnetwork):
    mask = project.store.load_state(subnetwork).mask
    by_from = ok("fork", "--from", subnetwork, "-q")
    by_mask = ok("fork", "--run-id", trained["run_id"], "--step", "20it", "--mask", subnetwork)
    for result in (by_from, by_mask):
        assert result["k"] == 20
        for uri in result["copies"]:
            copy = project.store.load_state(uri)
            assert same(copy.mask, mask)
            assert all((copy.weights[n][~mask[n]] == 0).all() for n in mask)
    assert project.store.describe(by_mask["copies"][0]).parents == [
        trained["states"]["W20"],
        subnetwork,
    ]


# ---- bad inputs ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad(project, trained) -> dict[str, str]:
    """A state and a mask of another architecture, a corrupted state, broken params files."""
    mlp = build_model(ModelConfig(name="mnist1d_mlp", width=8), 10, (40,), 0)
    weights = {k: v.detach().clone() for k, v in mlp.state_dict().items()}
    with project.store.run("other", "fixtures", tags={"kind": "test"}) as run:
        other = run.save_state(
            State(weights, full_mask(weights, prunable_names(mlp))),
            model_name="mnist1d_mlp_other",
            role="mask",
            step=0,
            tags={},
        )
    corrupt = ok("train", "-q", "-s", "seeds.init=9")["states"]["W20"]
    project.state_file(corrupt).write_bytes(b"\x00garbage, not safetensors")
    (project.folder / "malformed.yaml").write_text("train: {steps: [100it\n")
    (project.folder / "unknown.yaml").write_text("train:\n  stepz: 100it\n")
    (project.folder / "empty").mkdir()
    (project.folder / "list.json").write_text("[1, 2]")
    fork_run = ok("fork", "--run-id", trained["run_id"], "--step", "20it", "-q")["run_id"]
    return {
        "FORK": fork_run,
        "R": trained["run_id"],
        "W0": trained["states"]["W0"],
        "OTHER": other,
        "CORRUPT": corrupt,
    }


BAD_INPUTS = {
    "missing model": (["interpolate", "models:/nope/1", "W0"], "no registered model 'nope'"),
    "missing version": (["lineage", "models:/mnist1d_cnn_mnist1d/999"], "does not exist"),
    "garbage uri": (["interpolate", "W0", "garbage"], "not a state URI"),
    "missing run": (["interpolate", "runs:/badid/x", "W0"], "run 'badid' does not exist"),
    "fork garbage": (["fork", "--from", "garbage"], "not a state URI"),
    "other architecture": (["interpolate", "W0", "OTHER"], "different architectures"),
    "mask of another architecture": (
        ["fork", "--run-id", "R", "--step", "20it", "--mask", "OTHER"],
        "mask tensor",
    ),
    "malformed params": (["train", "--params", "malformed.yaml"], "malformed YAML"),
    "unknown key in params": (["train", "--params", "unknown.yaml"], "train.stepz: unknown key"),
    "unknown key in --set": (["train", "-s", "train.bogus=1"], "train.bogus: unknown key"),
    "missing dataset": (
        ["train", "-s", "data.name=cifar10", "-s", "data.root=empty"],
        "cifar10 not found",
    ),
    "corrupted state": (["interpolate", "CORRUPT", "W0"], "is corrupted"),
    "fork corrupted state": (["fork", "--from", "CORRUPT"], "is corrupted"),
    "one seed": (["fork", "--run-id", "R", "--step", "20it", "--seeds", 1], "at least 2"),
    "step not registered": (["fork", "--run-id", "R", "--step", "30it"], "no state at step 30it"),
    "bad step": (["fork", "--run-id", "R", "--step", "soon"], "not a step"),
    "bad YAML in --set": (["train", "-s", "train.rewind_steps=[0it,100it"], "not valid YAML"),
    "zero steps": (["train", "-s", "train.steps=0it"], "train.steps is 0"),
    "zero tracking": (
        ["fork", "--run-id", "R", "--step", "20it", "--track-every", "0it"],
        "--track-every 0it is not a positive number of steps",
    ),
    "a fork run is not a training run": (
        ["fork", "--run-id", "FORK", "--step", "20it"],
        "is not a run of `lmctrack train`",
    ),
    "run JSON of the wrong shape": (
        ["fork", "--run-id", "list.json", "--step", "20it"],
        "names no run_id",
    ),
    "--out is a file": (["train", "-q", "--out", "params.yaml"], "--out params.yaml is a file"),
    "a copy count past any study": (  # was 20,000 claim files, then too many open files
        ["fork", "--run-id", "R", "--step", "20it", "--seeds", "100000"],
        "100000 copies make 4,999,950,000 pairs to train and interpolate",
    ),
    "override of a setting the run decided": (
        ["fork", "--run-id", "R", "--step", "20it", "-s", "train.lr=0.05"],
        "the source run was made with train.lr=0.1",
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_clear_line_and_loses_nothing(project, bad, case):
    args, message = BAD_INPUTS[case]
    before = project.versions()
    result = invoke(*[bad.get(a, a) if isinstance(a, str) else a for a in args])
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert message in lines[0]
    assert project.versions() == before
    assert not list((project.folder / ".lmctrack" / "claims").glob("*"))  # no claim left behind


def test_ui_fails_with_one_line_when_its_port_is_taken(project):
    """A taken port is a failure the caller (a script, DVC) must see: non-zero, one line."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = invoke("ui", "--port", port)
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert (
        result.output.strip() == f"error: port {port} on 127.0.0.1 is in use; pick another --port"
    )


@pytest.mark.parametrize("terminal, width", [(False, 200), (True, 30), (True, 60), (True, 200)])
def test_tables_never_cut_a_number(monkeypatch, terminal: bool, width: int) -> None:
    """Piped, too narrow or wide enough: every number is printed whole (no `…`)."""
    from io import StringIO

    from rich.console import Console

    from lmctrack.cli.options import table
    from lmctrack.execution import progress

    out = StringIO()
    monkeypatch.setattr(
        progress, "console", Console(file=out, width=width, force_terminal=terminal)
    )
    rows = [[1, 0.801234, "random pruning with a long name"], [2, 0.987654, "imp"]]
    table("IMP rewinding to 20it", ["level", "test accuracy mean", "criterion"], rows)
    text = out.getvalue()
    assert "…" not in text and "0.8012" in text and "0.9877" in text, text
    assert ("\t" in text) == (not terminal or width < 40), text  # plain rows where it cannot fit


def test_the_report_lists_trained_states_in_step_order(tmp_path: Path) -> None:
    """train.json is written with sorted keys (W100 before W25); the report goes by step."""
    from lmctrack.workflows.report import report

    states = {name: f"models:/m/{i}" for i, name in enumerate(["W0", "W25", "W100", "W500", "W_T"])}
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "train.json").write_text(json.dumps({"states": states}, sort_keys=True))
    report(tmp_path, tmp_path / "report")
    listed = re.findall(r"^- (W\w+):", (tmp_path / "report" / "report.md").read_text(), re.M)
    assert listed == ["W0", "W25", "W100", "W500", "W_T"]
