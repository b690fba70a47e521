"""`lmctrack find-k` end to end on a tiny project (real trainings, a real sqlite store): the
probes' verdicts follow their intervals, every copy is a registered state descending from the
run's Wk, the `instability` sweep reuses the forks, the cost is counted, outputs are written,
and bad input ends in one line."""

from __future__ import annotations

import json

import pytest
import torch
from test_cli import invoke, ok

import lmctrack as lmc
from lmctrack.config import schema
from lmctrack.engine import earliest
from lmctrack.workflows import fork, jobs
from lmctrack.workflows.find_k import candidates
from lmctrack.workflows.instability import instability
from lmctrack.workflows.training_run import registered_run

# End to end: real trainings, stores or subprocesses (seconds to minutes each).
pytestmark = pytest.mark.slow

PNG = b"\x89PNG\r\n\x1a\n"
CANDIDATES = ["0it", "10it", "20it", "50it"]


@pytest.fixture(scope="module")
def project(new_project):
    """3 copies per probe, one more at a time while undecided, up to 6; a BatchNorm network, so
    that the run taken as W0's copy is held to its running statistics too."""
    project = new_project(
        "findk",
        model={"name": "mnist1d_cnn_bn"},
        instability={"inits": 1, "copies": 3, "max_copies": 6, "candidates": CANDIDATES},
    )
    with project.entered():
        yield project


@pytest.fixture(scope="module")
def printed(project) -> dict:
    return ok("find-k", "-q", "--out", "outputs/find_k")


def test_each_probe_is_decided_by_its_interval_and_k_star_is_the_earliest_stable(printed):
    search = printed["search"]
    assert search["candidates"] == [0, 10, 20, 50]
    probes = search["probes"]
    assert probes[0]["k"] == 0  # the first probe is the first candidate
    for p in probes:
        assert 3 <= p["copies"] <= 6 and len(p["barriers"]) == p["copies"] * (p["copies"] - 1) // 2
        assert p["low"] <= p["mean"] <= p["high"]
        assert p["decision"] == earliest.decide(p["low"], p["high"], search["threshold"])
    stable = sorted(p["k"] for p in probes if p["decision"] == earliest.STABLE)
    assert search["k_star"] == (stable[0] if stable else None)
    # the run W0 -> W_T is one of k = 0's copies: one training fewer than the copies forked
    assert printed["trainings"] == 1 + sum(p["copies"] for p in probes) - 1
    assert printed["run_as_copy"] is True
    assert printed["grid_trainings"] == 1 + 4 * 3  # the sweep: 1 init, 4 candidates x 3 copies


def test_the_find_k_run_links_the_training_and_every_fork_it_probed(project, printed):
    store = project.store
    note = store.client.get_run(printed["run_id"]).data.tags["mlflow.note.content"]
    for run_id in [printed["train_run"], *printed["fork_runs"]]:
        assert f"/runs/{run_id})" in note


def test_every_copy_descends_from_the_runs_wk_and_the_sweep_reuses_the_forks(project, printed):
    ctx = project.context()
    run = registered_run(ctx.store, printed["train_run"], ctx.total_steps)
    assert set(candidates(ctx)) <= set(run.states)  # one training registered every candidate
    probed = sorted({p["k"] for p in printed["search"]["probes"]})
    for k, fork_run in zip(probed, printed["fork_runs"], strict=True):
        fork = json.loads(ctx.store.run_artifact(fork_run, "fork.json").read_text())
        forked = fork["copies"][1:] if k == 0 else fork["copies"]
        for uri in forked:
            parents = [node.info.uri for node in ctx.store.lineage(uri).parents]
            assert parents == [run.at(k)]
        if k == 0:  # seed 0, the run's own noise: the run's W_T, W0 among its ancestors
            assert fork["seeds"][0] == 0 and fork["copies"][0] == run.final
            untrained = {1, 2, 3} - set(fork["seeds"])
    versions = project.versions()
    steps = ",".join(f"{k}it" for k in probed)
    sweep = instability(project.context(f"instability.rewind_steps=[{steps}]"))
    # the sweep forks seeds 1..3 everywhere: at k = 0 it trains those find-k took from the run
    assert len(project.versions()) == len(versions) + len(untrained)
    assert sweep.reused_forks == len(probed) - 1  # each later probe's first 3 copies


def test_the_run_taken_as_a_copy_of_w0_is_that_copy_bit_for_bit(project, printed):
    ctx = project.context()
    assert_run_is_its_copy(ctx, registered_run(ctx.store, printed["train_run"], ctx.total_steps))


def test_with_augmentation_too_the_run_is_its_copy_of_w0(new_project):
    project = new_project(
        "findk_augment", data={"name": "digits", "augment": True}, model={"name": "lenet_300_100"}
    )
    assert_run_is_its_copy(project.context(), lmc.train(params=project.params_file))


def assert_run_is_its_copy(ctx, run) -> None:
    """Forking W0 with the run's own noise (seed 0 for data order and augmentation) retrains the
    run: the same W_T to the bit, which is why find-k takes the run instead."""
    plan = fork.plan(ctx, run.w0, seeds=[0, 1])
    trained = jobs.train_all(ctx, fork.copy_trainings(ctx, plan, {})[:1])
    weights = trained[plan.copy_keys[0]].weights
    final = ctx.store.load_state(run.final).weights
    assert weights.keys() == final.keys()
    assert all(torch.equal(weights[name], final[name]) for name in final)


def test_outputs_for_dvc(project, printed):
    out = project.folder / "outputs" / "find_k"
    assert (out / "find_k.png").read_bytes()[:8] == PNG
    metrics = json.loads((out / "find_k_metrics.json").read_text())
    assert metrics["k_star"] == printed["search"]["k_star"]
    assert metrics["fraction"] == pytest.approx(printed["trainings"] / printed["grid_trainings"])
    rule = printed["search"]["rule"]  # the rule and its confidence named with every result
    assert rule == {"confidence": 0.95, "looks": 4, "name": earliest.Rule.name}
    assert metrics["confidence"] == 0.95 and metrics["rule"].startswith(rule["name"])
    lines = (out / "find_k.csv").read_text().splitlines()
    assert lines[0] == "k,role,copies,pairs,mean,low,high,decision"
    assert len(lines) == 1 + len(printed["search"]["probes"])
    assert json.loads((out / "find_k.json").read_text())["run_id"] == printed["run_id"]


def test_stable_at_the_first_candidate_stops_after_one_probe(project, printed):
    versions = project.versions()
    result = lmc.find_k(params=project.params_file, sets={"instability.stable_threshold": 0.99})
    assert [p.k for p in result.search.probes] == [0] and result.k_star == 0
    assert result.trainings == 1 + 2 and project.versions() == versions  # all reused


def test_imp_finds_the_earliest_stable_k_of_the_subnetwork_and_says_if_it_matches(project):
    sets = {"instability.candidates": ["0it", "20it"]}
    result = lmc.find_k(imp=True, density=0.8, params=project.params_file, sets=sets)
    ctx = project.context()
    net = result.subnetwork
    assert net is not None and net.level == 1 and net.density == pytest.approx(0.8, abs=0.01)
    assert set(net.drop) == {p.k for p in result.search.probes}
    assert not result.run_as_copy  # the subnetwork at k = 0 is (W0, m): the run is not its copy
    for fork_run in result.fork_runs:
        fork = json.loads(ctx.store.run_artifact(fork_run, "fork.json").read_text())
        assert ctx.store.describe(fork["source"]).tags[schema.ROLE] == schema.MASK
    if result.k_star is not None:
        assert ("not matching" in result.summary()) != net.matching(result.k_star)
    assert result.grid_trainings == 1 + 2 * (3 + 2)  # per k: 3 copies, IMP levels 0 and 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-s", "instability.candidates=[0it,100it]"], "before T = 100it"),
        (["-s", "instability.max_copies=2"], "below instability.copies"),
        (["-s", "instability.copies=2", "-s", "instability.max_copies=2"], "at least 3 copies"),
        (["--density", "0.5"], "add --imp"),
        (["--imp", "--density", "1.5"], "not a fraction"),
    ],
)
def test_bad_input_is_one_line(project, args, message):
    result = invoke("find-k", "-q", *args)
    assert result.exit_code != 0
    assert message in result.output and len(result.output.strip().splitlines()) == 1


def test_default_candidates_are_0_and_powers_of_two_up_to_half_of_t(project):
    assert candidates(project.context("instability.candidates=null")) == [0, 1, 2, 4, 8, 16, 32]
