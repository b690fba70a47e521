"""Hessian diagonal / trace estimators, loss-landscape planes and the plots."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from lmctrack.config.params import ModelConfig
from lmctrack.config.schema import Stats
from lmctrack.engine.data import Split, TensorDataset
from lmctrack.engine.evaluate import evaluate, load_into
from lmctrack.engine.hessian import (
    hessian_diagonal,
    hutchinson_diagonal,
    loss_hvp,
    summary,
    trace,
)
from lmctrack.engine.interpolate import PathResult, recompute_bn
from lmctrack.engine.landscape import (
    Evaluation,
    Plane,
    filter_normalized_direction,
    plane,
    random_directions_plane,
)
from lmctrack.engine.models import build_model, prunable_names
from lmctrack.engine.prune import full_mask, prune_to_density
from lmctrack.engine.state import State
from lmctrack.errors import LmcError
from lmctrack.results.analyses import Hessian, Landscape, PlanePoint
from lmctrack.results.paper import Earliest, SparseRow, SparseSweep, Sweep, SweepRow, to_dict
from lmctrack.results.plots import (
    DPI,
    plot_imp_density,
    plot_imp_rewind,
    plot_instability,
    plot_path,
    plot_plane,
    save,
)

torch.set_num_threads(1)
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def dataset() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 40, generator=g)
    y = (x[:, :10].sum(1) > 0).long() + 2 * (x[:, 10:20].sum(1) > 0).long()
    return TensorDataset("toy", Split(x[:64], y[:64]), Split(x[64:], y[64:]), num_classes=10)


def model(name: str = "mnist1d_mlp", width: int = 3, seed: int = 0):
    return build_model(ModelConfig(name=name, width=width), 10, (40,), init_seed=seed)


def state_of(net, mask=None) -> State:
    return State({k: v.detach().clone() for k, v in net.state_dict().items()}, mask)


def exact_hessian(net, dataset) -> torch.Tensor:
    """The full Hessian of the mean train cross-entropy, over all parameters flattened."""
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for _, p in net.named_parameters()]
    x, y = dataset.train.x, dataset.train.y

    def loss(flat: torch.Tensor) -> torch.Tensor:
        parts = flat.split([math.prod(s) for s in shapes])
        params = {n: t.reshape(s) for n, t, s in zip(names, parts, shapes, strict=True)}
        return F.cross_entropy(functional_call(net, params, (x,)), y)

    flat = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    return torch.autograd.functional.hessian(loss, flat)


def flat(diag: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in diag.values()])


# --- Hessian -----------------------------------------------------------------------------------


def test_hutchinson_converges_to_the_exact_hessian_diagonal_and_trace(dataset):
    net = model()
    exact = exact_hessian(net, dataset)
    samples = 300
    diag = hessian_diagonal(net, dataset, samples=samples, limit=64, batch_size=40, seed=0)
    off = exact - torch.diag(exact.diagonal())
    sigma = (off.pow(2).sum(1) / samples).sqrt()  # std of the estimator for Rademacher z
    err = (flat(diag) - exact.diagonal()).abs()
    assert bool((err <= 5 * sigma + 1e-6).all())
    assert (flat(diag) - exact.diagonal()).norm() < 0.25 * exact.diagonal().norm()
    trace_sigma = math.sqrt(2 * float(off.pow(2).sum()) / samples)
    assert abs(trace(diag) - float(exact.trace())) <= 5 * trace_sigma


def test_estimator_is_exact_for_a_quadratic_with_diagonal_hessian():
    d = {"w": torch.tensor([0.5, -2.0, 3.0]), "v": torch.tensor([[1.0, 4.0]])}
    params = {"w": torch.ones(3), "v": torch.full((1, 2), 2.0)}

    def quadratic(p):
        return 0.5 * sum((d[k] * p[k] ** 2).sum() for k in p)

    estimate = hutchinson_diagonal(loss_hvp(quadratic, params), params, samples=1, seed=3)
    assert all(torch.equal(estimate[k], d[k]) for k in d)


def test_hessian_vector_products_are_exact_for_a_quadratic():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(5, 5, generator=g)
    a = m + m.T
    params = {"w": torch.randn(5, generator=g)}
    hvp = loss_hvp(lambda p: 0.5 * p["w"] @ a @ p["w"], params)
    v = torch.randn(5, generator=g)
    assert torch.allclose(hvp({"w": v})["w"], a @ v, atol=1e-5)


def test_chunking_does_not_change_the_estimate():
    g = torch.Generator().manual_seed(1)
    m = torch.randn(6, 6, generator=g)
    params = {"w": torch.randn(6, generator=g)}
    hvp = loss_hvp(lambda p: 0.5 * p["w"] @ (m @ m.T) @ p["w"], params)
    one = hutchinson_diagonal(hvp, params, samples=10, seed=5, chunk=1)
    many = hutchinson_diagonal(hvp, params, samples=10, seed=5, chunk=4)
    assert torch.allclose(one["w"], many["w"], atol=1e-5)


def test_masked_entries_are_zero_and_the_model_is_untouched(dataset):
    net = model()
    weights = state_of(net).weights
    mask = prune_to_density(weights, full_mask(weights, prunable_names(net)), 0.5)
    net.train()
    diag = hessian_diagonal(net, dataset, samples=8, limit=64, mask=mask, seed=1)
    assert net.training
    assert all(torch.equal(v, weights[k]) for k, v in net.state_dict().items())
    for name, keep in mask.items():
        assert bool((diag[name][~keep] == 0).all())
        assert bool((diag[name][keep] != 0).any())
    again = hessian_diagonal(net, dataset, samples=8, limit=64, mask=mask, seed=1)
    assert all(torch.equal(diag[k], again[k]) for k in diag)
    with pytest.raises(LmcError, match="'conv9.weight' is not a parameter"):
        hessian_diagonal(net, dataset, samples=1, mask={"conv9.weight": torch.ones(1).bool()})


def test_batchnorm_statistics_are_used_not_updated(dataset):
    net = model("mnist1d_cnn_bn", width=2)
    before = state_of(net).weights
    net.train()
    diag = hessian_diagonal(net, dataset, samples=4, limit=64, seed=0)
    assert net.training
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    assert set(diag) == {n for n, _ in net.named_parameters()}


def test_summary_ignores_pruned_entries():
    diag = {"a": torch.tensor([1.0, 2.0, 0.0, 4.0]), "b": torch.tensor([[-1.0]])}
    mask = {"a": torch.tensor([True, True, False, True])}
    stats = summary(diag, mask, top_k=2)
    assert stats["mean"] == pytest.approx(6 / 4)
    assert stats["trace"] == pytest.approx(6.0)
    assert (stats["max"], stats["min"]) == (4.0, -1.0)
    assert (stats["top_1"], stats["top_2"]) == (4.0, 2.0)
    assert stats["layer_mean/a"] == pytest.approx(7 / 3)
    assert stats["layer_mean/b"] == -1.0


# --- loss-landscape planes ---------------------------------------------------------------------


def distance(x: State, y: State, names) -> float:
    return math.sqrt(sum(float((x.weights[n] - y.weights[n]).pow(2).sum()) for n in names))


def test_plane_through_three_states(dataset):
    net = model("mnist1d_cnn_bn", width=2)
    names = [n for n, _ in net.named_parameters()]
    origin, a, b = (state_of(model("mnist1d_cnn_bn", width=2, seed=s)) for s in (0, 1, 2))
    before = state_of(net).weights
    at = Evaluation(bn="interpolate")
    result = plane(net, origin, a, b, dataset, grid=5, names=("Wk", "A", "B"), at=at)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())

    ua = distance(a, origin, names)
    bx, by = result.points["B"]
    dot = sum(
        float(((a.weights[n] - origin.weights[n]) * (b.weights[n] - origin.weights[n])).sum())
        for n in names
    )
    assert result.points["Wk"] == (0.0, 0.0)
    assert result.points["A"][0] == pytest.approx(ua) and result.points["A"][1] == 0.0
    assert bx == pytest.approx(dot / ua)
    assert math.hypot(bx, by) == pytest.approx(distance(b, origin, names))
    assert len(result.xs) == len(result.ys) == 5 and len(result.loss) == 5
    assert result.xs[0] <= min(0.0, bx) and result.xs[-1] >= max(ua, bx)
    assert result.ys[0] <= 0.0 and result.ys[-1] >= by

    i0, j0 = result.ys.index(0.0), result.xs.index(0.0)
    own = evaluate(load_into(model("mnist1d_cnn_bn", width=2), origin), dataset, "test")
    assert (result.loss[i0][j0], result.error[i0][j0]) == (own.loss, own.error)
    ja = min(range(5), key=lambda j: abs(result.xs[j] - ua))
    assert result.xs[ja] == pytest.approx(ua)
    at_a = evaluate(load_into(model("mnist1d_cnn_bn", width=2), a), dataset, "test")
    assert result.loss[i0][ja] == pytest.approx(at_a.loss, rel=1e-4)


def test_plane_with_bn_reset_recomputes_statistics(dataset):
    net = model("mnist1d_cnn_bn", width=2)
    origin, a, b = (state_of(model("mnist1d_cnn_bn", width=2, seed=s)) for s in (3, 4, 5))
    result = plane(net, origin, a, b, dataset, grid=3, at=Evaluation(bn="reset"))
    reference = load_into(model("mnist1d_cnn_bn", width=2), origin)
    recompute_bn(reference, dataset)
    i0, j0 = result.ys.index(0.0), result.xs.index(0.0)
    assert result.loss[i0][j0] == pytest.approx(evaluate(reference, dataset, "test").loss)
    assert result.bn == "reset"


def test_plane_keeps_pruned_weights_at_zero(dataset):
    net = model()
    states = [state_of(model(seed=s)) for s in (0, 1, 2)]
    mask = prune_to_density(
        states[0].weights, full_mask(states[0].weights, prunable_names(net)), 0.3
    )
    origin, a, b = (State(s.weights, mask) for s in states)
    seen = []

    def record(module, _inputs):
        params = dict(module.named_parameters())
        seen.append(all(bool((params[n][~m] == 0).all()) for n, m in mask.items()))

    net.register_forward_pre_hook(record)
    at = Evaluation(bn="interpolate")
    plane(net, origin, a, b, dataset, grid=3, at=at)
    random_directions_plane(net, origin, dataset, grid=3, span=0.5, at=at)
    assert len(seen) == 18 and all(seen)


def test_plane_needs_three_states_that_span_a_plane(dataset):
    net = model()
    o, a = state_of(model(seed=0)), state_of(model(seed=1))
    mid = State({k: (o.weights[k] + a.weights[k]) / 2 for k in o.weights})
    with pytest.raises(LmcError, match="lies on the line"):
        plane(net, o, a, mid, dataset, grid=3)
    with pytest.raises(LmcError, match="three distinct states"):
        plane(net, o, o, a, dataset, grid=3)


def test_filter_normalized_directions(dataset):
    net = model("mnist1d_cnn_bn", width=2)
    center = state_of(net).weights
    params = [n for n, _ in net.named_parameters()]
    mask = {"fc.weight": torch.rand(center["fc.weight"].shape) > 0.5}
    d = filter_normalized_direction(center, params, torch.Generator().manual_seed(0), mask)
    for name, t in center.items():
        if name in params and t.dim() >= 2:
            ref = (t * mask[name] if name in mask else t).reshape(len(t), -1).norm(dim=1)
            assert torch.allclose(d[name].reshape(len(t), -1).norm(dim=1), ref, atol=1e-5)
        else:  # biases, BatchNorm parameters and buffers
            assert bool((d[name] == 0).all())
    assert bool((d["fc.weight"][~mask["fc.weight"]] == 0).all())


def test_random_directions_plane_centre_is_the_state(dataset):
    net = model()
    center = state_of(net)
    result = random_directions_plane(net, center, dataset, seed=0, grid=5, span=1.0, name="W")
    assert result.xs == result.ys and result.xs[2] == 0.0 and result.points == {"W": (0.0, 0.0)}
    own = evaluate(load_into(model(), center), dataset, "test")
    assert result.loss[2][2] == own.loss
    assert result.loss[0][0] != own.loss
    again = random_directions_plane(net, center, dataset, seed=0, grid=5, span=1.0)
    other = random_directions_plane(net, center, dataset, seed=1, grid=5, span=1.0)
    assert again.loss == result.loss and other.loss != result.loss


# --- typed results of the analyses -------------------------------------------------------------


def test_analysis_results_round_trip_through_json_and_give_frames_and_figures():
    grid = [[0.1, 0.2, 0.3], [0.2, 0.3, 0.4]]
    result = Landscape(
        kind="plane",
        title="plane through W20 v2, W_T v3, W0 v1",
        params={"origin": "models:/m/2", "grid": 3, "margin": 0.2, "split": "test", "bn": "reset"},
        split="test",
        bn="reset",
        points={
            "origin": PlanePoint("models:/m/2", "W20 v2", 0.0, 0.0, error=0.1, loss=0.1),
            "b": PlanePoint("models:/m/1", "W0 v1", 0.5, 0.7),  # off the grid's nodes
        },
        xs=[0.0, 1.0, 2.0],
        ys=[0.0, 1.0],
        error=grid,
        loss=grid,
        labels=["x: along a", "y: toward b"],
        summary={"error_min": 0.1, "error_max": 0.4},
        run_id="r1",
    )
    data = json.loads(json.dumps(to_dict(result)))
    assert Landscape.from_dict(data) == result and data["points"]["b"]["error"] is None
    frame = result.to_frame()
    assert len(frame) == 6
    assert frame.iloc[5].to_dict() == {"x": 2.0, "y": 1.0, "error": 0.4, "loss": 0.4}
    assert result.plane().points == {"W20 v2": (0.0, 0.0), "W0 v1": (0.5, 0.7)}
    assert "test loss; BatchNorm: reset" in result.plot("loss").axes[0].get_title()

    summary = {"mean": 1.0, "trace": 5.0, "layer_mean/fc.weight": 0.5}
    hessian = Hessian("models:/m/3", 8, 200, 200, 0, None, summary, "d.safetensors", "def", "r2")
    assert Hessian.from_dict(json.loads(json.dumps(to_dict(hessian)))) == hessian
    assert dict(hessian.to_frame().itertuples(index=False)) == summary


# --- plots -------------------------------------------------------------------------------------


def is_png(path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG


def test_plots_are_figures_saved_as_png_files(tmp_path):
    alphas = [i / 4 for i in range(5)]
    curve = {"error": [0.1, 0.2, 0.3, 0.2, 0.1], "loss": [0.3, 0.5, 0.8, 0.5, 0.3]}
    path = PathResult(alphas, {"test": curve, "train": curve}, bn="reset", mask_mode="same")
    figure = plot_path({"seed 1 vs 2": path}, "LeNet k=0")
    assert "barrier 20.00%" in figure.axes[0].get_legend().get_texts()[0].get_text()
    assert is_png(save(figure, tmp_path / "path.png"))

    rows = [
        SweepRow(k, split, Stats(m, 0.01, m, 9), 0.1, m < 0.02)
        for k, m in [(0, 0.1), (100, 0.03), (1000, 0.005)]
        for split in ("train", "test")
    ]
    figure = plot_instability(rows, "Figure 3", bn="reset", threshold=0.02)
    assert "n = 9 samples" in figure.axes[0].get_title()
    assert is_png(save(figure, tmp_path / "instability.png"))

    rewind = [(d, k, Stats(0.1 - d / 10, 0.01, 0.1, 3)) for d in (0.8, 0.2) for k in (0, 100)]
    figure = plot_imp_rewind(rewind, "Figure 7", metric="test error", dense=0.05)
    assert len(figure.axes[0].get_lines()) == 3  # two densities and the dense network
    assert is_png(save(figure, tmp_path / "imp_rewind.png"))

    methods = [
        {"method": m, "density": d, "mean": 0.1 + i * (1 - d), "std": 0.0, "n": 3}
        for i, m in enumerate(("imp", "random_prune", "random_reinit"))
        for d in (1.0, 0.5, 0.1)
    ]
    assert is_png(save(plot_imp_density(methods, "Figure 8"), tmp_path / "nested" / "density.png"))
    lone = [
        *methods[:3],
        {"method": "random_prune", "density": 0.1, "mean": 0.5, "std": 0.02, "n": 3},
    ]
    bars = plot_imp_density(lone, "Table 2").axes[0].containers  # one level: an error bar
    assert [c.lines[0].get_ydata().tolist() for c in bars] == [[0.5]]

    grid = [[float(i + j) for j in range(4)] for i in range(3)]
    surface = Plane(
        [0.0, 1.0, 2.0, 3.0],
        [0.0, 1.0, 2.0],
        grid,
        grid,
        {"Wk": (0.0, 0.0), "W_T1": (2.0, 0.0), "W_T2": (1.0, 1.5)},
    )
    assert is_png(save(plot_plane(surface, "plane", metric="loss"), tmp_path / "plane.png"))


def _cut_titles(figure) -> list[str]:
    """The titles (the figure's and its axes') that run past the figure's edge, as drawn at the
    resolution the PNG is saved at (text widths do not scale exactly with the resolution)."""
    figure.set_dpi(DPI)
    figure.draw_without_rendering()
    found = [figure._suptitle, *(ax.title for ax in figure.axes)]
    return [
        t.get_text()
        for t in found
        if t is not None
        and t.get_text()
        and not (t.get_window_extent().x0 >= 0 and t.get_window_extent().x1 <= figure.bbox.width)
    ]


@pytest.mark.parametrize(
    "model", ["mnist1d_cnn_mnist1d", "mnist1d_cnn_bn_mnist1d", "resnet20_cifar10_warmup_cifar10"]
)
def test_every_figure_the_pipeline_saves_keeps_its_titles_inside(tmp_path, model):
    """The sparse sweep's title ran past the right edge ("(bn=reset" cut off in the PNG) and its
    threshold line was labelled "reference": every figure of the pipeline, saved, keeps every
    title inside, and the threshold reads the same as on Figure 3."""
    stats = Stats(0.03, 0.01, 0.03, 4)
    sweep = Sweep(
        "run", model, "reset", [0, 1], [1, 2], 0.02,
        [SweepRow(k, "test", stats, 0.1, False) for k in (0, 50)], [], [], 0,
        {0: stats, 50: stats},
    )  # fmt: skip
    sparse = SparseSweep(
        "run", model, "reset",
        [SparseRow(1, 0.8, k, "test", stats, False, stats, 0.01, False) for k in (0, 50)],
        [Earliest(1, 0.8, 50.0, None, 1)], stats, "claim", None,
    )  # fmt: skip
    figures = {
        "instability": sweep.plot(),
        "wk_error": sweep.plot("wk_error"),
        "sparse_instability": sparse.plot("barrier"),
        "sparse_error": sparse.plot("error"),
        "earliest": sparse.plot("earliest"),
    }
    for name, figure in figures.items():
        assert is_png(save(figure, tmp_path / f"{name}.png"))
        assert _cut_titles(figure) == [], name
    labels = {
        name: [t.get_text() for t in figures[name].axes[0].get_legend().get_texts()]
        for name in ("instability", "sparse_instability")
    }
    assert "stable below 2%" in labels["instability"]
    assert "stable below 2%" in labels["sparse_instability"]
    assert not any("reference" in label for label in labels["sparse_instability"])
