"""Alignment as tracked work: `align` registers B permuted to match A with both parents and its
permutation, `transport` carries a mask across inits, `connect` compares naive, aligned and
aligned+REPAIR paths (for a pair, over inits and over widths), and `--bn repair` is a path policy
recorded with its results. Tiny MLPs (width 16, 100 steps) on a real sqlite store."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from lmctrack.cli import app
from lmctrack.config import schema
from lmctrack.engine.align import apply_permutation, check_function, permutation_spec
from lmctrack.engine.interpolate import linear_path
from lmctrack.engine.models import prunable_names
from lmctrack.engine.prune import full_mask, layer_densities, magnitude_prune
from lmctrack.engine.state import State
from lmctrack.errors import LmcError
from lmctrack.workflows.alignment import align, load_permutation, transport
from lmctrack.workflows.connect import Connect, connect, connect_two
from lmctrack.workflows.instability import sweep_seeds
from lmctrack.workflows.training_run import train_runs

# End to end: real trainings, stores or subprocesses (seconds to minutes each).
pytestmark = pytest.mark.slow

MLP = {"name": "mnist1d_mlp", "width": 16}


@pytest.fixture(scope="module")
def project(new_project):
    return new_project(
        "align", model=MLP, instability={"splits": ["test", "train"]}, align={"inits": 2}
    )


@pytest.fixture(scope="module")
def ctx(project):
    return project.context()


@pytest.fixture(scope="module")
def runs(ctx):
    """Two networks trained from inits 0 and 1."""
    return train_runs(ctx, sweep_seeds(ctx, 2))


@pytest.fixture(scope="module")
def aligned(ctx, runs):
    return align(ctx, runs[0].final, runs[1].final, method="weight", seed=0)


def invoke(project, *args: object):
    with project.entered():
        return CliRunner().invoke(app, [str(a) for a in args])


def test_align_registers_b_permuted_with_both_parents_and_keeps_its_function(ctx, runs, aligned):
    a_uri, b_uri = runs[0].final, runs[1].final
    info = ctx.store.describe(aligned.uri)
    assert info.tags["role"] == schema.ALIGNED and info.parents == [b_uri, a_uri]
    assert info.tags[schema.ALIGN_METHOD] == "weight" and info.tags[schema.ALIGN_SEED] == "0"
    assert float(info.tags[schema.MAX_LOGIT_DIFF]) == pytest.approx(aligned.max_logit_diff)
    assert info.tags["step"] == "100" and not aligned.reused
    b, permuted = ctx.store.load_state(b_uri), ctx.store.load_state(aligned.uri)
    assert any(not torch.equal(b.weights[k], permuted.weights[k]) for k in b.weights)
    x = ctx.dataset.test.x[:500]
    assert check_function(ctx.template(), b.weights, permuted.weights, x) < 1e-4
    assert ctx.store.run_tags(aligned.run_id)[schema.KIND] == schema.KIND_ALIGN


def test_the_stored_permutation_round_trips(ctx, runs, aligned):
    perm = load_permutation(ctx.store, aligned.uri)
    spec = permutation_spec(ctx.template(), ctx.dataset.input_shape)
    assert set(perm) == set(spec.sizes) and all(p.dtype == torch.int64 for p in perm.values())
    b = ctx.store.load_state(runs[1].final)
    weights, _ = apply_permutation(spec, perm, b.weights)
    stored = ctx.store.load_state(aligned.uri).weights
    assert all(torch.equal(weights[k], stored[k]) for k in stored)
    with pytest.raises(LmcError, match="not an aligned state"):
        load_permutation(ctx.store, runs[1].final)


def test_the_same_alignment_is_reused_and_another_method_is_new(project, ctx, runs, aligned):
    before = project.versions()
    again = align(ctx, runs[0].final, runs[1].final, method="weight", seed=0)
    assert again.reused and again.uri == aligned.uri and project.versions() == before
    other = align(ctx, runs[0].final, runs[1].final, method="activation")
    assert not other.reused and other.uri != aligned.uri and other.method == "activation"
    assert ctx.store.describe(other.uri).tags[schema.ALIGN_METHOD] == "activation"


def test_states_of_different_architectures_are_refused(ctx, runs):
    wide = train_runs(ctx_width(ctx, 32), sweep_seeds(ctx, 1))[0]
    with pytest.raises(LmcError, match="different architectures") as e:
        align(ctx, runs[0].final, wide.final)
    assert "\n" not in str(e.value)


def ctx_width(ctx, width: int):
    from lmctrack.workflows.connect import _with

    return _with(ctx, width=width)


def _ticket(ctx, runs) -> str:
    """A subnetwork of init 0: W20 with the mask of one IMP-like level (20% of |W_T| pruned)."""
    trained = ctx.store.load_state(runs[0].final).weights
    names = prunable_names(ctx.template())
    mask = magnitude_prune(trained, full_mask(trained, names), 0.2)
    with ctx.store.run(ctx.model_name, "ticket") as run:
        return run.save_state(
            State(ctx.store.load_state(runs[0].at(20)).weights, mask),
            model_name=ctx.model_name,
            role=schema.MASK,
            step=20,
            tags={schema.LEVEL: "1"},
            parents=[runs[0].at(20)],
        )


def test_transport_carries_a_mask_to_another_init_with_density_and_lineage(ctx, runs, aligned):
    ticket = _ticket(ctx, runs)
    sub = ctx.store.load_state(ticket)
    result = transport(ctx, ticket, runs[1].at(20), by=aligned.uri)
    moved = ctx.store.load_state(result.uri)
    assert torch.equal(
        moved.weights["fc.weight"], ctx.store.load_state(runs[1].at(20)).weights["fc.weight"]
    )
    assert result.density == pytest.approx(sub.density())
    assert layer_densities(moved.mask) == pytest.approx(layer_densities(sub.mask))
    info = ctx.store.describe(result.uri)
    assert info.parents == [runs[1].at(20), ticket, aligned.uri]
    assert info.tags["role"] == schema.MASK and info.tags[schema.MASK_SOURCE] == ticket
    # Permuted like B was to match A, the transported mask is A's mask exactly.
    spec = permutation_spec(ctx.template(), ctx.dataset.input_shape)
    perm = load_permutation(ctx.store, aligned.uri)
    _, mask = apply_permutation(spec, perm, moved.weights, moved.mask)
    assert all(torch.equal(mask[k], sub.mask[k]) for k in sub.mask)
    again = transport(ctx, ticket, runs[1].at(20), by=aligned.uri)
    assert again.reused and again.uri == result.uri


def test_transport_needs_a_mask(ctx, runs):
    with pytest.raises(LmcError, match="has no mask"):
        transport(ctx, runs[0].final, runs[1].final)


@pytest.mark.slow
def test_connect_two_states_logs_naive_aligned_and_repair_side_by_side(ctx, runs, aligned):
    result = connect_two(ctx, runs[0].final, runs[1].final)
    assert list(result.paths) == list(schema.PAIR_KINDS) and result.aligned == aligned.uri
    assert result.paths["naive"].b == runs[1].final
    assert result.paths["aligned"].b == result.paths["aligned_repair"].b == aligned.uri
    assert result.paths["aligned_repair"].bn == "repair" and result.paths["naive"].bn == "reset"
    for pair in result.paths.values():
        assert set(pair.curves) == {"test", "train"}
        tags = ctx.store.run_tags(pair.run_id)
        assert tags[schema.KIND] == schema.KIND_PAIR
        assert ctx.store.run_metrics(pair.run_id)["test.error_barrier"] == pytest.approx(
            pair.error_barrier("test")
        )
    ends = [result.paths[k].endpoint_errors("test") for k in schema.PAIR_KINDS]
    assert ends[0] == pytest.approx(ends[1])  # the permuted B errs exactly like B


def test_bn_repair_is_a_path_policy_recorded_with_the_path(ctx, runs, aligned):
    a, b = ctx.store.load_state(runs[0].final), ctx.store.load_state(aligned.uri)
    path = linear_path(ctx.template(), a, b, ctx.dataset, alphas=5, bn="repair", bn_limit=500)
    plain = linear_path(ctx.template(), a, b, ctx.dataset, alphas=5, bn="interpolate")
    assert path.bn == "repair"
    assert path.curves["test"]["error"][0] == pytest.approx(plain.curves["test"]["error"][0])
    assert path.curves["test"]["error"][-1] == pytest.approx(plain.curves["test"]["error"][-1])
    assert path.curves["test"]["error"][2] != plain.curves["test"]["error"][2]


@pytest.mark.slow
def test_cli_align_interpolate_repair_and_bad_input(project, runs, aligned):
    out = invoke(project, "align", runs[0].final, runs[1].final, "--method", "weight", "--json")
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["uri"] == aligned.uri
    result = invoke(project, "interpolate", runs[0].final, aligned.uri, "--bn", "repair")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["bn"] == "repair"
    both = invoke(project, "interpolate", runs[0].final, runs[1].final, "--align", "weight")
    assert both.exit_code == 0, both.output
    data = json.loads(both.stdout)
    for kind in ("naive", "aligned"):  # the headline, named as the connect run's metrics
        errors = data["paths"][kind]["curves"]["test"]["error"]
        barrier = max(errors) - (errors[0] + errors[-1]) / 2
        assert data["headline"][f"{kind}.test.error_barrier"] == pytest.approx(barrier)
    bad = invoke(project, "align", runs[0].final, runs[1].final, "--method", "hungarian")
    assert bad.exit_code != 0 and "align.method" in bad.output
    half = invoke(project, "connect", runs[0].final)
    assert half.exit_code != 0 and "give two states" in half.output


@pytest.mark.slow
def test_connect_sweeps_inits_and_widths_and_reuses_the_sweep(project, tmp_path):
    sweep = project.context("align.widths=[8,16]", "instability.splits=[test]")
    sweep.out = tmp_path
    result = connect(sweep)
    assert result.widths == [8, 16] and result.inits == [0, 1] and len(result.connections) == 2
    for width in (8, 16):
        for kind in schema.PAIR_KINDS:
            assert result.barrier(kind, "test", width).n == 1
    written = {p.name for p in tmp_path.iterdir()}
    assert {"connect.json", "connect.csv", "connect_metrics.json"} <= written
    assert {"connect_bars.png", "connect_width.png"} <= written
    assert Connect.from_dict(json.loads((tmp_path / "connect.json").read_text())) == result
    plots = project.store.client.list_artifacts(result.run_id, "plots")
    assert {p.path for p in plots} == {"plots/connect_bars.png", "plots/connect_width.png"}
    kinds = sorted(
        project.store.run_tags(c)[schema.KIND] for c in project.store.child_runs(result.run_id)
    )
    assert kinds == [schema.KIND_PAIR] * 6
    again = connect(project.context("align.widths=[8,16]", "instability.splits=[test]"))
    assert again.reused and again.run_id == result.run_id


@pytest.mark.slow
def test_cli_connect_two_states_and_transport(project, ctx, runs, aligned, tmp_path):
    out = invoke(project, "connect", runs[0].final, runs[1].final, "--out", tmp_path, "--json")
    assert out.exit_code == 0, out.output
    printed = json.loads(out.stdout)
    assert printed["aligned"] == aligned.uri and list(printed["paths"]) == list(schema.PAIR_KINDS)
    assert json.loads((tmp_path / "connect.json").read_text())["aligned"] == aligned.uri
    ticket = _ticket(ctx, runs)
    moved = invoke(project, "transport", "--from", ticket, "--to", runs[1].at(20), "--json")
    assert moved.exit_code == 0, moved.output
    uri = json.loads(moved.stdout)["uri"]
    assert ctx.store.describe(uri).parents[:2] == [runs[1].at(20), ticket]
    dense = invoke(project, "transport", "--from", runs[0].final, "--to", runs[1].final)
    assert dense.exit_code != 0 and "has no mask" in dense.output
