"""Model soups of copies: the uniform soup is the mean of the weights with the masks kept and
BatchNorm re-estimated on training data; the greedy soup selects on the validation split carved
from the training data and never reads the test split; the sweep's second verdict is decided
from the measured soups. Tiny networks on learnable tiny data."""

from __future__ import annotations

import json

import pytest
import torch
from test_interpolate import CLASSES, LENGTH
from test_interpolate import conv_bn as unseeded_conv_bn
from torch import nn

from lmctrack.config import schema
from lmctrack.config.params import DataConfig, config_hash
from lmctrack.config.schema import Stats
from lmctrack.engine.data import Split, TensorDataset
from lmctrack.engine.data.validation import hold_out
from lmctrack.engine.soup import greedy_soup, mean_weights, uniform_soup
from lmctrack.engine.state import State
from lmctrack.errors import LmcError
from lmctrack.results.paper import Fork, Pair, Sweep, SweepRow, sweep_from_dict, to_dict
from lmctrack.workflows.instability import soup_rows


def learnable(n: int, seed: int) -> Split:
    """Inputs whose class is the part of the signal with the largest sum (or none of them)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, LENGTH, generator=g)
    sums = torch.stack([x[:, 0, :4].sum(1), x[:, 0, 4:].sum(1), torch.zeros(n)], 1)
    return Split(x, sums.argmax(1))


def tiny_data() -> TensorDataset:
    return hold_out(TensorDataset("tiny", learnable(400, 0), learnable(200, 1), CLASSES), 0.25)


def conv_bn() -> nn.Module:
    """test_interpolate's network, the same init every time: copies differ by data order alone."""
    torch.manual_seed(0)
    return unseeded_conv_bn()


def trained(data: TensorDataset, seed: int, steps: int = 60) -> State:
    """A copy: the same init, its own data order (SGD noise)."""
    model = conv_bn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _, (x, y) in zip(range(steps), data.train_batches(30, seed, seed), strict=False):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return State({k: v.detach().clone() for k, v in model.state_dict().items()})


@pytest.fixture(scope="module")
def data():
    return tiny_data()


@pytest.fixture(scope="module")
def copies(data):
    return [trained(data, seed) for seed in (1, 2, 3)]


def test_uniform_soup_is_the_mean_with_masks_kept_and_batchnorm_reestimated(data, copies):
    mask = {"0.weight": torch.rand(4, 1, 3, generator=torch.Generator().manual_seed(5)) > 0.5}
    masked = [State(c.weights, mask) for c in copies]
    soup = uniform_soup(conv_bn(), masked, data, "cpu")
    assert soup.mask is mask
    for name in ("0.weight", "0.bias", "1.weight", "4.weight"):
        expected = torch.stack([c.masked_weights()[name] for c in masked]).mean(0)
        assert torch.allclose(soup.weights[name], expected)
    assert (soup.weights["0.weight"][~mask["0.weight"]] == 0).all()
    # BatchNorm's statistics are those of the soup's own conv outputs on the training data,
    # not the mean of the copies' statistics.
    conv = nn.Conv1d(1, 4, 3, padding=1)
    conv.load_state_dict({"weight": soup.weights["0.weight"], "bias": soup.weights["0.bias"]})
    with torch.no_grad():
        z = conv(data.train.x).transpose(0, 1).reshape(4, -1)
    assert torch.allclose(soup.weights["1.running_mean"], z.mean(1), atol=1e-5)
    assert torch.allclose(soup.weights["1.running_var"], z.var(1), rtol=1e-4)
    averaged = torch.stack([c.weights["1.running_var"] for c in copies]).mean(0)
    assert not torch.allclose(soup.weights["1.running_var"], averaged, rtol=1e-3)


def test_a_soup_of_different_masks_or_architectures_is_refused(copies):
    masks = [{"0.weight": torch.ones(4, 1, 3, dtype=torch.bool)} for _ in range(2)]
    masks[1]["0.weight"][0] = False
    with pytest.raises(LmcError, match="masks differ"):
        mean_weights([State(copies[0].weights, masks[0]), State(copies[1].weights, masks[1])])
    other = State({**copies[1].weights, "4.weight": torch.zeros(2, 4 * LENGTH)})
    with pytest.raises(LmcError, match="different architectures"):
        mean_weights([copies[0], other])
    with pytest.raises(LmcError, match="at least one ingredient"):
        mean_weights([])


def test_greedy_soup_selects_on_validation_and_never_reads_test(data, copies):
    broken = State({k: v * 5 if k == "4.weight" else v for k, v in copies[0].weights.items()})
    ingredients = [*copies, broken]
    chosen = greedy_soup(conv_bn(), ingredients, data, "cpu")
    assert chosen.order[0] == max(range(4), key=lambda i: chosen.accuracies[i])
    assert chosen.kept[0] == chosen.order[0] and len(chosen.kept) >= 1
    # Another test split (labels and inputs): the same choice and the same weights.
    other = TensorDataset(
        "tiny", data.train, learnable(200, 9), CLASSES, validation=data.validation
    )
    other.test.y = (other.test.y + 1) % CLASSES
    again = greedy_soup(conv_bn(), ingredients, other, "cpu")
    assert (again.kept, again.accuracies) == (chosen.kept, chosen.accuracies)
    assert all(torch.equal(again.state.weights[k], v) for k, v in chosen.state.weights.items())
    # Another validation split changes what it measures: it is what the selection reads.
    held = Split(data.validation.x, (data.validation.y + 1) % CLASSES)
    moved = TensorDataset("tiny", data.train, data.test, CLASSES, validation=held)
    assert greedy_soup(conv_bn(), ingredients, moved, "cpu").accuracies != chosen.accuracies


def test_greedy_soup_without_a_validation_split_is_one_line(copies):
    whole = TensorDataset("tiny", learnable(400, 0), learnable(200, 1), CLASSES)
    with pytest.raises(LmcError, match="data.validation") as e:
        greedy_soup(conv_bn(), copies, whole, "cpu")
    assert "\n" not in str(e.value)


def test_the_validation_split_is_carved_deterministically_from_the_training_data():
    whole = TensorDataset("tiny", learnable(400, 0), learnable(200, 1), CLASSES)
    a, b = tiny_data(), tiny_data()
    assert (a.num_examples("train"), a.num_examples("validation")) == (300, 100)
    assert torch.equal(a.validation.x, b.validation.x) and torch.equal(a.train.x, b.train.x)
    rows = {tuple(r.tolist()) for r in whole.train.x.flatten(1)}
    held = {tuple(r.tolist()) for r in a.validation.x.flatten(1)}
    kept = {tuple(r.tolist()) for r in a.train.x.flatten(1)}
    assert held | kept == rows and not held & kept  # training never sees the held-out part
    assert torch.equal(a.test.x, whole.test.x)
    assert a.fingerprint() != whole.fingerprint()
    with pytest.raises(LmcError, match="leaves some on each side"):
        hold_out(TensorDataset("tiny", learnable(3, 0), learnable(2, 1), CLASSES), 0.1)


def test_data_validation_is_off_by_default_and_left_out_of_the_hash():
    assert DataConfig().validation is None
    assert "validation" not in DataConfig().model_dump()
    assert config_hash(DataConfig(validation=0.1)) != config_hash(DataConfig())
    with pytest.raises(ValueError, match="validation"):
        DataConfig(validation=1.5)


def _fork(k: int, soup: float, copies: list[float]) -> Fork:
    curves = {"test": {"error": [0.1, 0.1], "loss": [1.0, 1.0]}}
    pair = Pair("a", "b", "reset", "same", [0.0, 1.0], curves, {})
    fields = dict(run_id="r", source="s", mask=None, total=100, seeds=[1, 2], bn="reset")
    return Fork(
        k=k,
        reset_schedule=False,
        copies=[],
        pairs=[pair],
        distances={},
        **fields,
        copy_errors=copies,
        soup_error=soup,
    )


def test_the_second_verdict_is_decided_from_the_measured_soups_and_reads_back():
    forks = [_fork(0, 0.30, [0.10, 0.12]), _fork(50, 0.1115, [0.11, 0.11]), _fork(50, 0.11, [0.11])]
    soups = soup_rows(forks, 0.002)
    assert [(s.k, s.matching) for s in soups] == [(0, False), (50, True)]
    assert soups[1].soup == Stats.of([0.1115, 0.11]) and soups[0].best_copy.mean == 0.10
    stable = [SweepRow(0, "test", Stats.of([0.2]), 0.1, False)]
    stable.append(SweepRow(50, "test", Stats.of([0.0]), 0.1, True))
    sweep = Sweep("r", "m", "reset", [0], [1, 2], 0.02, stable, [], [], 0, soups=soups)
    claim, holds = sweep.soup_claim()
    assert holds and "stable at k = 50it" in claim and ": yes," in claim
    sweep.rows[0].stable = True  # stable at 0 but the soup does not match there
    assert sweep.soup_claim()[1] is False and ": no," in sweep.soup_claim()[0]
    back = sweep_from_dict(json.loads(json.dumps(to_dict(sweep))))
    assert back.soups == sweep.soups
    assert Fork.from_dict(to_dict(forks[0])).soup_error == 0.30
    assert to_dict(forks[0])["headline"][schema.SOUP_VS_MEAN] == pytest.approx(0.19)
