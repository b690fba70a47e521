"""W0 from the user's checkpoint: a state_dict of model.name read without running code, the
output layer replaced by a seeded one for another class count, anything else one line."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from lmctrack.config.params import ModelConfig
from lmctrack.engine.models import build_model, output_layer_name
from lmctrack.engine.pretrained import as_w0
from lmctrack.errors import LmcError

CNN = ModelConfig(name="mnist1d_cnn")
SHAPE = (1, 40)


def net(classes: int = 10, seed: int = 0, cfg: ModelConfig = CNN):
    return build_model(cfg, classes, SHAPE, seed)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_a_state_dict_of_the_same_network_is_w0_bit_for_bit(tmp_path, suffix):
    saved = net(seed=3).state_dict()
    path = tmp_path / f"pre{suffix}"
    if suffix == ".pt":
        torch.save(saved, path)
    else:
        save_file({k: v.contiguous() for k, v in saved.items()}, path)
    w0 = as_w0(net(seed=0), path, CNN.name)
    assert w0.replaced is None
    assert all(torch.equal(w0.weights[k], v) for k, v in saved.items())


def test_another_class_count_replaces_the_output_layer_by_the_seeded_one(tmp_path):
    path = tmp_path / "five.pt"
    five = net(classes=5, seed=3).state_dict()
    torch.save(five, path)
    target = net(classes=10, seed=7)
    head = output_layer_name(target)
    seeded = net(classes=10, seed=7).state_dict()
    w0 = as_w0(target, path, CNN.name)
    assert w0.replaced == f"{head}: 5 -> 10 classes, seeded"
    for k, v in w0.weights.items():
        expected = seeded[k] if k.startswith(f"{head}.") else five[k]
        assert torch.equal(v, expected), k


def test_a_mismatch_or_a_file_that_is_not_a_state_dict_is_one_line(tmp_path):
    mlp = tmp_path / "mlp.pt"
    torch.save(net(cfg=ModelConfig(name="mnist1d_mlp")).state_dict(), mlp)
    wide = tmp_path / "wide.pt"
    torch.save(net(cfg=ModelConfig(name="mnist1d_cnn", width=64)).state_dict(), wide)
    listed = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], listed)
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint\n")
    cases = [
        (mlp, "is not a state_dict of mnist1d_cnn"),
        (wide, "does not fit mnist1d_cnn"),
        (listed, "holds a list, not a state_dict"),
        (text, "not readable as a state_dict"),
        (tmp_path / "absent.pt", "does not exist"),
    ]
    for path, needle in cases:
        with pytest.raises(LmcError, match=needle) as e:
            as_w0(net(), path, CNN.name)
        assert "\n" not in str(e.value), path
