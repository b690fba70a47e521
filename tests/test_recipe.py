"""The researcher's recipe (optimizer, schedule, loss, clipping by name or import path) and inputs
(integer tokens, outputs that are not one tensor, NaN data, labels out of range): each works bit
for bit on resume, or is refused in one line naming the data or the model."""

from __future__ import annotations

import pytest
import torch
from own_package import install, uninstall

from lmctrack.config.params import ModelConfig, Params, config_hash, load_params
from lmctrack.engine.data.datasets import tensors_dataset
from lmctrack.engine.data.user import ItemDataset
from lmctrack.engine.models import build_for_data, build_model
from lmctrack.engine.recipe import learning_rate, make_optimizer, stacking_problem
from lmctrack.engine.train import Noise, train
from lmctrack.errors import LmcError

TOKENS = "ownnet.tokens:sequences"
BAG = "ownnet.tokens:BagOfEmbeddings"
RECIPE = {
    "optimizer": "torch.optim:AdamW",
    "optimizer_kwargs": {"weight_decay": 0.05, "betas": [0.9, 0.95]},
    "lr": 0.01,
    "schedule": "cosine",
    "warmup": "5it",
    "label_smoothing": 0.1,
    "clip_grad_norm": 0.5,
    "batch_size": 32,
    "steps": "40it",
}


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    folder = install(tmp_path_factory.mktemp("recipe"))
    yield folder
    uninstall(folder)


def _params(**train) -> Params:
    return Params.model_validate(
        {"data": {"name": TOKENS}, "model": {"name": BAG}, "train": {**RECIPE, **train}}
    )


def _tokens():
    from ownnet.tokens import sequences

    return tensors_dataset(TOKENS, dict(zip(("x_train", "y_train", "x_test", "y_test"),
                                            sequences(), strict=True)), augment=False)  # fmt: skip


def test_recipe_keys_enter_the_hash_only_when_set():
    plain = Params().train
    assert "optimizer_kwargs" not in plain.model_dump(mode="json")
    spelled = load_params(None, ["train.label_smoothing=0.0", "train.loss=cross_entropy"]).train
    assert config_hash(spelled) == config_hash(plain)
    hashes = {
        config_hash(load_params(None, [s]).train)
        for s in ("train.optimizer=adamw", "train.schedule=cosine", "train.label_smoothing=0.1",
                  "train.clip_grad_norm=1.0", "train.optimizer_kwargs={betas: [0.9, 0.95]}")
    }  # fmt: skip
    assert len(hashes) == 5 and config_hash(plain) not in hashes


@pytest.mark.parametrize(
    ("sets", "words"),
    [
        (["train.optimizer=lion"], "unknown optimizer 'lion'"),
        (["train.schedule=onecycle"], "unknown schedule 'onecycle'"),
        (["train.loss=mse"], "unknown loss 'mse'"),
        (["train.loss=pkg.mod:focal", "train.label_smoothing=0.1"], "cross-entropy loss only"),
    ],
)
def test_a_recipe_that_cannot_be_named_is_refused_at_validation(sets, words):
    with pytest.raises(LmcError, match=words):
        load_params(None, sets)


def test_optimizers_by_name_and_import_path_take_their_kwargs():
    params = [torch.nn.Parameter(torch.zeros(3))]
    by_name = make_optimizer(_params(optimizer="adamw").train, params)
    assert isinstance(by_name, torch.optim.AdamW)
    by_path = make_optimizer(_params().train, params)
    assert isinstance(by_path, torch.optim.AdamW)
    assert by_path.param_groups[0]["weight_decay"] == 0.05
    assert tuple(by_path.param_groups[0]["betas"]) == (0.9, 0.95)
    with pytest.raises(LmcError, match="fix train.optimizer_kwargs"):
        make_optimizer(_params(optimizer_kwargs={"momentum_typo": 1}).train, params)
    assert stacking_problem(_params(optimizer="adamw", clip_grad_norm=None).train) is None
    assert "clip_grad_norm" in stacking_problem(_params(optimizer="adamw").train)
    assert "elementwise" in stacking_problem(_params(clip_grad_norm=None).train)


def test_cosine_with_warmup_and_schedules_by_import_path():
    cosine = _params(lr=1.0, warmup="10it", final_lr=0.1).train
    assert learning_rate(cosine, 5, 8, 110) == pytest.approx(0.5)  # warming up
    assert learning_rate(cosine, 10, 8, 110) == pytest.approx(1.0)
    assert learning_rate(cosine, 60, 8, 110) == pytest.approx(0.55)  # half way: the mean
    assert learning_rate(cosine, 110, 8, 110) == pytest.approx(0.1)
    # a torch lr_scheduler class, replayed as a table: what it sets on its own optimizer
    one_cycle = _params(
        lr=2.0, warmup="0it", schedule="torch.optim.lr_scheduler:OneCycleLR",
        schedule_kwargs={"max_lr": 1.0},
    ).train  # fmt: skip
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    torch_schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=50)
    for step in range(50):
        assert learning_rate(one_cycle, step, 8, 50) == pytest.approx(
            2.0 * opt.param_groups[0]["lr"]
        )
        opt.step()
        torch_schedule.step()
    rising = _params(lr=2.0, warmup="0it", schedule="operator:truediv").train  # step / total
    assert learning_rate(rising, 10, 8, 50) == pytest.approx(0.4)
    not_a_schedule = _params(warmup="0it", schedule="math:sqrt").train  # sqrt(step, total)
    with pytest.raises(LmcError, match="make it a function"):
        learning_rate(not_a_schedule, 4, 8, 50)


def test_tokens_train_and_resume_bit_for_bit_under_the_whole_recipe(own, tmp_path):
    """AdamW (kwargs), cosine with warmup, label smoothing and clipping on an nn.Embedding
    network: stopped at 20it and resumed from the checkpoint (AdamW's moments and step in it),
    it ends where the uninterrupted training ends, bit for bit."""
    data, cfg = _tokens(), _params().train
    assert data.example().dtype == torch.int64

    def model():
        return build_for_data(ModelConfig(name=BAG), data, 0)

    whole = model()
    train(whole, data, cfg, start=0, stop=40, noise=Noise(0, 0))
    checkpoint = tmp_path / "ckpt.safetensors"
    first = model()
    train(first, data, cfg, start=0, stop=20, noise=Noise(0, 0), checkpoint=checkpoint)
    resumed = model()
    log = train(resumed, data, cfg, start=0, stop=40, noise=Noise(0, 0), checkpoint=checkpoint)
    assert log.resumed_from == 20
    for name, tensor in whole.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name
    fresh = model()  # the moments matter: restarting them at 20it is another trajectory
    train(fresh, data, cfg, start=0, stop=20, noise=Noise(0, 0))
    train(fresh, data, cfg, start=20, stop=40, noise=Noise(0, 0))
    assert not torch.equal(fresh.hidden.weight, whole.hidden.weight)


def test_copies_carrying_one_optimizer_state_leave_it_as_it_was(own):
    """Carry: every copy of Wk starts from the same slots; stepping one must not move them."""
    data, cfg = _tokens(), _params().train
    first = build_for_data(ModelConfig(name=BAG), data, 0)
    kept: dict = {}
    train(first, data, cfg, start=0, stop=10, noise=Noise(0, 0), at_steps=[10],
          on_slots=lambda step, slots: kept.update(slots))  # fmt: skip
    before = {i: {k: v.clone() for k, v in s.items()} for i, s in kept.items()}
    ends = []
    for _ in range(2):
        copy = build_for_data(ModelConfig(name=BAG), data, 0)
        copy.load_state_dict(first.state_dict())
        train(copy, data, cfg, start=10, stop=20, noise=Noise(1, 1), slots=kept)
        ends.append(copy.hidden.weight.detach().clone())
    assert torch.equal(ends[0], ends[1])
    assert all(torch.equal(kept[i][k], before[i][k]) for i in kept for k in kept[i])


def test_nan_data_is_named_as_the_datas_fault():
    x = torch.randn(8, 3)
    x[5, 1] = float("nan")
    tensors = {"x_train": x, "y_train": torch.zeros(8, dtype=torch.long)}
    with pytest.raises(LmcError, match=r"data mine: x_train holds NaN or inf .*index 5.*data's"):
        tensors_dataset("mine", tensors, augment=False)


def test_item_data_with_labels_outside_its_classes_or_inf_is_named_when_read():
    class Three(torch.utils.data.TensorDataset):
        classes = ("a", "b", "c")

    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 7, 1])
    cfg = Params.model_validate({"data": {"name": "pkg.mod:f"}}).data
    data = ItemDataset(cfg, Three(x, y), Three(x, y), augment=False)
    with pytest.raises(LmcError, match=r"train item 4 has label 7, outside \[0, 3\)"):
        next(data.train_batches(6, 0, 0))
    x[2, 0] = float("inf")
    with pytest.raises(LmcError, match="holds NaN or inf"):
        next(data.eval_batches("test"))


BAD_OUTPUTS = """
import torch
from torch import nn


class Pair(nn.Module):
    def __init__(self, num_classes, kind="tuple"):
        super().__init__()
        self.fc, self.kind = nn.Linear(12, num_classes), kind

    def forward(self, x):
        out = self.fc(x.float())
        if self.kind == "dict":
            return {"logits": out}
        if self.kind == "object":
            return type("Output", (), {"logits": out})()
        return out, out.sum()


class Wide(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.fc = nn.Linear(12, num_classes + 1)

    def forward(self, x):
        return self.fc(x.float())
"""


@pytest.mark.parametrize(
    ("name", "kwargs", "words"),
    [
        ("Pair", {}, "returns a tuple; lmctrack needs one tensor of logits"),
        ("Pair", {"kind": "dict"}, "returns a dict;"),
        ("Pair", {"kind": "object"}, "returns an object with .logits;"),
        ("Wide", {}, r"returns \(2, 5\) for 2 inputs but the data has 4 classes"),
    ],
)
def test_outputs_that_are_not_logits_of_the_labels_name_the_model(own, name, kwargs, words):
    (own / "ownnet" / "outputs.py").write_text(BAD_OUTPUTS)
    cfg = ModelConfig(name=f"ownnet.outputs:{name}", kwargs=kwargs)
    with pytest.raises(LmcError, match=f"model ownnet.outputs:{name} {words}"):
        build_for_data(cfg, _tokens(), 0)


def test_a_token_network_probed_with_floats_names_the_inputs(own):
    """Without the data (a registered state's float architecture), the one line says which
    inputs it was probed with."""
    with pytest.raises(LmcError, match=r"fails on the data's inputs \(shape \(12,\) float32\)"):
        build_model(ModelConfig(name=BAG), 4, (12,), 0)


def test_timm_efficientnet_is_traced_for_alignment_on_a_real_batch():
    """timm's BatchNormAct2d is traced into a functional batch norm in training mode: shape
    propagation on a batch of one failed there (the zoo table); the data's batch of two does not."""
    timm = pytest.importorskip("timm")
    from lmctrack.engine.align import permutation_spec

    x = torch.randn(8, 3, 32, 32)
    data = tensors_dataset("images", {"x_train": x, "y_train": torch.arange(8) % 4}, False)
    network = timm.create_model("efficientnet_b0", num_classes=4)
    assert len(data.example()) == 2
    assert permutation_spec(network, data.example()).sizes
