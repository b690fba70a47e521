"""Dataset distillation on a tiny MNIST-1D (800 training examples): real networks, real training."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import pytest
import torch
from safetensors import safe_open

from lmctrack.config.params import DataConfig, ModelConfig, TrainConfig
from lmctrack.engine.data import load_dataset
from lmctrack.engine.distill import (
    DmParams,
    MttParams,
    Quality,
    distill_dm,
    distill_mtt,
    distribution_matching_loss,
    embed,
    evaluate_quality,
    evaluation_recipe,
    expert_snapshot_steps,
    synthetic_dataset,
    train_expert,
    trajectory_matching_loss,
    write_distilled,
)
from lmctrack.engine.models import build_model
from lmctrack.engine.train import Noise, train
from lmctrack.errors import LmcError

CNN = ModelConfig(name="mnist1d_cnn")
EXPERT = TrainConfig(lr=0.05, momentum=0.0, batch_size=100, steps="4ep", device="cpu")
EPOCHS = 4


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def mnist1d(data_root):
    """The tiny MNIST-1D, read from the session's file (generated once: conftest.data_root)."""
    return load_dataset(DataConfig(name="mnist1d", num_samples=1000, root=str(data_root)))


@pytest.fixture(scope="module")
def experts(mnist1d):
    """Two experts, 4 epochs of 8 steps each: 5 snapshots per trajectory."""
    return [
        train_expert(build_model(CNN, 10, mnist1d.input_shape, s), mnist1d, EXPERT, Noise(s, s), 4)
        for s in (0, 1)
    ]


def test_expert_snapshots_are_the_training_states_at_epoch_boundaries(mnist1d, experts):
    steps = expert_snapshot_steps(mnist1d.num_examples("train"), EXPERT.batch_size, EPOCHS)
    assert steps == [0, 8, 16, 24, 32]
    assert len(experts[0]) == EPOCHS + 1
    model = build_model(CNN, 10, mnist1d.input_shape, 0)
    for k, w in model.named_parameters():
        assert torch.equal(experts[0][0][k], w.detach())
    train(model, mnist1d, EXPERT, start=0, stop=steps[1], noise=Noise(0, 0))
    for k, w in model.named_parameters():
        assert torch.equal(experts[0][1][k], w.detach())
    assert not torch.equal(experts[0][1]["fc.weight"], experts[0][2]["fc.weight"])


def _mean_matching_loss(mnist1d, experts, distilled, params: MttParams, net=CNN) -> float:
    """The matching loss over every (expert, start epoch), whole-set batches: no sampling noise."""
    model = build_model(net, 10, mnist1d.input_shape, 0)
    lr = torch.tensor(distilled.lr)
    losses = [
        trajectory_matching_loss(
            model, distilled.x, distilled.y, lr, e[t], e[t + params.expert_epochs], params.syn_steps
        ).item()
        for e in experts
        for t in range(params.max_start_epoch)
    ]
    return sum(losses) / len(losses)


def test_mtt_matching_loss_decreases(mnist1d, experts):
    params = MttParams(
        images_per_class=2, iterations=20, syn_steps=5, expert_epochs=1, max_start_epoch=3,
        lr_img=10.0, lr_init=0.05,
    )  # fmt: skip
    before = distill_mtt(CNN, mnist1d, experts, replace(params, iterations=0))
    after = distill_mtt(CNN, mnist1d, experts, params)
    assert torch.equal(before.y, after.y) and before.lr == pytest.approx(0.05)
    assert len(after.losses) == 20 and after.lr != pytest.approx(0.05)  # the student lr is learned
    start = _mean_matching_loss(mnist1d, experts, before, params)
    end = _mean_matching_loss(mnist1d, experts, after, params)
    assert end < 0.9 * start, (start, end)


def test_distillation_is_seeded(mnist1d):
    params = DmParams(images_per_class=2, iterations=3, batch_real=32, seed=5)
    a, b = distill_dm(CNN, mnist1d, params), distill_dm(CNN, mnist1d, params)
    other = distill_dm(CNN, mnist1d, DmParams(images_per_class=2, iterations=3, batch_real=32))
    assert torch.equal(a.x, b.x) and a.losses == b.losses
    assert not torch.equal(a.x, other.x)


def test_embedding_is_what_the_output_layer_receives(mnist1d):
    model = build_model(CNN, 10, mnist1d.input_shape, 3)
    x = mnist1d.train.x[:7]
    features = embed(model, x)
    assert features.shape == (7, model.fc.in_features)
    assert torch.allclose(model.fc(features), model(x))


def test_dm_matching_loss_decreases(mnist1d):
    params = DmParams(images_per_class=5, iterations=30, batch_real=64, lr_img=0.2)
    before = distill_dm(CNN, mnist1d, replace(params, iterations=0))
    after = distill_dm(CNN, mnist1d, params)
    # Fixed judges: 5 random networks the distillation never saw, on all real training data.
    order = torch.argsort(mnist1d.train.y, stable=True)
    x_real, counts = mnist1d.train.x[order], torch.bincount(mnist1d.train.y).tolist()

    def loss(x_syn):
        nets = [build_model(CNN, 10, mnist1d.input_shape, 10_000 + s) for s in range(5)]
        return sum(distribution_matching_loss(n, x_real, counts, x_syn, 5).item() for n in nets)

    assert loss(after.x) < 0.5 * loss(before.x)


def test_written_file_loads_as_a_tensors_dataset(mnist1d, tmp_path):
    distilled = distill_dm(CNN, mnist1d, DmParams(images_per_class=3, iterations=2, batch_real=16))
    path = tmp_path / "out" / "distilled.safetensors"
    digest = write_distilled(path, distilled, mnist1d)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    loaded = load_dataset(DataConfig(name="tensors", path=str(path)))
    assert torch.equal(loaded.train.x, distilled.x) and torch.equal(loaded.train.y, distilled.y)
    assert torch.equal(loaded.test.x, mnist1d.test.x) and torch.equal(loaded.test.y, mnist1d.test.y)
    assert loaded.num_classes == 10 and loaded.input_shape == mnist1d.input_shape
    assert loaded.train.y.tolist() == [c for c in range(10) for _ in range(3)]
    assert (
        loaded.fingerprint() == synthetic_dataset(distilled.x, distilled.y, mnist1d).fingerprint()
    )
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["method"] == "dm" and meta["source_fingerprint"] == mnist1d.fingerprint()
    assert json.loads(meta["params"])["images_per_class"] == 3


@pytest.mark.slow
def test_distilled_set_trains_the_default_network_above_chance(mnist1d):
    distilled = distill_dm(CNN, mnist1d, DmParams(images_per_class=10, iterations=150))
    quality = evaluate_quality(
        distilled, mnist1d, CNN, evaluation_recipe(steps="200ep"), seeds=(0, 1)
    )
    assert len(quality.distilled) == 2 and quality.size == 100
    assert quality.accuracy("distilled").mean > 0.2, quality.summary()  # chance is 0.1
    assert 0 < quality.accuracy("random").mean < 1


def test_quality_reports_mean_and_population_std():
    quality = Quality(distilled=[0.5, 0.7], random=[0.2, 0.2], size=20)
    assert quality.metrics() == pytest.approx(
        {
            "distilled_accuracy_mean": 0.6,
            "distilled_accuracy_std": 0.1,
            "random_subset_accuracy_mean": 0.2,
            "random_subset_accuracy_std": 0.0,
        }
    )
    assert quality.summary() == (
        "20 examples: distilled 60.0 ± 10.0%, random real subset 20.0 ± 0.0% test accuracy "
        "over 2 seeds"
    )


def test_more_images_per_class_than_a_class_holds_is_refused(mnist1d, experts):
    smallest = int(torch.bincount(mnist1d.train.y).min())
    with pytest.raises(LmcError, match=f"images_per_class={smallest + 1} but class"):
        distill_dm(CNN, mnist1d, DmParams(images_per_class=smallest + 1, iterations=1))
    with pytest.raises(LmcError, match="lower images_per_class"):
        distill_mtt(
            CNN,
            mnist1d,
            experts,
            MttParams(images_per_class=smallest + 1, max_start_epoch=2, expert_epochs=1),
        )


def test_too_short_experts_are_refused(mnist1d, experts):
    # Starts t <= 3, targets t + 2 <= 5: the 4-epoch experts cannot provide epoch 5.
    with pytest.raises(LmcError, match="expert 0 has 4 epochs .* need 5"):
        distill_mtt(CNN, mnist1d, experts, MttParams(max_start_epoch=4, expert_epochs=2))
    with pytest.raises(LmcError, match="no expert trajectories"):
        distill_mtt(CNN, mnist1d, [], MttParams())


def test_experts_of_another_network_are_refused(mnist1d, experts):
    wide = ModelConfig(name="mnist1d_cnn", width=8)
    with pytest.raises(LmcError, match="same model as the distillation"):
        distill_mtt(wide, mnist1d, experts, MttParams(max_start_epoch=2, expert_epochs=1))


def test_mtt_on_a_batchnorm_network_learns_and_leaves_its_statistics_alone(mnist1d):
    """The student normalises with its synthetic batch's statistics (train mode); the loss falls,
    and the network's running statistics are untouched by the unrolled steps."""
    bn = ModelConfig(name="mnist1d_cnn_bn")
    model = build_model(bn, 10, mnist1d.input_shape, 0)
    expert = train_expert(model, mnist1d, EXPERT, Noise(0, 0), 3)
    before = {k: b.clone() for k, b in model.named_buffers()}
    x = mnist1d.train.x[:20].clone().requires_grad_(True)
    lr = torch.tensor(0.05)
    loss = trajectory_matching_loss(model, x, mnist1d.train.y[:20], lr, expert[0], expert[1], 5)
    loss.backward()
    assert torch.isfinite(loss) and x.grad.abs().sum() > 0
    assert all(torch.equal(before[k], b) for k, b in model.named_buffers())
    params = MttParams(images_per_class=2, iterations=20, syn_steps=5, max_start_epoch=2,
                       expert_epochs=1)  # fmt: skip
    before = distill_mtt(bn, mnist1d, [expert], replace(params, iterations=0))
    after = distill_mtt(bn, mnist1d, [expert], params)
    start = _mean_matching_loss(mnist1d, [expert], before, params, bn)
    end = _mean_matching_loss(mnist1d, [expert], after, params, bn)
    assert end < 0.9 * start, (start, end)


def test_divergence_is_reported(mnist1d):
    with pytest.raises(LmcError, match="diverged .* lower lr_img"):
        distill_dm(CNN, mnist1d, DmParams(images_per_class=2, iterations=50, lr_img=1e30))
