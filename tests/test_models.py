"""The model registry: sizes, shapes, reference initialisation, prunable tensors, errors."""

from __future__ import annotations

import math

import pytest
import torch

from lmctrack.config.params import ModelConfig
from lmctrack.engine.models import MODELS, build_model, output_layer_name, prunable_names
from lmctrack.errors import LmcError

torch.set_num_threads(1)

# name, width (small where the model has one, so that tests stay fast), input shape
SMALL = [
    ("lenet_300_100", None, (1, 28, 28)),
    ("lenet_300_100", None, (1, 8, 8)),
    ("lenet_300_100", None, (40,)),
    ("mnist1d_mlp", 16, (40,)),
    ("mnist1d_cnn", None, (40,)),
    ("mnist1d_cnn", 8, (1, 40)),
    ("mnist1d_cnn_bn", 8, (40,)),
    ("cifar_resnet_20", 4, (3, 32, 32)),
    ("cifar_resnet_20", 4, (1, 8, 8)),
    ("cifar_vgg_16", 8, (3, 32, 32)),
    ("cifar_vgg_16", 8, (1, 16, 16)),
]
BATCHNORM = [("mnist1d_cnn_bn", 8, (40,)), ("cifar_resnet_20", 4, (3, 32, 32))]
BATCHNORM += [("cifar_vgg_16", 8, (3, 32, 32))]
IMAGENET = ("resnet50", "inception_v3")


def build(name: str, width: int | None = None, shape=(40,), seed: int = 0, classes: int = 10):
    return build_model(ModelConfig(name=name, width=width), classes, shape, seed)


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def imagenet_nets():
    """The two large torchvision networks, built once (about 50M parameters together)."""
    return {name: build(name, shape=(3, 299, 299), classes=1000) for name in IMAGENET}


@pytest.mark.parametrize(
    ("name", "shape", "expected"),
    [
        ("lenet_300_100", (1, 28, 28), 266_610),  # paper Table 1: 266K
        ("cifar_resnet_20", (3, 32, 32), 272_474),  # open_lth
        ("cifar_vgg_16", (3, 32, 32), 14_728_266),  # paper Table 1: 14.7M
        ("mnist1d_mlp", (40,), 40 * 100 + 100 + 100 * 100 + 100 + 100 * 10 + 10),
        ("mnist1d_cnn", (40,), (5 + 1) * 25 + 2 * (25 * 3 + 1) * 25 + 125 * 10 + 10),
    ],
)
def test_parameter_counts(name, shape, expected):
    assert count(build(name, shape=shape)) == expected


def test_imagenet_parameter_counts(imagenet_nets):
    assert count(imagenet_nets["resnet50"]) == 25_557_032  # paper: 25.5M
    # The paper's 27.1M includes Inception-v3's auxiliary classifier, which is left out here.
    assert count(imagenet_nets["inception_v3"]) == 23_834_568


@pytest.mark.parametrize(("name", "width", "shape"), SMALL)
def test_forward_shape_and_fit(name, width, shape):
    """Each network maps (B, *input_shape) to (B, classes) and can fit a small batch."""
    model = build(name, width, shape, classes=7)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, *shape, generator=gen), torch.randint(0, 7, (8,), generator=gen)
    assert model(x).shape == (8, 7)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_widths_scale_the_networks():
    assert build("mnist1d_cnn").fc.in_features == 125  # the MNIST-1D repository's linear_in
    assert build("mnist1d_mlp", 32).fc.in_features == 32
    assert build("cifar_resnet_20", 4, (3, 32, 32)).fc.in_features == 16
    vgg = build("cifar_vgg_16", 8, (3, 32, 32))
    assert vgg.layers[0].conv.out_channels == 8 and vgg.fc.in_features == 64


@pytest.mark.parametrize(("name", "width", "shape"), SMALL[::2] + BATCHNORM[:1])
def test_init_is_decided_by_the_seed_alone(name, width, shape):
    torch.manual_seed(123)
    first = build(name, width, shape, seed=5).state_dict()
    torch.manual_seed(456)  # the global random state must not matter
    before = torch.get_rng_state()
    second = build(name, width, shape, seed=5).state_dict()
    assert torch.equal(torch.get_rng_state(), before)  # ... nor be changed
    other = build(name, width, shape, seed=6).state_dict()
    assert first.keys() == second.keys() == other.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    weights = [k for k in first if k.endswith("weight")]
    assert not any(torch.equal(first[k], other[k]) for k in weights)


def test_kaiming_normal_weights_and_default_biases():
    layer = build("lenet_300_100", shape=(1, 28, 28)).fc_layers[0]
    assert layer.weight.std().item() == pytest.approx(math.sqrt(2 / 784), rel=0.02)
    # PyTorch's default bias: uniform in +-1/sqrt(fan_in), not zero
    bound = 1 / math.sqrt(784)
    assert layer.bias.abs().max() <= bound and layer.bias.abs().min() > 0


@pytest.mark.parametrize(("name", "width", "shape"), BATCHNORM)
def test_batchnorm_init(name, width, shape):
    check_batchnorm(build(name, width, shape))


def test_imagenet_batchnorm_init(imagenet_nets):
    for model in imagenet_nets.values():
        check_batchnorm(model)


def check_batchnorm(model: torch.nn.Module) -> None:
    layers = [
        m for m in model.modules() if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d))
    ]
    assert layers
    gammas = torch.cat([m.weight.detach() for m in layers])
    assert gammas.min() >= 0 and gammas.max() <= 1 and gammas.std() > 0.2  # U[0,1], not ones
    assert all(torch.count_nonzero(m.bias) == 0 for m in layers)


@pytest.mark.parametrize(
    ("name", "width", "shape", "n_prunable", "output_pruned"),
    [
        ("lenet_300_100", None, (1, 28, 28), 2, False),
        ("mnist1d_mlp", 16, (40,), 2, False),
        ("mnist1d_cnn", 8, (40,), 3, False),
        ("mnist1d_cnn_bn", 8, (40,), 3, False),
        ("cifar_resnet_20", 4, (3, 32, 32), 22, True),  # 1 + 18 + 2 shortcuts + fc
        ("cifar_vgg_16", 8, (3, 32, 32), 13, False),
    ],
)
def test_prunable_names(name, width, shape, n_prunable, output_pruned):
    check_prunable(build(name, width, shape), n_prunable, output_pruned)


def test_imagenet_prunable_names(imagenet_nets):
    check_prunable(imagenet_nets["resnet50"], 54, output_pruned=True)
    check_prunable(imagenet_nets["inception_v3"], 95, output_pruned=True)


def check_prunable(model: torch.nn.Module, n_prunable: int, output_pruned: bool) -> None:
    """Prunable = every conv/linear weight (the >= 2-D parameters), less the output layer's
    where the reference convention keeps it dense; never a bias or a BatchNorm tensor."""
    names = prunable_names(model)
    assert output_layer_name(model) == "fc"
    assert len(names) == len(set(names)) == n_prunable
    matrices = {n for n, p in model.named_parameters() if p.dim() >= 2}
    assert set(names) <= matrices
    assert matrices - set(names) == (set() if output_pruned else {"fc.weight"})


def test_resnet_state_dict_names_follow_open_lth():
    names = prunable_names(build("cifar_resnet_20", 4, (3, 32, 32)))
    assert names[0] == "conv.weight" and names[-1] == "fc.weight"
    assert [n for n in names if "shortcut" in n] == [
        "blocks.3.shortcut.0.weight",
        "blocks.6.shortcut.0.weight",
    ]


def test_registry_holds_the_paper_and_mnist1d_networks():
    assert set(MODELS) == {name for name, _, _ in SMALL} | set(IMAGENET)


def test_unknown_model_names_the_known_ones():
    with pytest.raises(LmcError, match="unknown model 'resnet18'.*mnist1d_cnn.*cifar_resnet_20"):
        build("resnet18")


@pytest.mark.parametrize(
    ("name", "shape", "suggested"),
    [
        ("cifar_resnet_20", (40,), "mnist1d_cnn"),
        ("cifar_vgg_16", (1, 8, 8), "cifar_resnet_20"),  # four max-pools need 16x16
        ("mnist1d_cnn", (1, 28, 28), "lenet_300_100"),
        ("inception_v3", (3, 32, 32), "resnet50"),
        ("resnet50", (1, 28, 28), "cifar_resnet_20"),
    ],
)
def test_wrong_input_shape_names_model_shape_and_a_fitting_model(name, shape, suggested):
    with pytest.raises(LmcError) as error:
        build(name, shape=shape)
    message = str(error.value)
    assert name in message and str(shape) in message and suggested in message
    assert "\n" not in message


def test_width_on_a_fixed_width_model_is_an_error():
    with pytest.raises(LmcError, match="lenet_300_100 has no width option"):
        build("lenet_300_100", 64, (1, 28, 28))


def test_seed_out_of_range_is_an_error():
    with pytest.raises(LmcError, match="init seed"):
        build("mnist1d_cnn", seed=2**80)


def test_any_network_gets_derived_prunable_names_all_but_the_last_layer():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    assert prunable_names(net) == ["0.weight"]
