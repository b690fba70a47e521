"""The user's own network and data by import path, plugin or torchvision builder: built
deterministically, what IMP and alignment need derived from the network, data batches seeded,
and every refusal one line with the fix."""

from __future__ import annotations

import pytest
import torch
from own_package import DATA, MODEL, install, uninstall
from torch import nn

from lmctrack.config.imports import import_path
from lmctrack.config.params import DataConfig, ModelConfig, Params, PruneConfig, load_params
from lmctrack.engine.align import permutation_spec
from lmctrack.engine.data import TensorDataset, load_dataset
from lmctrack.engine.data.user import ItemDataset
from lmctrack.engine.models import build_model, output_layer_name, prunable_names
from lmctrack.errors import LmcError
from lmctrack.execution.progress import Board
from lmctrack.workflows.common import Context


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    folder = install(tmp_path_factory.mktemp("own"), plugin=True)
    yield folder
    uninstall(folder)


def build(name: str = MODEL, seed: int = 0, **fields) -> nn.Module:
    return build_model(ModelConfig(name=name, **fields), 4, (3, 8, 8), seed)


def same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_own_network_is_built_from_its_seed_with_kwargs_and_derived_facts(own):
    net = build(kwargs={"channels": 6, "blocks": 2})
    assert net.head.out_features == 4 and net.stem.in_channels == 3 and len(net.blocks) == 2
    assert same(net, build(kwargs={"channels": 6, "blocks": 2}))
    assert not same(net, build(seed=1, kwargs={"channels": 6, "blocks": 2}))
    assert output_layer_name(net) == "head"
    assert prunable_names(net) == [
        "stem.weight",
        *(f"blocks.{b}.conv{c}.weight" for b in range(2) for c in (1, 2)),
    ]
    bn = net.blocks[0].bn1.weight  # the reference init draws gamma ~ U[0, 1]; PyTorch's is 1
    assert not torch.equal(bn, torch.ones_like(bn))
    assert torch.equal(build(init="default").bn.weight, torch.ones(8))


def test_plugins_name_the_network_and_the_data(own):
    assert same(build("tinyres"), build(MODEL))
    params = load_params(None, ["data.name=blobs", "model.name=tinyres"])
    assert (
        load_dataset(params.data).fingerprint() == load_dataset(DataConfig(name=DATA)).fingerprint()
    )


def test_torchvision_resnet18_leaves_fc_out_of_the_prunable_set():
    net = build_model(
        ModelConfig(name="torchvision:resnet18", kwargs={"num_classes": 10}), 10, (3, 32, 32), 0
    )
    names = prunable_names(net)
    assert output_layer_name(net) == "fc" and "fc.weight" not in names
    assert names[0] == "conv1.weight" and len(names) == 20
    excluded = prunable_names(net, PruneConfig(exclude=["layer4.*"], include=["fc"]))
    assert "fc.weight" in excluded and not any(n.startswith("layer4.") for n in excluded)
    with pytest.raises(LmcError, match="never downloads weights"):
        build_model(
            ModelConfig(name="torchvision:resnet18", kwargs={"weights": "DEFAULT"}),
            10,
            (3, 32, 32),
            0,
        )


def test_builtin_networks_keep_their_prunable_sets_and_config_hashes():
    net = build_model(ModelConfig(name="cifar_resnet_20"), 10, (3, 32, 32), 0)
    assert "fc.weight" in prunable_names(net)  # ResNets prune their output layer (open_lth)
    assert prunable_names(net, PruneConfig(exclude=["fc"])) == prunable_names(net)[:-1]
    params = Params()
    assert params.model.model_dump(mode="json") == {"name": "mnist1d_cnn", "width": None}
    assert "kwargs" not in params.data.model_dump(mode="json")


def test_a_pattern_matching_nothing_is_refused(own):
    with pytest.raises(LmcError, match="prune.exclude pattern 'nope' matches none"):
        prunable_names(build(), PruneConfig(exclude=["nope"]))


def test_tensors_from_a_factory_are_an_in_memory_dataset(own):
    from ownnet.data import blobs

    ds = load_dataset(DataConfig(name=DATA, kwargs={"train": 64, "test": 32}))
    x_train, y_train, x_test, y_test = blobs(train=64, test=32)
    assert isinstance(ds, TensorDataset) and ds.num_classes == 4 and ds.input_shape == (3, 8, 8)
    assert torch.equal(ds.train.x, x_train) and torch.equal(ds.test.y, y_test)
    other = load_dataset(DataConfig(name=DATA, kwargs={"train": 64, "test": 32, "noise": 2.0}))
    assert other.fingerprint() != ds.fingerprint()
    assert not ds.augment and load_dataset(DataConfig(name=DATA, augment=True)).augment


class Pairs(torch.utils.data.Dataset):
    """(input, label) items of a tensor pair, as a user's Dataset would give them."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], int(self.y[i])


class Noisy(Pairs):
    """A Dataset with its own random transform, drawn from torch's generator."""

    def __getitem__(self, i: int):
        x, y = super().__getitem__(i)
        return x + torch.rand(()), y


def datasets(scale: float = 1.0) -> tuple[Pairs, Pairs]:
    from ownnet.data import blobs

    x, y, xt, yt = blobs(train=50, test=20)
    return Pairs(scale * x, y), Pairs(xt, yt)


def test_a_pair_of_datasets_gives_the_seeded_batches_of_the_same_tensors(own, monkeypatch):
    monkeypatch.setattr("ownnet.data.pairs", datasets, raising=False)
    ds = load_dataset(DataConfig(name="ownnet.data:pairs"))
    from ownnet.data import blobs

    _, y, _, yt = blobs(train=50, test=20)
    assert isinstance(ds, ItemDataset) and ds.num_classes == 4 and ds.input_shape == (3, 8, 8)
    seeded = [b for _, b in zip(range(7), ds.train_batches(16, 3, 0), strict=False)]
    again = [b for _, b in zip(range(7), ds.train_batches(16, 3, 0), strict=False)]
    other = next(ds.train_batches(16, 4, 0))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(seeded, again))
    assert not torch.equal(seeded[0][1], other[1])
    epoch = torch.cat([b[1] for b in seeded[:4]])  # ceil(50 / 16) = 4 batches: every example once
    assert torch.equal(epoch.sort().values, y.sort().values)
    assert torch.equal(torch.cat([b[1] for b in ds.eval_batches("test", 8)]), yt)
    monkeypatch.setattr("ownnet.data.pairs", lambda: datasets(2.0), raising=False)
    assert load_dataset(DataConfig(name="ownnet.data:pairs")).fingerprint() != ds.fingerprint()


REFUSALS = {
    "missing package": (ModelConfig, "nopkg.nets:Net", "no module named 'nopkg'; install"),
    "missing attribute": (ModelConfig, "ownnet.nets:Nope", "has no attribute 'Nope'"),
    "defined in __main__": (ModelConfig, "__main__:Net", "move it into an importable module"),
    "factory returns no network": (ModelConfig, DATA, "not a torch.nn.Module; make it return"),
    "factory returns no data": (DataConfig, "ownnet.bad:wrong", "returned a list of int, int"),
    "data from a missing package": (DataConfig, "nopkg.data:make", "no module named 'nopkg'"),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_code_that_cannot_be_used_is_refused_with_the_fix(own, case):
    section, name, message = REFUSALS[case]
    with pytest.raises(LmcError, match=message) as refused:
        if section is ModelConfig:
            build(name)
        else:
            load_dataset(DataConfig(name=name))
    assert "\n" not in str(refused.value)


def test_unknown_names_are_refused_at_validation():
    with pytest.raises(LmcError, match="unknown dataset 'nope'.*'package.module:factory'"):
        load_params(None, ["data.name=nope"])
    with pytest.raises(LmcError, match="unknown model 'nope'.*'package.module:Attr'"):
        build("nope")


def test_the_api_resolves_classes_and_refuses_what_cannot_be_rebuilt(own):
    from ownnet.nets import TinyResNet

    assert import_path(TinyResNet, "model") == MODEL

    class Local(nn.Module):
        pass

    for obj in (Local, lambda: None):
        with pytest.raises(LmcError, match="move it into an importable module"):
            import_path(obj, "model")


def test_alignment_refuses_a_network_without_hidden_units_or_that_cannot_be_traced(own):
    with pytest.raises(LmcError, match="no hidden units to permute.*the other analyses do"):
        permutation_spec(nn.Sequential(nn.Flatten(), nn.Linear(192, 4)), (3, 8, 8))
    with pytest.raises(LmcError, match="cannot trace Branching.*the other analyses do not"):
        permutation_spec(build("ownnet.bad:Branching"), (3, 8, 8))


def test_own_data_enters_the_training_hash_by_its_fingerprint(own):
    def training_hash(data: str, fingerprint: str) -> str:
        params = load_params(None, [f"data.name={data}"])
        ctx = Context(params, None, None, torch.device("cpu"), Board(None), fingerprint)
        return ctx.training_hash()

    assert training_hash(DATA, "a") != training_hash(DATA, "b")  # the factory's data changed
    assert training_hash("mnist1d", "a") == training_hash("mnist1d", "b")  # hashes kept


def test_a_datasets_own_random_transform_is_seeded_by_the_augment_seed(own, monkeypatch):
    from ownnet.data import blobs

    x, y, xt, yt = blobs(train=40, test=8)
    monkeypatch.setattr("ownnet.data.noisy", lambda: (Noisy(x, y), Pairs(xt, yt)), raising=False)
    ds = load_dataset(DataConfig(name="ownnet.data:noisy"))

    def batch(augment_seed: int) -> torch.Tensor:
        return next(ds.train_batches(8, 0, augment_seed, start_step=3))[0]

    torch.manual_seed(5)
    first = batch(1)
    after = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(3))  # the caller's random state is left untouched
    assert torch.equal(first, batch(1)) and not torch.equal(first, batch(2))
