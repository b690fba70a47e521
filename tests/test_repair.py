"""REPAIR: the correction matches a hand computation, sets every channel's statistics to the
interpolated targets (with and without BatchNorm), and lowers the midpoint error of two MLPs
trained from different inits."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lmctrack.config.params import ModelConfig, TrainConfig
from lmctrack.engine.data import Split, TensorDataset
from lmctrack.engine.evaluate import evaluate
from lmctrack.engine.models import build_model
from lmctrack.engine.repair import Repair, channel_stats, repair
from lmctrack.engine.train import Noise, train
from lmctrack.errors import LmcError

torch.set_num_threads(1)


def _layer(weight: list[list[float]], bias: list[float]) -> dict[str, torch.Tensor]:
    return {
        "0.weight": torch.tensor(weight),
        "0.bias": torch.tensor(bias),
        "2.weight": torch.ones(1, 2),
        "2.bias": torch.zeros(1),
    }


def test_repair_matches_a_hand_computation() -> None:
    """Inputs +-e1, +-e2. A: h = x (mean 0, std 1/sqrt 2). B: h = 3 swap(x) + 1 (mean 1, std
    3/sqrt 2). The midpoint h = [[.5, 1.5], [1.5, .5]] x + .5 has mean .5 = the target and
    variance 1.25, but the target std is 2/sqrt 2 (variance 2): REPAIR scales the hidden
    layer's weights by sqrt(2 / 1.25) and keeps its bias; the output layer is not touched."""
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    x = torch.tensor([[1.0, 0], [-1, 0], [0, 1], [0, -1]])
    a = _layer([[1, 0], [0, 1]], [0, 0])
    b = _layer([[0, 3], [3, 0]], [1, 1])
    mid = {k: (a[k] + b[k]) / 2 for k in a}
    fixed = repair(model, a, b, mid, 0.5, [(x, None)])
    torch.testing.assert_close(fixed["0.weight"], (2 / 1.25) ** 0.5 * mid["0.weight"])
    torch.testing.assert_close(fixed["0.bias"], mid["0.bias"])
    assert torch.equal(fixed["2.weight"], mid["2.weight"])


@pytest.mark.parametrize("name", ["mnist1d_cnn", "mnist1d_cnn_bn", "mnist1d_mlp"])
def test_repaired_channels_have_the_interpolated_statistics(name: str) -> None:
    def net(seed: int) -> nn.Module:
        return build_model(ModelConfig(name=name, width=16), 10, (40,), seed)

    wa, wb = net(0).state_dict(), net(1).state_dict()
    alpha = 0.3
    mid = {k: torch.lerp(wa[k], wb[k], alpha) if k[-7:] != "tracked" else wa[k] for k in wa}
    model = net(0)
    # One batch: the correction is then exact (over several, later layers see per-batch fixes)
    batches = [torch.randn(1000, 40, generator=torch.Generator().manual_seed(0))]
    fix = Repair(model, wa, wb, batches)
    fixed = fix(mid, alpha)
    before, after = channel_stats(model, mid, batches), channel_stats(model, fixed, batches)
    hidden = 2 if name == "mnist1d_mlp" else 3  # every hidden layer, not the output layer
    assert set(after) == set(fix.stats_a) and len(after) == hidden
    for site, stats in after.items():
        a, b = fix.stats_a[site], fix.stats_b[site]
        goal_mean, goal_std = torch.lerp(a.mean, b.mean, alpha), torch.lerp(a.std, b.std, alpha)
        torch.testing.assert_close(stats.mean, goal_mean, atol=1e-3, rtol=1e-3)
        torch.testing.assert_close(stats.std, goal_std, atol=1e-3, rtol=1e-3)
        assert not torch.allclose(before[site].std, goal_std, rtol=0.05)  # it had to change
    assert {k: v.shape for k, v in fixed.items()} == {k: v.shape for k, v in mid.items()}


def test_at_an_endpoint_repair_keeps_the_network() -> None:
    model = build_model(ModelConfig(name="mnist1d_cnn_bn", width=8), 10, (40,), 0)
    wa = {k: v.clone() for k, v in model.state_dict().items()}
    wb = build_model(ModelConfig(name="mnist1d_cnn_bn", width=8), 10, (40,), 1).state_dict()
    x = torch.randn(400, 40)
    fixed = repair(model, wa, wb, wa, 0.0, [x])
    with torch.no_grad():
        model.load_state_dict(wa)
        expected = model(x)
        model.load_state_dict(fixed)
        torch.testing.assert_close(model(x), expected, atol=1e-2, rtol=1e-2)  # EPS in the scale


def test_a_layer_that_cannot_take_the_correction_is_refused() -> None:
    model = nn.Sequential(nn.Linear(4, 3, bias=False), nn.ReLU(), nn.Linear(3, 2))
    w = model.state_dict()
    with pytest.raises(LmcError, match="cannot fold its correction into '0'"):
        repair(model, w, w, w, 0.5, [torch.randn(8, 4)])
    with pytest.raises(LmcError, match="no data batches"):
        repair(model, w, w, w, 0.5, [])


def _digits() -> TensorDataset:
    from sklearn.datasets import load_digits  # only this slow test needs scikit-learn's data

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32)
    x = (x - x[:1500].mean()) / x[:1500].std()
    y = torch.tensor(y)
    return TensorDataset("digits", Split(x[:1500], y[:1500]), Split(x[1500:], y[1500:]), 10)


@pytest.mark.slow
def test_repair_lowers_the_midpoint_error_of_networks_from_different_inits() -> None:
    """Measured: test error 8.1% and 7.4% at the ends, 26.3% at the midpoint, 16.2% repaired."""
    data = _digits()
    cfg = TrainConfig(lr=0.05, batch_size=50, steps="600it", device="cpu")
    weights = []
    for seed in (0, 1):
        model = build_model(ModelConfig(name="mnist1d_mlp", width=64), 10, (64,), seed)
        train(model, data, cfg, start=0, stop=600, noise=Noise(seed, seed))
        weights.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    wa, wb = weights
    mid = {k: torch.lerp(wa[k], wb[k], 0.5) for k in wa}
    fixed = repair(model, wa, wb, mid, 0.5, data.eval_batches("train"))
    errors = {}
    for label, w in (("a", wa), ("b", wb), ("mid", mid), ("repaired", fixed)):
        model.load_state_dict(w)
        errors[label] = evaluate(model, data, "test").error
    endpoints = (errors["a"] + errors["b"]) / 2
    assert endpoints < 0.12, errors  # both networks learned the task
    assert errors["mid"] - endpoints > 0.1, errors  # a real barrier to repair
    assert errors["repaired"] - endpoints < 0.6 * (errors["mid"] - endpoints), errors
