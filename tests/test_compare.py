"""Appendix B/G comparisons: distances on known vectors, and a whole pair on a tiny network."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lmctrack.config.params import DataConfig, ModelConfig
from lmctrack.engine.compare import (
    compare_pair,
    cosine_distance,
    disagreement,
    l2_distance,
    loss_vector_distance,
    parameter_names,
)
from lmctrack.engine.data import load_dataset
from lmctrack.engine.evaluate import evaluate, load_into
from lmctrack.engine.models import build_model, prunable_names
from lmctrack.engine.state import State
from lmctrack.errors import LmcError

torch.set_num_threads(1)


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values)


def test_l2_distance_of_known_vectors():
    a, b = {"w": t(0.0, 0.0), "other": t(100.0)}, {"w": t(3.0, 4.0), "other": t(-100.0)}
    assert l2_distance(a, b, ["w"]) == pytest.approx(5.0)
    assert l2_distance(a, b, ["w", "other"]) == pytest.approx((25 + 200**2) ** 0.5)


def test_l2_distance_spans_tensors():
    a = {"x": t(0.0), "y": t(0.0)}
    b = {"x": t(3.0), "y": t(4.0)}
    assert l2_distance(a, b, ["x", "y"]) == pytest.approx(5.0)


def test_cosine_distance_of_known_vectors():
    x, y = {"w": t(1.0, 0.0)}, {"w": t(0.0, 2.0)}
    assert cosine_distance(x, y, ["w"]) == pytest.approx(1.0)
    assert cosine_distance(x, {"w": t(5.0, 0.0)}, ["w"]) == pytest.approx(0.0)
    assert cosine_distance(x, {"w": t(-1.0, 0.0)}, ["w"]) == pytest.approx(2.0)
    with pytest.raises(LmcError, match="all-zero"):
        cosine_distance(x, {"w": t(0.0, 0.0)}, ["w"])


def test_masked_entries_are_ignored():
    mask = {"w": torch.tensor([True, True, False])}
    a = State(weights={"w": t(0.0, 0.0, 50.0)}, mask=mask)
    b = State(weights={"w": t(3.0, 4.0, -50.0)}, mask=mask)
    assert l2_distance(a.masked_weights(), b.masked_weights(), ["w"]) == pytest.approx(5.0)


def test_unknown_name_is_an_error():
    with pytest.raises(LmcError, match="'v' is not in the state"):
        l2_distance({"w": t(1.0)}, {"w": t(2.0)}, ["v"])


def test_disagreement_counts_differing_predictions():
    assert disagreement(torch.tensor([0, 1, 2, 3]), torch.tensor([0, 2, 2, 0])) == 2
    with pytest.raises(LmcError, match="different examples"):
        disagreement(torch.tensor([0, 1]), torch.tensor([0, 1, 2]))


def test_loss_vector_distance():
    assert loss_vector_distance(t(1.0, 2.0, 7.0), t(4.0, 6.0, 7.0)) == pytest.approx(5.0)
    with pytest.raises(LmcError, match="different examples"):
        loss_vector_distance(t(1.0), t(1.0, 2.0))


def test_parameter_names_exclude_buffers():
    model = nn.Sequential(nn.Conv1d(1, 2, 3), nn.BatchNorm1d(2))
    assert parameter_names(model) == ["0.weight", "0.bias", "1.weight", "1.bias"]


# --- a whole pair: the real digits data and a registry network --------------------------------


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DataConfig(name="digits"))


def mlp(seed: int) -> nn.Module:
    return build_model(ModelConfig(name="mnist1d_mlp", width=16), 10, (1, 8, 8), init_seed=seed)


def state(seed: int, mask: dict[str, torch.Tensor] | None = None) -> State:
    return State(weights=mlp(seed).state_dict(), mask=mask)


def test_pair_of_different_networks(digits):
    a, b = state(0), state(1)
    result = compare_pair(mlp(0), a, b, digits)
    names = parameter_names(mlp(0))
    flat = [torch.cat([s.weights[n].flatten() for n in names]) for s in (a, b)]
    assert result["l2"] == pytest.approx(torch.dist(flat[0], flat[1]).item(), rel=1e-5)
    cos = torch.nn.functional.cosine_similarity(flat[0], flat[1], dim=0).item()
    assert result["cosine"] == pytest.approx(1 - cos, abs=1e-5)
    ea = evaluate(load_into(mlp(0), a), digits, "test", per_example=True)
    eb = evaluate(load_into(mlp(0), b), digits, "test", per_example=True)
    assert result["test.disagree"] == int((ea.predictions != eb.predictions).sum()) > 0
    assert result["test.disagree_frac"] == result["test.disagree"] / digits.num_examples("test")
    assert result["test.loss_l2"] == pytest.approx(
        torch.dist(ea.per_example_loss, eb.per_example_loss).item()
    )
    assert "train.disagree" not in result  # function-space comparisons only on the splits asked


def test_function_space_comparisons_on_every_split_asked(digits):
    """Figure 30 compares on train as well as test; `limit` caps the train examples."""
    result = compare_pair(mlp(0), state(0), state(1), digits, splits=("test", "train"), limit=50)
    eb = evaluate(load_into(mlp(0), state(1)), digits, "train", per_example=True, limit=50)
    ea = evaluate(load_into(mlp(0), state(0)), digits, "train", per_example=True, limit=50)
    assert result["train.disagree"] == int((ea.predictions != eb.predictions).sum())
    assert result["train.disagree_frac"] == result["train.disagree"] / 50
    assert {"test.disagree", "test.loss_l2", "l2", "cosine"} <= set(result)


def test_pair_differing_only_in_pruned_weights_is_identical(digits):
    g = torch.Generator().manual_seed(3)
    model = mlp(0)
    mask = {
        n: torch.rand(model.state_dict()[n].shape, generator=g) < 0.3 for n in prunable_names(model)
    }
    a = state(0, mask)
    b = State(weights={k: v.clone() for k, v in a.weights.items()}, mask=mask)
    for name, keep in mask.items():
        b.weights[name][~keep] += 1.0
    result = compare_pair(model, a, b, digits, splits=("train",))
    assert result == {
        "l2": 0.0,
        "cosine": pytest.approx(0.0),
        "train.disagree": 0,
        "train.disagree_frac": 0.0,
        "train.loss_l2": 0.0,
    }


def test_buffers_are_not_parameters(digits):
    def net() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.BatchNorm1d(8), nn.Linear(8, 10))

    a = State(weights=net().state_dict())
    b = State(weights={k: v.clone() for k, v in a.weights.items()})
    b.weights["2.running_mean"] += 5.0
    result = compare_pair(net(), a, b, digits)
    assert result["l2"] == 0.0
    assert result["test.loss_l2"] > 0


def test_pair_of_different_architectures_is_refused(digits):
    other = build_model(ModelConfig(name="mnist1d_mlp", width=8), 10, (1, 8, 8), init_seed=0)
    with pytest.raises(LmcError, match="different architectures.*same model"):
        compare_pair(mlp(0), state(0), State(weights=other.state_dict()), digits)
