"""Masks: exact IMP counts, ties, one-shot density, random baselines, the criteria registry,
masks that hold in training."""

from __future__ import annotations

import math
import sys

import pytest
import torch
from torch import nn

from lmctrack.engine.prune import (
    CRITERIA,
    RANDOM,
    apply_mask,
    check_mask,
    criterion,
    density,
    full_mask,
    keep_masked,
    layer_densities,
    magnitude_prune,
    prune_fraction,
    prune_like,
    prune_to_density,
)
from lmctrack.errors import LmcError

torch.set_num_threads(1)

SHAPES = {"a.weight": (7,), "b.weight": (13, 1), "c.weight": (5, 6)}  # 50 prunable weights


def make_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    weights = {name: torch.randn(shape, generator=g) for name, shape in SHAPES.items()}
    weights["c.bias"] = torch.randn(5, generator=g)  # never prunable
    return weights


def kept(mask) -> int:
    return sum(int(m.sum()) for m in mask.values())


def test_full_mask_keeps_everything_prunable():
    mask = full_mask(make_weights(), list(SHAPES))
    assert set(mask) == set(SHAPES)
    assert all(m.dtype == torch.bool and bool(m.all()) for m in mask.values())
    assert density(mask) == 1.0


def test_global_levels_remove_ceil_fraction_of_remaining():
    weights = make_weights()
    mask = full_mask(weights, list(SHAPES))
    remaining = 50
    for _ in range(4):
        new = magnitude_prune(weights, mask, 0.2)
        expected = remaining - math.ceil(0.2 * remaining)  # 50 -> 40 -> 32 -> 25 -> 20
        assert kept(new) == expected
        for name in mask:  # pruned weights stay pruned
            assert not bool((new[name] & ~mask[name]).any())
        mask, remaining = new, expected
    assert remaining == 20
    assert density(mask) == pytest.approx(0.4)


def test_global_prunes_smallest_magnitudes_across_layers():
    weights = make_weights(1)
    mask = full_mask(weights, list(SHAPES))
    once = magnitude_prune(weights, mask, 0.2)
    twice = magnitude_prune(weights, once, 0.2)
    removed = torch.cat([weights[n].abs()[once[n] & ~twice[n]] for n in SHAPES])
    survivors = torch.cat([weights[n].abs()[twice[n]] for n in SHAPES])
    assert removed.numel() == 8
    assert removed.max() <= survivors.min()


def test_already_pruned_weights_never_return_even_when_large():
    weights = make_weights(2)
    mask = magnitude_prune(weights, full_mask(weights, list(SHAPES)), 0.5)
    grown = {
        n: torch.where(mask[n], w, torch.full_like(w, 100.0)) if n in mask else w
        for n, w in weights.items()
    }
    new = magnitude_prune(grown, mask, 0.2)
    for name in mask:
        assert not bool((new[name] & ~mask[name]).any())
    assert kept(new) == kept(mask) - math.ceil(0.2 * kept(mask))


def test_fraction_times_count_is_not_fooled_by_float_rounding():
    weights = {"w": torch.arange(1.0, 31.0)}
    mask = magnitude_prune(weights, {"w": torch.ones(30, dtype=torch.bool)}, 0.1)
    assert kept(mask) == 27  # 0.1 * 30 is 3.0000000000000004 in floating point: remove 3, not 4
    assert not bool(mask["w"][:3].any())


def test_layerwise_prunes_each_tensor_by_the_fraction():
    weights = make_weights(3)
    mask = full_mask(weights, list(SHAPES))
    new = magnitude_prune(weights, mask, 0.2, strategy="layerwise")
    for name, shape in SHAPES.items():
        n = math.prod(shape)
        assert int(new[name].sum()) == n - math.ceil(0.2 * n)
        assert weights[name].abs()[~new[name]].max() <= weights[name].abs()[new[name]].min()


def test_ties_are_broken_deterministically_whatever_the_key_order():
    weights = {name: torch.ones(shape) for name, shape in SHAPES.items()}
    mask = full_mask(weights, list(SHAPES))
    first = magnitude_prune(weights, mask, 0.3)
    reordered = magnitude_prune(weights, dict(reversed(list(mask.items()))), 0.3)
    assert kept(first) == 50 - 15
    for name in SHAPES:
        assert torch.equal(first[name], reordered[name])


def test_prune_to_density_keeps_rounded_count():
    weights = make_weights(4)
    mask = full_mask(weights, list(SHAPES))
    one_shot = prune_to_density(weights, mask, 0.3)
    assert kept(one_shot) == 15
    dropped = torch.cat([weights[n].abs()[~one_shot[n]] for n in SHAPES])
    survivors = torch.cat([weights[n].abs()[one_shot[n]] for n in SHAPES])
    assert dropped.max() <= survivors.min()
    per_layer = prune_to_density(weights, mask, 0.3, strategy="layerwise")
    assert {n: int(m.sum()) for n, m in per_layer.items()} == {
        "a.weight": 2,
        "b.weight": 4,
        "c.weight": 9,
    }
    with pytest.raises(LmcError, match="only 15 left"):
        prune_to_density(weights, one_shot, 0.5)


def random_prune(mask, seed: int, strategy: str = "layerwise"):
    """The random-pruning baseline (baselines.random_pruned) on these weights."""
    return prune_like(make_weights(), mask, CRITERIA[RANDOM], seed, strategy)


def test_random_prune_layerwise_keeps_each_layer_density():
    weights = make_weights(5)
    mask = magnitude_prune(weights, full_mask(weights, list(SHAPES)), 0.5, strategy="layerwise")
    shuffled = random_prune(mask, seed=0)
    assert layer_densities(shuffled) == layer_densities(mask)
    assert any(not torch.equal(shuffled[n], mask[n]) for n in SHAPES)
    again = random_prune(mask, seed=0)
    other = random_prune(mask, seed=1)
    assert all(torch.equal(again[n], shuffled[n]) for n in SHAPES)
    assert any(not torch.equal(other[n], shuffled[n]) for n in SHAPES)


def test_random_prune_global_keeps_total_count():
    big = {"x": torch.ones(400, dtype=torch.bool), "y": torch.zeros(400, dtype=torch.bool)}
    weights = {"x": torch.randn(400), "y": torch.randn(400)}
    shuffled = prune_like(weights, big, CRITERIA[RANDOM], 0, "global")
    assert kept(shuffled) == 400
    assert 0.3 < layer_densities(shuffled)["y"] < 0.7  # positions drawn over all prunable weights


def test_random_criterion_prunes_only_remaining_weights_at_random():
    weights = make_weights(2)
    mask = magnitude_prune(weights, full_mask(weights, list(SHAPES)), 0.5)
    once = prune_fraction(weights, mask, 0.2, "global", criterion(RANDOM), seed=3)
    assert kept(once) == 25 - math.ceil(0.2 * 25)
    assert all(bool((once[n] <= mask[n]).all()) for n in SHAPES)  # pruned weights stay pruned
    assert any(not torch.equal(once[n], magnitude_prune(weights, mask, 0.2)[n]) for n in SHAPES)
    again = prune_fraction(weights, mask, 0.2, "global", criterion(RANDOM), seed=3)
    assert all(torch.equal(again[n], once[n]) for n in SHAPES)


def keep_smallest(weights, mask, generator):
    """A criterion of one function: keep the smallest |w| (the reverse of magnitude)."""
    return {name: -weights[name].abs() for name in mask}


def test_a_new_criterion_is_one_function_and_one_entry(monkeypatch):
    monkeypatch.setitem(CRITERIA, "keep_smallest", keep_smallest)
    weights = make_weights(4)
    mask = full_mask(weights, list(SHAPES))
    new = prune_to_density(weights, mask, 0.4, "global", criterion("keep_smallest"))
    dropped = torch.cat([weights[n].abs()[~new[n]] for n in SHAPES])
    survivors = torch.cat([weights[n].abs()[new[n]] for n in SHAPES])
    assert kept(new) == 20 and survivors.max() <= dropped.min()


def test_the_users_criterion_by_import_path_or_plugin(tmp_path, monkeypatch):
    (tmp_path / "my_criteria.py").write_text(
        "def smallest(weights, mask, generator):\n    return {n: -weights[n].abs() for n in mask}\n"
    )
    plugin = tmp_path / "myplug-0.1.dist-info"  # an installed distribution's entry point
    plugin.mkdir()
    (plugin / "METADATA").write_text("Metadata-Version: 2.1\nName: myplug\nVersion: 0.1\n")
    (plugin / "entry_points.txt").write_text(
        "[lmctrack.pruning]\nsmallest = my_criteria:smallest\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_criteria", raising=False)
    weights = make_weights(4)
    mask = full_mask(weights, list(SHAPES))
    expected = prune_to_density(weights, mask, 0.5, "global", keep_smallest)
    for name in ("my_criteria:smallest", "smallest"):
        mine = prune_fraction(weights, mask, 0.5, "global", criterion(name))
        assert all(torch.equal(mine[n], expected[n]) for n in SHAPES)
    with pytest.raises(
        LmcError, match="imp.criterion 'my_criteria:nope': my_criteria has no attribute"
    ):
        criterion("my_criteria:nope")


def flat_c(weights, mask, generator):
    """A criterion that scores c.weight flattened: the wrong shape."""
    return {n: weights[n].reshape(-1) if n == "c.weight" else weights[n].abs() for n in mask}


def test_an_unknown_or_misshapen_criterion_is_a_one_line_error():
    with pytest.raises(
        LmcError, match="unknown pruning criterion 'taylor'.*magnitude, random"
    ) as e:
        criterion("taylor")
    assert "\n" not in str(e.value)
    weights = make_weights()
    mask = full_mask(weights, list(SHAPES))
    with pytest.raises(LmcError, match="no score of shape \\(5, 6\\) for 'c.weight'"):
        prune_fraction(weights, mask, 0.2, "global", flat_c)


def test_apply_mask_zeroes_pruned_weights_only():
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    mask = {"0.weight": torch.rand(3, 4, generator=torch.Generator().manual_seed(0)) > 0.5}
    before = model[0].weight.detach().clone()
    apply_mask(model, mask)
    assert bool((model[0].weight[~mask["0.weight"]] == 0).all())
    assert torch.equal(model[0].weight[mask["0.weight"]], before[mask["0.weight"]])


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01),
        lambda p: torch.optim.Adam(p, lr=0.01),
        lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1),
    ],
)
def test_keep_masked_holds_through_training(make_opt):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    weights = {k: v.detach() for k, v in model.state_dict().items()}
    mask = prune_to_density(weights, full_mask(weights, ["0.weight", "2.weight"]), 0.4)
    start = {k: v.clone() for k, v in weights.items()}
    opt = make_opt(model.parameters())
    keeper = keep_masked(model, mask)
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        assert bool((model[0].weight.grad[~mask["0.weight"]] == 0).all())
        opt.step()
        keeper.after_step()
    for name, param in [("0.weight", model[0].weight), ("2.weight", model[2].weight)]:
        assert bool((param[~mask[name]] == 0).all())
        assert not torch.equal(param[mask[name]], start[name][mask[name]])
        for buffer in opt.state[param].values():  # momentum / Adam moments of pruned entries
            if buffer.shape == param.shape:
                assert bool((buffer[~mask[name]] == 0).all())
    keeper.remove()
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    assert bool((model[0].weight.grad[~mask["0.weight"]] != 0).any())


def test_check_mask_names_the_first_bad_tensor():
    weights = make_weights()
    good = full_mask(weights, list(SHAPES))
    check_mask(good, weights, prunable=list(SHAPES))
    with pytest.raises(LmcError, match="'conv9.weight' is not a weight"):
        check_mask({**good, "conv9.weight": torch.ones(2, dtype=torch.bool)}, weights)
    with pytest.raises(LmcError, match=r"'c.weight' has shape \(6, 5\)"):
        check_mask({**good, "c.weight": torch.ones(6, 5, dtype=torch.bool)}, weights)
    with pytest.raises(LmcError, match="no entry for prunable tensor 'b.weight'"):
        check_mask({"a.weight": good["a.weight"]}, weights, prunable=list(SHAPES))
    with pytest.raises(LmcError, match="'c.weight' has shape"):
        magnitude_prune(weights, {**good, "c.weight": torch.ones(30, dtype=torch.bool)})


def test_bad_arguments_are_clear_errors():
    weights = make_weights()
    mask = full_mask(weights, list(SHAPES))
    with pytest.raises(LmcError, match="unknown pruning strategy 'lottery'"):
        magnitude_prune(weights, mask, 0.2, strategy="lottery")
    with pytest.raises(LmcError, match="not in"):
        magnitude_prune(weights, mask, 1.5)
    with pytest.raises(LmcError, match="not in"):
        prune_to_density(weights, mask, 0.0)
