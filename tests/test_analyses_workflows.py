"""The analyses workflows on a real sqlite store: Hessian diagonal and loss-landscape planes of
states registered by a real (tiny) training run."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from lmctrack.config.params import ModelConfig, Params
from lmctrack.engine.evaluate import evaluate, load_into
from lmctrack.engine.models import build_model, prunable_names
from lmctrack.engine.prune import full_mask, prune_to_density
from lmctrack.engine.state import State
from lmctrack.errors import LmcError
from lmctrack.execution.progress import Board
from lmctrack.results.analyses import Hessian, Landscape
from lmctrack.store import Store
from lmctrack.workflows.analyses import DIAGONAL_FILE, hessian, plane, random_plane
from lmctrack.workflows.common import make_context
from lmctrack.workflows.training_run import train_run

# End to end: real trainings, stores or subprocesses (seconds to minutes each).
pytestmark = pytest.mark.slow

torch.set_num_threads(1)
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    """A 60-step training (W0, W20, W_T), a sparse copy of W_T, and a state of another width."""
    root = tmp_path_factory.mktemp("analyses")
    params = Params.model_validate(
        {
            "data": {"name": "mnist1d", "num_samples": 600, "root": str(root / "data")},
            "model": {"name": "mnist1d_cnn", "width": 8},
            "train": {"steps": "60it", "rewind_steps": ["20it"], "batch_size": 50, "device": "cpu"},
            "instability": {"bn": "interpolate"},
        }
    )
    store = Store(f"sqlite:///{root / 'mlflow.db'}")
    ctx = make_context(params, board=Board(None), store=store)
    run = train_run(ctx)
    final = store.load_state(run.final)
    mask = prune_to_density(
        final.weights, full_mask(final.weights, prunable_names(ctx.template())), 0.3
    )
    other = build_model(ModelConfig(name="mnist1d_cnn", width=4), 10, (40,), 0).state_dict()
    with store.run(ctx.model_name, "fixtures", tags={"kind": "test"}) as fixtures:
        sparse = fixtures.save_state(
            State(final.weights, mask),
            model_name=ctx.model_name,
            role="mask",
            step=run.total,
            tags={"state": "W_T"},
            parents=[run.final],
        )
        narrow = fixtures.save_state(
            State(other), model_name="narrow_cnn", role="init", step=0, tags={}
        )
    return ctx, run, sparse, mask, narrow


def artifacts(store: Store, run_id: str, folder: str | None = None) -> set[str]:
    return {f.path for f in store.client.list_artifacts(run_id, folder)}


def is_png(path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG


def test_hessian_of_a_dense_state_is_logged_with_its_diagonal(setup):
    ctx, run, *_ = setup
    result = hessian(ctx, run.final, samples=8, limit=200, seed=0)
    store, s = ctx.store, result.summary
    names = [n for n, _ in ctx.template().named_parameters()]
    assert {"mean", "max", "min", "trace"} <= set(s)
    assert {f"layer_mean/{n}" for n in names} <= set(s)
    assert all(math.isfinite(v) for v in s.values())
    assert s["max"] > 0 and s["min"] <= s["mean"] <= s["max"]
    assert result.examples == 200 and result.density is None

    diag = load_file(str(store.run_artifact(result.run_id, DIAGONAL_FILE)))
    assert sorted(diag) == sorted(names)
    assert s["trace"] == pytest.approx(sum(float(t.double().sum()) for t in diag.values()))
    assert store.run_metrics(result.run_id)["trace"] == pytest.approx(s["trace"])
    assert artifacts(store, result.run_id) == {"hessian.json", DIAGONAL_FILE, "plots"}
    assert artifacts(store, result.run_id, "plots") == {"plots/hessian.png"}
    logged = json.loads(store.run_artifact(result.run_id, "hessian.json").read_text())
    assert logged["summary"] == s and logged["uri"] == run.final
    assert Hessian.from_dict(logged) == result
    assert store.run_tags(result.run_id)["kind"] == "hessian"
    assert store.client.get_run(result.run_id).data.params == {
        "network": "mnist1d_cnn",
        "data": "mnist1d",
        "uri": run.final,
        "samples": "8",
        "limit": "200",
        "seed": "0",
    }


def test_hessian_of_a_sparse_state_is_zero_on_pruned_weights(setup):
    ctx, _, sparse, mask, _ = setup
    result = hessian(ctx, sparse, samples=4, limit=100, seed=1)
    diag = load_file(str(ctx.store.run_artifact(result.run_id, DIAGONAL_FILE)))
    for name, keep in mask.items():
        assert bool((diag[name][~keep] == 0).all())
        assert bool((diag[name][keep] != 0).any())
    kept = torch.cat([diag[n][mask[n]] if n in mask else diag[n].reshape(-1) for n in diag])
    assert result.summary["mean"] == pytest.approx(float(kept.double().mean()))
    assert result.density == pytest.approx(0.3, abs=1e-3)


def test_plane_through_three_states(setup, tmp_path):
    ctx, run, *_ = setup
    ctx = dataclasses.replace(ctx, out=tmp_path)
    origin, a, b = run.at(20), run.final, run.w0
    result = plane(ctx, origin, a, b, grid=5, margin=0.2, split="test")
    assert result.bn == "interpolate" and result.split == "test" and result.kind == "plane"
    assert len(result.xs) == len(result.ys) == 5 and len(result.error) == 5

    states = {uri: ctx.store.load_state(uri) for uri in (origin, a, b)}
    names = [n for n, _ in ctx.template().named_parameters()]

    def distance(x: str, y: str) -> float:
        wx, wy = states[x].weights, states[y].weights
        return math.sqrt(sum(float((wx[n] - wy[n]).double().pow(2).sum()) for n in names))

    points = result.points
    assert (points["origin"].x, points["origin"].y) == (0.0, 0.0)
    assert points["a"].x == pytest.approx(distance(a, origin)) and points["a"].y == 0.0
    assert points["b"].y > 0
    assert math.hypot(points["b"].x, points["b"].y) == pytest.approx(distance(b, origin))
    assert points["origin"].name == "W20 v2" and points["a"].uri == a

    own = evaluate(load_into(ctx.template(), states[origin]), ctx.dataset, "test")
    assert (points["origin"].error, points["origin"].loss) == (own.error, own.loss)
    at_a = evaluate(load_into(ctx.template(), states[a]), ctx.dataset, "test")
    assert points["a"].loss == pytest.approx(at_a.loss, rel=1e-4)
    s = result.summary
    assert s["error_min"] <= own.error <= s["error_max"]
    assert s["distance_a"] == pytest.approx(points["a"].x)
    assert 0 < s["angle_ab_degrees"] < 180

    store, run_id = ctx.store, result.run_id
    assert artifacts(store, run_id) == {"plane.json", "plane_grid.json", "plots"}
    assert artifacts(store, run_id, "plots") == {"plots/plane.png", "plots/plane_loss.png"}
    grid = json.loads(store.run_artifact(run_id, "plane_grid.json").read_text())
    assert len(grid["data"]) == 25
    assert store.run_metrics(run_id)["origin_error"] == own.error
    assert store.client.get_run(run_id).data.params["bn"] == "interpolate"
    assert is_png(tmp_path / "plane.png")
    assert Landscape.from_dict(json.loads((tmp_path / "plane.json").read_text())) == result
    assert (
        Landscape.from_dict(json.loads(store.run_artifact(run_id, "plane.json").read_text()))
        == result
    )


def test_random_plane_around_one_state(setup):
    ctx, run, *_ = setup
    result = random_plane(ctx, run.final, grid=3, span=0.5, seed=0, split="train")
    assert result.xs == result.ys == [-0.5, 0.0, 0.5]
    center = result.points["center"]
    own = evaluate(load_into(ctx.template(), ctx.store.load_state(run.final)), ctx.dataset, "train")
    assert (center.x, center.y, center.loss) == (0.0, 0.0, own.loss)
    assert result.loss[0][0] != own.loss
    assert artifacts(ctx.store, result.run_id, "plots") == {
        "plots/random_plane.png",
        "plots/random_plane_loss.png",
    }
    assert ctx.store.run_tags(result.run_id)["kind"] == "random_plane"


def test_bad_inputs_are_clear_errors(setup):
    ctx, run, _, _, narrow = setup
    with pytest.raises(LmcError, match="different architectures"):
        plane(ctx, run.at(20), run.final, narrow, grid=3)
    with pytest.raises(LmcError, match="does not fit the model"):
        hessian(ctx, narrow, samples=2, limit=10)
    with pytest.raises(LmcError, match="split 'valid'"):
        plane(ctx, run.at(20), run.final, run.w0, split="valid")
    with pytest.raises(LmcError, match="span"):
        random_plane(ctx, run.final, span=0)
    with pytest.raises(LmcError, match="three distinct states"):
        plane(ctx, run.final, run.final, run.w0, grid=3)
    with pytest.raises(LmcError, match="at least 1 sample"):
        hessian(ctx, run.final, samples=0)
