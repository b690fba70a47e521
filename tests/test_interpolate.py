"""Linear paths, barriers and the BatchNorm / mask policies, on tiny networks and data."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lmctrack.engine.data import Split, TensorDataset
from lmctrack.engine.evaluate import evaluate, load_into
from lmctrack.engine.interpolate import (
    check_compatible,
    error_barrier,
    interpolate_states,
    linear_path,
    loss_barrier_linear,
    recompute_bn,
)
from lmctrack.engine.state import State
from lmctrack.errors import LmcError

torch.set_num_threads(1)

LENGTH, CLASSES = 8, 3


def tiny_data() -> TensorDataset:
    """Fixed random train/test tensors of shape (1, LENGTH), held by the real TensorDataset."""
    g = torch.Generator().manual_seed(0)

    def split(n: int) -> Split:
        return Split(
            torch.randn(n, 1, LENGTH, generator=g), torch.randint(0, CLASSES, (n,), generator=g)
        )

    return TensorDataset("tiny", split(64), split(48), CLASSES)


def mlp(width: int = 16) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(LENGTH, width), nn.ReLU(), nn.Linear(width, CLASSES)
    )


def conv_bn() -> nn.Module:
    return nn.Sequential(
        nn.Conv1d(1, 4, 3, padding=1),
        nn.BatchNorm1d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * LENGTH, CLASSES),
    )


def state_of(make, seed: int, mask: dict[str, torch.Tensor] | None = None) -> State:
    """A random state of `make()`; BatchNorm statistics differ per seed too."""
    torch.manual_seed(seed)
    model = make()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    for name, tensor in weights.items():
        if name.endswith("running_mean"):
            tensor.normal_()
        elif name.endswith("running_var"):
            tensor.uniform_(0.5, 3.0)
    return State(weights=weights, mask=mask)


def random_mask(make, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    weights = make().state_dict()
    return {
        k: torch.rand(v.shape, generator=g) < 0.5
        for k, v in weights.items()
        if k.endswith("weight") and v.dim() > 1
    }


@pytest.fixture
def data() -> TensorDataset:
    return tiny_data()


# --- barrier arithmetic -----------------------------------------------------------------------


def test_error_barrier_is_sup_minus_endpoint_mean():
    assert error_barrier([0.1, 0.3, 0.25, 0.2]) == pytest.approx(0.3 - 0.15)


def test_loss_barrier_linear_is_excess_over_the_chord():
    alphas = [0.0, 0.5, 1.0]
    assert loss_barrier_linear([1.0, 2.5, 2.0], alphas) == pytest.approx(2.5 - 1.5)


def test_definitions_differ_when_endpoints_differ():
    # a monotone path from a good to a bad endpoint: no bump over the chord, but a high maximum
    curve, alphas = [0.1, 0.3, 0.9], [0.0, 0.5, 1.0]
    assert loss_barrier_linear(curve, alphas) == pytest.approx(0.0)
    assert error_barrier(curve) == pytest.approx(0.9 - 0.5)


def test_flat_curve_has_no_barrier():
    assert error_barrier([0.2] * 5) == 0.0
    assert loss_barrier_linear([0.7] * 5, [0, 0.25, 0.5, 0.75, 1]) == pytest.approx(0.0)


def test_loss_barrier_needs_alphas_from_zero_to_one():
    with pytest.raises(ValueError):
        loss_barrier_linear([1.0, 2.0], [0.0, 0.5])


# --- endpoints of the path --------------------------------------------------------------------


def assert_endpoints_match(model, a, b, data, result):
    """The path's ends are A and B evaluated alone (to float tolerance: the path is batched)."""
    for split in ("test", "train"):
        ea = evaluate(load_into(model, a), data, split)
        eb = evaluate(load_into(model, b), data, split)
        assert result.curves[split]["error"][0] == pytest.approx(ea.error, abs=1e-6)
        assert result.curves[split]["loss"][0] == pytest.approx(ea.loss, abs=1e-6)
        assert result.curves[split]["error"][-1] == pytest.approx(eb.error, abs=1e-6)
        assert result.curves[split]["loss"][-1] == pytest.approx(eb.loss, abs=1e-6)


@pytest.mark.parametrize("bn", ["interpolate", "reset"])
def test_endpoints_are_the_endpoint_networks_without_bn(data, bn):
    a, b = state_of(mlp, 0), state_of(mlp, 1)
    result = linear_path(mlp(), a, b, data, alphas=5, splits=("test", "train"), bn=bn)
    assert result.alphas == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert result.bn == bn and result.mask_mode == "same"
    assert_endpoints_match(mlp(), a, b, data, result)


def test_endpoints_are_the_endpoint_networks_with_interpolated_bn(data):
    a, b = state_of(conv_bn, 0), state_of(conv_bn, 1)
    result = linear_path(
        conv_bn(), a, b, data, alphas=3, splits=("test", "train"), bn="interpolate"
    )
    assert_endpoints_match(conv_bn(), a, b, data, result)


def test_interpolated_weights_are_the_convex_combination():
    a, b = state_of(conv_bn, 0), state_of(conv_bn, 1)
    mid = interpolate_states(a, b, 0.25, bn="interpolate")
    for name in ("0.weight", "1.running_mean", "1.running_var"):
        expected = 0.75 * a.weights[name] + 0.25 * b.weights[name]
        torch.testing.assert_close(mid[name], expected)
    assert mid["1.num_batches_tracked"] == a.weights["1.num_batches_tracked"]
    reset = interpolate_states(a, b, 0.25, bn="reset")
    assert torch.equal(reset["1.running_mean"], torch.zeros(4))
    assert torch.equal(reset["1.running_var"], torch.ones(4))


# --- masks ------------------------------------------------------------------------------------


def test_shared_mask_holds_at_every_alpha(data):
    mask = random_mask(mlp, 7)
    a, b = state_of(mlp, 0, mask), state_of(mlp, 1, mask)
    for alpha in torch.linspace(0, 1, 7).tolist():
        w = interpolate_states(a, b, alpha, bn="reset")
        for name, keep in mask.items():
            assert torch.all(w[name][~keep] == 0)
            assert torch.all(w[name][keep] != 0)
    result = linear_path(mlp(), a, b, data, alphas=3, splits=("test", "train"))
    assert_endpoints_match(mlp(), a, b, data, result)


def test_each_mode_is_the_line_between_the_masked_endpoints():
    a = state_of(mlp, 0, random_mask(mlp, 7))
    b = state_of(mlp, 1, random_mask(mlp, 8))
    mid = interpolate_states(a, b, 0.5, bn="reset", mask_mode="each")
    wa, wb = a.masked_weights(), b.masked_weights()
    for name in mid:
        torch.testing.assert_close(mid[name], (wa[name] + wb[name]) / 2)
    both_pruned = ~a.mask["1.weight"] & ~b.mask["1.weight"]
    assert both_pruned.any() and torch.all(mid["1.weight"][both_pruned] == 0)


def test_different_masks_are_refused_unless_each():
    a = state_of(mlp, 0, random_mask(mlp, 7))
    b = state_of(mlp, 1, random_mask(mlp, 8))
    with pytest.raises(LmcError, match="masks differ: '1.weight'.*mask_mode='each'"):
        check_compatible(a, b)
    check_compatible(a, b, mask_mode="each")


def test_masked_and_dense_are_refused_unless_each():
    a, b = state_of(mlp, 0, random_mask(mlp, 7)), state_of(mlp, 1)
    with pytest.raises(LmcError, match="B is dense"):
        interpolate_states(a, b, 0.5, bn="reset")
    interpolate_states(a, b, 0.5, bn="reset", mask_mode="each")


# --- mismatches and bad options ---------------------------------------------------------------


def test_architecture_mismatch_names_the_tensor_and_shapes():
    a, b = state_of(lambda: mlp(16), 0), state_of(lambda: mlp(17), 1)
    with pytest.raises(
        LmcError, match=r"'1.weight' has shape \(16, 8\) in A but \(17, 8\) in B.*same model"
    ):
        check_compatible(a, b)


def test_missing_tensor_is_named():
    a, b = state_of(mlp, 0), state_of(mlp, 1)
    del b.weights["3.bias"]
    with pytest.raises(LmcError, match="'3.bias' is missing from B"):
        check_compatible(a, b)


def test_template_must_fit_the_states(data):
    a, b = state_of(mlp, 0), state_of(mlp, 1)
    with pytest.raises(LmcError, match="does not fit the model"):
        linear_path(conv_bn(), a, b, data, alphas=2)


def test_unknown_policies_are_refused(data):
    a, b = state_of(mlp, 0), state_of(mlp, 1)
    with pytest.raises(LmcError, match="bn='average'.*interpolate, reset"):
        linear_path(mlp(), a, b, data, bn="average")
    with pytest.raises(LmcError, match="mask_mode='both'"):
        check_compatible(a, b, mask_mode="both")
    with pytest.raises(LmcError, match="at least 2 points"):
        linear_path(mlp(), a, b, data, alphas=1)


# --- BatchNorm policies -----------------------------------------------------------------------


def test_bn_policies_agree_without_batchnorm(data):
    a, b = state_of(mlp, 0), state_of(mlp, 1)
    paths = [linear_path(mlp(), a, b, data, alphas=4, bn=bn) for bn in ("interpolate", "reset")]
    assert paths[0].curves == paths[1].curves


def test_bn_policies_differ_with_batchnorm(data):
    a, b = state_of(conv_bn, 0), state_of(conv_bn, 1)
    paths = [linear_path(conv_bn(), a, b, data, alphas=4, bn=bn) for bn in ("interpolate", "reset")]
    assert paths[0].curves["test"]["loss"] != paths[1].curves["test"]["loss"]


def conv_outputs(model: nn.Module, data: TensorDataset, limit: int | None = None) -> torch.Tensor:
    """The inputs of the BatchNorm layer over the training data, channels first, flattened."""
    x = data.train.x[:limit]
    with torch.no_grad():
        return model[0](x).transpose(0, 1).reshape(4, -1)


def test_reset_recomputes_statistics_from_training_data(data):
    a, b = state_of(conv_bn, 0), state_of(conv_bn, 1)
    model = conv_bn()
    linear_path(model, a, b, data, alphas=2, bn="reset")  # the model ends at alpha=1, i.e. B
    inputs = conv_outputs(model, data)
    torch.testing.assert_close(model[1].running_mean, inputs.mean(dim=1))
    torch.testing.assert_close(model[1].running_var, inputs.var(dim=1))


def test_reset_can_use_fewer_training_examples(data):
    model = load_into(conv_bn(), state_of(conv_bn, 0))
    recompute_bn(model, data, limit=16)
    torch.testing.assert_close(model[1].running_mean, conv_outputs(model, data, 16).mean(dim=1))


# --- the result -------------------------------------------------------------------------------


def test_summary_labels_each_definition(data):
    a, b = state_of(mlp, 0), state_of(mlp, 1)
    calls = []
    result = linear_path(
        mlp(),
        a,
        b,
        data,
        alphas=5,
        splits=("test", "train"),
        progress=lambda i, n: calls.append((i, n)),
    )
    assert calls == [(i, 5) for i in range(1, 6)]
    summary = result.summary()
    for split in ("test", "train"):
        errors = result.curves[split]["error"]
        assert summary[f"{split}.error_barrier"] == error_barrier(errors)
        assert summary[f"{split}.loss_barrier_linear"] == loss_barrier_linear(
            result.curves[split]["loss"], result.alphas
        )
        assert summary[f"{split}.error_alpha0"] == errors[0]
        assert summary[f"{split}.error_alpha1"] == errors[-1]
        assert summary[f"{split}.error_max"] == max(errors)
    assert 0 <= summary["test.error_barrier"] <= 1
    with pytest.raises(LmcError, match="no 'val' curve"):
        result.error_barrier("val")


# --- batched passes ---------------------------------------------------------------------------


@pytest.mark.parametrize("bn", ["interpolate", "reset"])
@pytest.mark.parametrize("make", [mlp, conv_bn], ids=["no_bn", "bn"])
@pytest.mark.parametrize("masked", [False, True], ids=["dense", "masked"])
def test_batched_path_equals_the_per_alpha_loop(data, bn, make, masked):
    mask = random_mask(make, 7) if masked else None
    a, b = state_of(make, 0, mask), state_of(make, 1, mask)
    kw = {"alphas": 7, "splits": ("test", "train"), "bn": bn, "bn_limit": 40}
    reference = linear_path(make(), a, b, data, batched=False, **kw)
    batched = linear_path(make(), a, b, data, batched=True, **kw)
    for split in ("test", "train"):
        for metric in ("error", "loss"):
            assert batched.curves[split][metric] == pytest.approx(
                reference.curves[split][metric], abs=1e-6
            )
    assert batched.curves["test"]["loss"][1] != batched.curves["test"]["loss"][0]


def test_batched_path_in_several_passes(data, monkeypatch):
    """A small memory budget splits the alphas over passes; the curves stay the same."""
    import lmctrack.engine.batched

    a, b = state_of(conv_bn, 0), state_of(conv_bn, 1)
    whole = linear_path(conv_bn(), a, b, data, alphas=5, bn="reset", batched=True)
    monkeypatch.setattr(lmctrack.engine.batched, "MEMORY_BUDGET", 1)
    assert lmctrack.engine.batched.networks_per_pass(conv_bn(), data, 1000, "cpu") == 1
    chunked = linear_path(conv_bn(), a, b, data, alphas=5, bn="reset", batched=True)
    assert chunked.curves == whole.curves
