"""Permutation alignment: the derived structure keeps every registered network's function,
weight matching undoes a known permutation, bad inputs are refused, and (slow) alignment cuts
the barrier between MLPs trained from different inits on MNIST-1D."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lmctrack.config.params import ModelConfig
from lmctrack.engine.align import (
    activation_matching,
    align_states,
    apply_permutation,
    check_function,
    invert_permutation,
    permutation_spec,
    random_permutation,
    weight_matching,
)
from lmctrack.engine.models import MODELS, build_model, prunable_names
from lmctrack.engine.state import State
from lmctrack.errors import LmcError

torch.set_num_threads(1)

INPUTS = {
    "lenet_300_100": (1, 28, 28),
    "mnist1d_mlp": (40,),
    "mnist1d_cnn": (40,),
    "mnist1d_cnn_bn": (40,),
    "cifar_resnet_20": (3, 32, 32),
    "cifar_vgg_16": (3, 32, 32),
    "resnet50": (3, 64, 64),
    "inception_v3": (3, 75, 75),
}
SLOW = {"cifar_vgg_16", "resnet50", "inception_v3"}  # 15M-25M parameters: seconds on a CPU
ARCHITECTURES = [
    *[pytest.param(name, None, marks=pytest.mark.slow if name in SLOW else ()) for name in MODELS],
    pytest.param("cifar_vgg_16", 8, id="cifar_vgg_16-narrow"),
]


def _model(name: str, seed: int = 0, width: int | None = None) -> nn.Module:
    return build_model(ModelConfig(name=name, width=width), 10, INPUTS[name], seed)


def _trained_looking(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """The model's weights with BatchNorm statistics and biases that are not at their init
    values, so that a statistic left behind by a permutation would change the logits."""
    g = torch.Generator().manual_seed(seed)
    weights = {}
    for name, tensor in model.state_dict().items():
        if name.endswith(("running_mean", "bias")):
            tensor = torch.randn(tensor.shape, generator=g) * 0.5
        elif name.endswith("running_var"):
            tensor = torch.rand(tensor.shape, generator=g) + 0.5
        weights[name] = tensor.clone()
    return weights


def _random_mask(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    weights = model.state_dict()
    return {n: torch.rand(weights[n].shape, generator=g) < 0.5 for n in prunable_names(model)}


@pytest.mark.parametrize(("name", "width"), ARCHITECTURES)
def test_a_random_permutation_keeps_the_function_of_every_architecture(
    name: str, width: int | None
) -> None:
    model = _model(name, width=width)
    spec = permutation_spec(model, INPUTS[name])
    state = State(_trained_looking(model, 1), _random_mask(model, 2))
    perm = random_permutation(spec, 3)
    weights, mask = apply_permutation(spec, perm, state.weights, state.mask)
    moved = [k for k in weights if not torch.equal(weights[k], state.weights[k])]
    assert spec.sizes and len(moved) > len(spec.sizes)  # a real reordering, not the identity
    x = torch.randn(4, *INPUTS[name], generator=torch.Generator().manual_seed(4))
    check_function(model, state.weights, weights, x)  # dense
    check_function(model, state.masked_weights(), State(weights, mask).masked_weights(), x)
    for k, m in mask.items():  # the mask moved with its weights
        kept = state.weights[k][state.mask[k]].sort().values
        assert torch.equal(weights[k][m].sort().values, kept)


def test_residual_summands_and_downsampling_shortcut_share_one_permutation() -> None:
    spec = permutation_spec(_model("cifar_resnet_20"), INPUTS["cifar_resnet_20"])
    owner = {(s.tensor, s.axis): g for g, slices in spec.slices.items() for s in slices}
    stage2 = owner[("blocks.3.conv2.weight", 0)]
    for tensor in (
        "blocks.3.bn2.running_var",
        "blocks.3.shortcut.0.weight",
        "blocks.3.shortcut.1.running_mean",
        "blocks.4.bn2.weight",
        "blocks.5.conv2.weight",
    ):
        assert owner[(tensor, 0)] == stage2
    assert owner[("blocks.4.conv1.weight", 1)] == stage2
    assert owner[("fc.weight", 1)] == owner[("blocks.8.bn2.bias", 0)]
    assert owner[("blocks.3.conv1.weight", 0)] != stage2  # inside a block: its own group
    assert owner[("conv.weight", 0)] == owner[("blocks.2.bn2.weight", 0)]
    assert ("conv.weight", 1) not in owner and ("fc.weight", 0) not in owner  # inputs, outputs
    assert len(spec.sizes) == 1 + 9 + 2  # stem/stage 1, one per block, stages 2 and 3


def test_flatten_gives_each_channel_a_block_of_features() -> None:
    spec = permutation_spec(_model("mnist1d_cnn"), (40,))
    (fc,) = [s for s in spec.slices["features.conv3"] if s.tensor == "fc.weight"]
    assert (fc.axis, fc.start, fc.repeat) == (1, 0, 5)  # 25 channels x length 5


@pytest.mark.parametrize("name", ["mnist1d_mlp", "mnist1d_cnn_bn", "cifar_resnet_20"])
def test_weight_matching_recovers_a_known_permutation_exactly(name: str) -> None:
    model = _model(name)
    spec = permutation_spec(model, INPUTS[name])
    a = _trained_looking(model, 1)
    b, _ = apply_permutation(spec, random_permutation(spec, 7), a)
    found = weight_matching(spec, a, b, seed=0)
    back, _ = apply_permutation(spec, found, b)
    assert all(torch.equal(back[k], a[k]) for k in a)


def test_activation_matching_recovers_a_known_permutation_exactly() -> None:
    model = _model("mnist1d_cnn_bn")  # at init: no dead units, whose activations would tie
    spec = permutation_spec(model, (40,))
    a = {k: v.clone() for k, v in model.state_dict().items()}
    perm = random_permutation(spec, 7)
    b, _ = apply_permutation(spec, perm, a)
    x = torch.randn(300, 40, generator=torch.Generator().manual_seed(0))
    found = activation_matching(model, a, b, [(x[:150], None), (x[150:], None)], spec)
    assert all(torch.equal(found[g], invert_permutation(perm)[g]) for g in perm)
    back, _ = apply_permutation(spec, found, b)
    assert all(torch.equal(back[k], a[k]) for k in a)


def test_weight_matching_is_deterministic_in_its_seed_and_aligns_different_inits() -> None:
    model = _model("mnist1d_mlp")
    spec = permutation_spec(model, (40,))
    a, b = _model("mnist1d_mlp", 0).state_dict(), _model("mnist1d_mlp", 1).state_dict()
    first, again = weight_matching(spec, a, b, seed=3), weight_matching(spec, a, b, seed=3)
    assert all(torch.equal(first[g], again[g]) for g in first)
    aligned, _ = apply_permutation(spec, first, b)

    def distance(w: dict[str, torch.Tensor]) -> float:
        return sum(float((a[k] - w[k]).pow(2).sum()) for k in a)

    assert distance(aligned) < 0.95 * distance(b)


def test_align_states_permutes_a_sparse_state_and_checks_its_function() -> None:
    model = _model("mnist1d_cnn_bn")
    a = State(_trained_looking(_model("mnist1d_cnn_bn", 0), 1), _random_mask(model, 1))
    b = State(_trained_looking(_model("mnist1d_cnn_bn", 1), 2), _random_mask(model, 2))
    x = torch.randn(8, 40)
    result = align_states(model, (40,), a, b, x, method="weight")
    assert result.max_logit_diff < 1e-4
    assert result.state.mask is not None and result.state.density() == b.density()
    expected, mask = apply_permutation(result.spec, result.perm, b.weights, b.mask)
    assert all(torch.equal(expected[k], result.state.weights[k]) for k in expected)
    batches = [(torch.randn(64, 40), None)]
    by_activation = align_states(model, (40,), a, b, x, method="activation", batches=batches)
    assert by_activation.max_logit_diff < 1e-4


def test_different_architectures_are_refused() -> None:
    model = _model("mnist1d_mlp", width=32)
    spec = permutation_spec(model, (40,))
    other = _model("mnist1d_mlp", width=16).state_dict()
    with pytest.raises(LmcError, match="not a state of this architecture"):
        weight_matching(spec, model.state_dict(), other)
    cnn = _model("mnist1d_cnn").state_dict()
    with pytest.raises(LmcError, match="not a state of this architecture"):
        apply_permutation(spec, random_permutation(spec, 0), cnn)


def test_mismatched_masks_are_refused() -> None:
    model = _model("mnist1d_mlp", width=32)
    spec = permutation_spec(model, (40,))
    weights = model.state_dict()
    bad = {"fc_layers.0.weight": torch.ones(3, 3, dtype=torch.bool)}
    with pytest.raises(LmcError, match="mask does not fit"):
        apply_permutation(spec, random_permutation(spec, 0), weights, bad)
    with pytest.raises(LmcError, match="mask of B does not fit"):
        align_states(model, (40,), State(weights), State(weights, bad), torch.randn(2, 40))


def test_activation_matching_without_data_is_refused() -> None:
    model = _model("mnist1d_mlp", width=32)
    spec = permutation_spec(model, (40,))
    w = State(model.state_dict())
    with pytest.raises(LmcError, match="no data batches"):
        activation_matching(model, w.weights, w.weights, [], spec)
    with pytest.raises(LmcError, match="needs training data"):
        align_states(model, (40,), w, w, torch.randn(2, 40), method="activation")
    with pytest.raises(LmcError, match="method 'nearest' is not known"):
        align_states(model, (40,), w, w, torch.randn(2, 40), method="nearest")


def test_a_wrong_permutation_fails_the_function_check() -> None:
    model = _model("mnist1d_mlp", width=32)
    weights = model.state_dict()
    broken = dict(weights)
    broken["fc_layers.0.weight"] = weights["fc_layers.0.weight"].flip(0)  # next layer not moved
    with pytest.raises(LmcError, match="another function"):
        check_function(model, weights, broken, torch.randn(16, 40))


class _Branching(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) if x.sum() > 0 else -self.fc(x)


def test_a_network_that_cannot_be_traced_gets_a_clear_error() -> None:
    with pytest.raises(LmcError, match="cannot trace _Branching"):
        permutation_spec(_Branching(), (4,))


class _Unknown(nn.Module):
    """A hidden layer feeds an operation alignment does not know (a channel cumsum)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.relu(self.b(torch.cumsum(torch.relu(self.a(x)), dim=1))))


def test_units_an_unknown_operation_touches_are_left_in_place() -> None:
    model = _Unknown()
    spec = permutation_spec(model, (4,))
    assert list(spec.sizes) == ["b"]  # a's units feed cumsum: pinned
    weights, _ = apply_permutation(spec, random_permutation(spec, 1), model.state_dict())
    check_function(model, model.state_dict(), weights, torch.randn(8, 4))


@pytest.mark.slow
def test_weight_matching_cuts_the_barrier_between_mlps_from_different_inits() -> None:
    """The science check (Git Re-Basin on MNIST-1D, MLP of width 512, SGD). Measured with this
    configuration: test-error barrier 35.7% naive, 11.4% after weight matching (~3 minutes)."""
    from lmctrack.config.params import TrainConfig
    from lmctrack.engine.data import Split, TensorDataset, generate_mnist1d
    from lmctrack.engine.interpolate import linear_path
    from lmctrack.engine.train import Noise, train

    raw = generate_mnist1d(5000)
    mean, std = raw["x_train"].mean(), raw["x_train"].std()
    data = TensorDataset(
        "mnist1d",
        Split((raw["x_train"] - mean) / std, raw["y_train"]),
        Split((raw["x_test"] - mean) / std, raw["y_test"]),
        10,
    )
    cfg = TrainConfig(lr=0.05, momentum=0.9, batch_size=100, steps="3000it", device="cpu")
    states = []
    for seed in (0, 1):
        model = _model("mnist1d_mlp", seed, width=512)
        train(model, data, cfg, start=0, stop=3000, noise=Noise(seed, seed))
        states.append(State({k: v.detach().clone() for k, v in model.state_dict().items()}))
    aligned = align_states(model, (40,), states[0], states[1], data.test.x[:500]).state
    barrier = {
        label: linear_path(model, states[0], b, data, alphas=11, bn="interpolate").error_barrier(
            "test"
        )
        for label, b in (("naive", states[1]), ("aligned", aligned))
    }
    assert barrier["naive"] > 0.2, barrier
    assert barrier["aligned"] < 0.5 * barrier["naive"], barrier
