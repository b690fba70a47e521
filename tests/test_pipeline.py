"""`dvc repro` end to end on a reduced copy of the default pipeline, with real DVC and MLflow."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _run(cwd: Path, *args: str) -> str:
    # the project's own store, as on a fresh machine: no tracking URI from the environment
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {"NO_COLOR": "1"}
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def _ran(log: str) -> set[str]:
    return {line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage '")}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A fresh DVC project holding the real dvc.yaml and the reduced params, reproduced once."""
    root = tmp_path_factory.mktemp("project")
    shutil.copy(ROOT / "dvc.yaml", root / "dvc.yaml")
    shutil.copy(ROOT / "tests" / "pipeline" / "params.yaml", root / "params.yaml")
    _run(root, "git", "init", "-q")
    _run(root, sys.executable, "-m", "dvc", "init", "-q")
    _run(root, sys.executable, "-m", "dvc", "config", "core.analytics", "false")
    root.joinpath("log.txt").write_text(_run(root, sys.executable, "-m", "dvc", "repro"))
    return root


def test_repro_produces_every_output(project: Path):
    assert _ran(project.joinpath("log.txt").read_text()) == {
        "data",
        "train",
        "fork",
        "imp",
        "instability",
        "sparse",
        "report",
    }
    train = json.loads((project / "outputs/train/train.json").read_text())
    assert set(train["states"]) == {"W0", "W50", "W_T"}
    forks = json.loads((project / "outputs/fork/fork.json").read_text())["forks"]
    assert [f["k"] for f in forks] == [0, 50]  # --step all: every Wk of the run, W_T excluded
    assert [f["source"] for f in forks] == [train["states"]["W0"], train["states"]["W50"]]
    sweep = json.loads((project / "outputs/instability/instability.json").read_text())
    assert {(r["k"], r["split"]) for r in sweep["rows"]} == {
        (0, "test"),
        (0, "train"),
        (50, "test"),
        (50, "train"),
    }
    assert all(r["barrier"]["n"] == 2 for r in sweep["rows"])  # 2 inits x 1 pair of copies
    # the sweep reused the forks of the train stage's run (init 0) instead of training them again
    assert sweep["reused_forks"] == 2
    imp = json.loads((project / "outputs/imp/imp.json").read_text())
    assert [round(r["density"], 6) for r in imp["rows"]] == [0.8, 0.64]
    assert all(r["dense"]["n"] == 2 for r in imp["rows"])  # 2 replicates
    sparse = json.loads((project / "outputs/sparse/sparse.json").read_text())
    assert {(r["k"], r["level"]) for r in sparse["rows"]} == {(0, 2), (50, 2)}
    # the claim holds exactly when, at each density, the stable k are the matching k (test split)
    test = [r for r in sparse["rows"] if r["split"] == "test"]
    agree = [
        [r["k"] for r in test if r["level"] == level and r["stable"]]
        == [r["k"] for r in test if r["level"] == level and r["matching"]]
        for level in {r["level"] for r in test}
    ]
    assert sparse["claim_holds"] is all(agree)
    # the soup of each fork's copies at every k, and the second verdict from those numbers
    assert [s["k"] for s in sweep["soups"]] == [0, 50]
    stable = {r["k"]: r["stable"] for r in sweep["rows"] if r["split"] == "test"}
    soups_agree = all(s["matching"] == stable[s["k"]] for s in sweep["soups"])
    pngs = ("instability/instability.png", "instability/soup.png", "imp/imp.png")
    for png in (*pngs, "sparse/earliest.png"):
        assert (project / "outputs" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "k,split,mean" in (project / "outputs/instability/instability.csv").read_text()
    summary = json.loads((project / "outputs/report/summary.json").read_text())
    assert "dense.k0.test.barrier_mean" in summary and "claim_holds" in summary
    report = (project / "outputs/report/report.md").read_text()
    assert "IMP subnetworks are matching exactly at the k where they are stable" in report
    assert summary["soup_claim_holds"] is soups_agree
    assert "matches the mean copy" in report and "| soup error |" in report
    assert (project / ".lmctrack" / "mlflow.db").is_file()  # the store at the project root


def test_second_repro_does_nothing_and_one_param_reruns_its_dependents(project: Path):
    log = _run(project, sys.executable, "-m", "dvc", "repro")
    assert _ran(log) == set()
    params = project / "params.yaml"
    params.write_text(params.read_text().replace("  levels: 2\n", "  levels: 1\n"))
    assert _ran(_run(project, sys.executable, "-m", "dvc", "repro")) == {"imp", "sparse", "report"}


def test_metrics_show_reads_the_metrics(project: Path):
    out = _run(project, sys.executable, "-m", "dvc", "metrics", "show", "--json")
    metrics = json.loads(out[out.index("{") :])
    assert any(
        "summary.json" in path
        for workspace in metrics.values()
        for path in workspace.get("data", {})
    )


def test_plots_and_experiments_show_the_barrier_against_k_and_accuracy_against_density(
    project: Path,
):
    """On a clone (the follow-up pipeline, not reproduced, beside the main one): no plot fails
    to load, and the paper's two plots have data; `dvc exp show` answers."""
    shutil.copytree(ROOT / "pipelines", project / "pipelines", dirs_exist_ok=True)
    out = _run(project, sys.executable, "-m", "dvc", "plots", "show", "--json")
    plots = json.loads(out[out.index("{") :])
    assert not plots.get("errors"), plots.get("errors")
    for name, x in (("barrier_vs_k", "k"), ("accuracy_vs_density", "density")):
        (plot,) = plots["data"][name]
        assert all(x in row for row in plot["content"]["data"]["values"]), name
        assert len(plot["content"]["data"]["values"]) >= 2, name
    _run(project, "git", "add", "dvc.yaml", "dvc.lock", "params.yaml", "pipelines")
    _run(project, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "repro")
    shown = _run(project, sys.executable, "-m", "dvc", "exp", "show", "--json")
    assert re.search(r'"k\d+\.test\.mean": \d', shown), shown[-2000:]  # the barrier at each k
