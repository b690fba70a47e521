"""The training engine: schedules, determinism, resume, masks kept through training."""

import copy
from pathlib import Path

import pytest
import torch

from lmctrack.config.params import DataConfig, ModelConfig, TrainConfig, load_params
from lmctrack.engine.data import load_dataset
from lmctrack.engine.models import build_model, prunable_names
from lmctrack.engine.prune import full_mask, magnitude_prune
from lmctrack.engine.recipe import learning_rate
from lmctrack.engine.train import Noise, train


@pytest.fixture(scope="module")
def data(data_root):
    """The tiny MNIST-1D, read from the session's file (generated once: conftest.data_root)."""
    torch.set_num_threads(1)
    return load_dataset(DataConfig(name="mnist1d", num_samples=1000, root=str(data_root)))


def _cfg(**kw) -> TrainConfig:
    base = {"lr": 0.05, "momentum": 0.9, "batch_size": 50, "steps": "60it"}
    return load_params(None, [f"train.{k}={v}" for k, v in {**base, **kw}.items()]).train


def _train(data, cfg, noise=Noise(0, 0), init=0, stop=60, **kw):
    model = build_model(ModelConfig(name="mnist1d_cnn"), 10, data.input_shape, init)
    train(model, data, cfg, start=0, stop=stop, noise=noise, **kw)
    return model.state_dict()


def _equal(a, b) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_learning_rate_schedules():
    step_cfg = _cfg(schedule="step", milestones="[10it, 20it]", gamma=0.1, lr=1.0)
    assert [learning_rate(step_cfg, s, 16, 30) for s in (0, 9, 10, 19, 20)] == pytest.approx(
        [1.0, 1.0, 0.1, 0.1, 0.01]
    )
    warm = _cfg(warmup="10it", lr=1.0)
    assert learning_rate(warm, 0, 16, 30) == 0.0
    assert learning_rate(warm, 5, 16, 30) == pytest.approx(0.5)
    assert learning_rate(warm, 25, 16, 30) == pytest.approx(1.0)
    decay = _cfg(schedule="linear_decay", lr=0.03, final_lr=0.005)
    assert learning_rate(decay, 0, 16, 100) == pytest.approx(0.03)
    assert learning_rate(decay, 50, 16, 100) == pytest.approx(0.0175)
    assert learning_rate(decay, 100, 16, 100) == pytest.approx(0.005)
    epochs = _cfg(schedule="step", milestones="[1ep]", lr=1.0)
    assert learning_rate(epochs, 15, 16, 100) == 1.0 and learning_rate(
        epochs, 16, 16, 100
    ) == pytest.approx(0.1)


def test_same_seeds_bit_identical_other_order_differs(data):
    cfg = _cfg()
    a = _train(data, cfg, stop=30)
    b = _train(data, cfg, stop=30)
    assert _equal(a, b)
    c = _train(data, cfg, noise=Noise(1, 0), stop=30)
    assert not _equal(a, c)
    w0_a = build_model(ModelConfig(name="mnist1d_cnn"), 10, data.input_shape, 0).state_dict()
    w0_c = build_model(ModelConfig(name="mnist1d_cnn"), 10, data.input_shape, 0).state_dict()
    assert _equal(w0_a, w0_c)  # the data-order seed never touches W0


def test_training_learns(data):
    model = build_model(ModelConfig(name="mnist1d_cnn"), 10, data.input_shape, 0)
    losses = []
    train(
        model,
        data,
        _cfg(steps="100it"),
        start=0,
        stop=100,
        noise=Noise(0, 0),
        progress=lambda s, m: losses.append(m["loss"]),
    )
    assert losses[-1] < losses[0] * 0.8


def test_resume_after_interruption_is_bit_identical(data, tmp_path: Path):
    cfg = _cfg()
    expected = _train(data, cfg)
    ckpt = tmp_path / "ckpt.safetensors"

    def interrupt(step, metrics):
        if step == 50:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _train(data, cfg, checkpoint=ckpt, checkpoint_every=20, progress=interrupt)
    assert ckpt.is_file()
    model = build_model(ModelConfig(name="mnist1d_cnn"), 10, data.input_shape, 0)
    log = train(
        model, data, cfg, start=0, stop=60, noise=Noise(0, 0), checkpoint=ckpt, checkpoint_every=20
    )
    assert log.resumed_from == 40
    assert log.steps == 20
    assert _equal(model.state_dict(), expected)


def test_states_at_rewind_steps_match_a_shorter_run(data):
    seen = {}
    _train(
        data,
        _cfg(),
        at_steps=[0, 20, 60],
        on_step=lambda s, m: seen.setdefault(s, {k: v.clone() for k, v in m.state_dict().items()}),
    )
    assert sorted(seen) == [0, 20, 60]
    assert _equal(seen[20], _train(data, _cfg(), stop=20))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_mask_kept_through_training(data, optimizer):
    cfg = _cfg(optimizer=optimizer, weight_decay=1e-3)
    model = build_model(ModelConfig(name="mnist1d_cnn"), 10, data.input_shape, 0)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    mask = magnitude_prune(weights, full_mask(weights, prunable_names(model)), 0.5)
    train(model, data, cfg, start=0, stop=30, noise=Noise(0, 0), mask=mask)
    trained = model.state_dict()
    for name, keep in mask.items():
        assert torch.all(trained[name][~keep] == 0)
        assert torch.any(trained[name][keep] != weights[name][keep])


@pytest.mark.parametrize(
    "options",
    [
        {"momentum": 0.0},
        {"momentum": 0.9},
        {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-3},
    ],
)
def test_sgd_is_torch_sgd_bit_for_bit_and_its_state_loads_into_it(options):
    """lmctrack.engine.sgd.SGD steps exactly as torch.optim.SGD; its state_dict has torch's
    layout."""
    from lmctrack.engine.sgd import SGD

    torch.manual_seed(0)
    ours = torch.nn.Sequential(
        torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 3)
    )
    theirs = copy.deepcopy(ours)
    a, b = (
        SGD(ours.parameters(), lr=0.1, **options),
        torch.optim.SGD(theirs.parameters(), lr=0.1, **options),
    )
    for step in range(12):
        x, y = torch.randn(16, 6), torch.randint(3, (16,))
        for model, opt in ((ours, a), (theirs, b)):
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        if step == 5:  # a checkpoint taken and restored midway changes nothing
            restored = SGD(ours.parameters(), lr=0.1, **options)
            restored.load_state_dict(a.state_dict())
            a = restored
    assert all(torch.equal(p, q) for p, q in zip(ours.parameters(), theirs.parameters()))
    mine, torch_state = a.state_dict()["state"], b.state_dict()["state"]
    assert mine.keys() == {
        i for i, s in torch_state.items() if s.get("momentum_buffer") is not None
    }
    for i, slot in mine.items():
        assert torch.equal(slot["momentum_buffer"], torch_state[i]["momentum_buffer"])
