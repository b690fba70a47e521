"""params.yaml validation, the Step type and the canonical config hash."""

from pathlib import Path

import pytest

from lmctrack.config.params import Params, Step, config_hash, iterations_per_epoch, load_params
from lmctrack.errors import LmcError
from lmctrack.workflows.imp_chain import pruning_settings


@pytest.mark.parametrize(
    ("text", "ep", "it"),
    [("2000it", 0, 2000), ("160ep", 160, 0), ("120ep50it", 120, 50), (500, 0, 500), ("0it", 0, 0)],
)
def test_step_parsing(text, ep, it):
    step = Step.parse(text)
    assert (step.ep, step.it) == (ep, it)
    assert Step.parse(str(step)) == step


@pytest.mark.parametrize("bad", ["", "12", "ep", "3it2ep", "-5it", "1.5ep", -3])
def test_step_rejects_malformed(bad):
    with pytest.raises(ValueError):
        Step.parse(bad)


def test_step_iterations_use_ceil_of_examples_over_batch():
    ipe = iterations_per_epoch(50000, 128)
    assert ipe == 391  # ceil(50000 / 128)
    assert Step.parse("2ep10it").iterations(ipe) == 2 * 391 + 10


def test_defaults_validate_and_round_trip(tmp_path: Path):
    params = load_params(None)
    assert params.train.steps.iterations(160) == 3000
    path = tmp_path / "p.yaml"
    path.write_text("train:\n  steps: 2ep\n  milestones: [1ep, 50it]\n")
    loaded = load_params(path)
    assert loaded.train.steps == Step(ep=2)
    assert loaded.model_dump(mode="json")["train"]["milestones"] == ["1ep", "50it"]
    assert Params.model_validate(loaded.model_dump(mode="json")) == loaded


def test_overrides_are_typed_and_nested(tmp_path: Path):
    params = load_params(None, ["train.lr=0.05", "instability.splits=[test]", "data.augment=true"])
    assert params.train.lr == 0.05
    assert params.instability.splits == ["test"]
    assert params.data.augment is True


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("train:\n  lrr: 0.1\n", "train.lrr: unknown key"),
        ("train:\n  lr: -1\n", "train.lr"),
        ("train:\n  steps: 30 steps\n", "train.steps"),
        ("data:\n  name: imagenette\n", "data.name"),
        ("bogus: 1\n", "bogus: unknown key"),
        ("train: [1, 2\n", "malformed YAML"),
        ("- just\n- a list\n", "expected sections"),
        ("imp:\n  one_shot: true\n", "imp.density"),
    ],
)
def test_malformed_params_name_the_field(tmp_path: Path, content: str, needle: str):
    path = tmp_path / "params.yaml"
    path.write_text(content)
    with pytest.raises(LmcError) as info:
        load_params(path)
    message = str(info.value)
    assert needle in message
    assert "\n" not in message


def test_bad_override_and_missing_file(tmp_path: Path):
    with pytest.raises(LmcError, match="section.key=value"):
        load_params(None, ["train.lr"])
    with pytest.raises(LmcError, match="train.momentum"):
        load_params(None, ["train.momentum=2"])
    with pytest.raises(LmcError, match="not found"):
        load_params(tmp_path / "missing.yaml")


def test_config_hash_is_canonical():
    a = load_params(None, ["train.lr=0.1", "train.steps=3000it"])
    b = load_params(None, ["train.steps=3000", "train.lr=0.1"])
    c = load_params(None, ["train.lr=0.2"])
    assert config_hash(a.train) == config_hash(b.train)
    assert config_hash(a.train) != config_hash(c.train)
    assert config_hash({"x": 1, "y": 2}) == config_hash({"y": 2, "x": 1})


@pytest.mark.parametrize(
    "path",
    sorted(Path(__file__).parent.parent.glob("configs/*.yaml"))
    + [Path(__file__).parent.parent / "params.yaml"],
    ids=lambda p: p.name,
)
def test_shipped_params_files_validate(path: Path):
    params = load_params(path)
    assert params.train.steps.iterations(100) > 0


def test_imagenet_presets_give_three_samples_and_bound_the_path_passes():
    """1.28M training images per alpha would make a path unaffordable: the presets bound the
    train-split evaluation and the BatchNorm reset, and give n >= 3 barrier samples per k."""
    for name in ("resnet50_imagenet", "inception_v3_imagenet"):
        params = load_params(Path("configs") / f"{name}.yaml")
        inst = params.instability
        assert inst.inits * (inst.copies * (inst.copies - 1) // 2) >= 3
        assert inst.eval_limit and inst.bn_limit and inst.bn_limit <= 50_000
        assert params.imp.replicates >= 2


@pytest.mark.parametrize(
    ("written", "read"),
    [
        ("off", "off"),
        ("on", "on"),
        ("false", "off"),
        ("true", "on"),
        ("no", "off"),
        ("auto", "auto"),
    ],
)
def test_on_off_settings_accept_yaml_booleans(tmp_path: Path, written: str, read: str):
    """YAML reads a bare off/on/no/yes as a boolean; the setting means the word the user wrote."""
    assert load_params(None, [f"runner.batch_copies={written}"]).runner.batch_copies == read
    path = tmp_path / "params.yaml"
    path.write_text(f"runner:\n  batch_copies: {written}\n")
    assert load_params(path).runner.batch_copies == read


def test_a_rejected_value_names_where_it_came_from(tmp_path: Path):
    path = tmp_path / "params.yaml"
    path.write_text("runner:\n  batch_copies: maybe\ntrain:\n  lr: 0.1\n")
    with pytest.raises(LmcError) as from_set:
        load_params(path, ["train.lr=0.1", "runner.batch_copies=sometimes"])
    message = str(from_set.value)
    assert message.startswith("--set runner.batch_copies=sometimes: "), message
    assert "'sometimes'" in message and str(path) not in message and "\n" not in message
    with pytest.raises(LmcError) as from_file:
        load_params(path, ["train.lr=0.1"])
    message = str(from_file.value)
    assert message.startswith(f"params file {path}: runner.batch_copies"), message
    assert "--set" not in message.split(";")[0]
    with pytest.raises(LmcError, match=r"^--set train.momentum=2: "):
        load_params(None, ["train.momentum=2"])


def test_pruning_keys_of_configs_without_a_criterion_are_unchanged():
    """Runs stored before imp.criterion existed are still found: the same hashes as then."""
    fields = ("fraction", "one_shot", "density", "strategy", "reinit_start")
    assert config_hash(pruning_settings(Params(), *fields)) == "a8ef1d8c23829497"
    layerwise = Params(imp={"strategy": "layerwise"})
    assert config_hash(pruning_settings(layerwise, *fields)) == "a26979bf4ee7e645"
    assert config_hash(pruning_settings(Params(), "fraction", "strategy")) == "a87720de90418ae7"
    assert pruning_settings(Params(imp={"criterion": "magnitude"}), *fields) == pruning_settings(
        Params(), *fields
    )
    random = Params(imp={"criterion": "random"})
    assert pruning_settings(random, *fields)["criterion"] == "random"


# Every section's hash of every built-in config, as lmctrack computed them at commit 6570c46: the
# keys of stored work derive from them, so a new setting leaves its default out of the dump
# (QuietDefaults), or work stored before is no longer found.
SECTIONS = [
    "data",
    "model",
    "train",
    "seeds",
    "instability",
    "imp",
    "prune",
    "sparse",
    "align",
    "distill",
    "followup",
    "runner",
    "store",
]
PINNED = {
    "params.yaml": "142e1330e8f36f6a 0d4a9bf5c7f28bfd 03c16291524b2efe de649c485a00fcd1 af1e01d5be12ef77 d999e8f30c0dba8c 3baac4f396d8d8e1 6fa8ff2ac0a76cad 5d36e7d1608e40d8 c715460c75ea8676 5fb3ba764e02a238 776efb80951c29c1 4b8ad81ce423372b",
    "configs/inception_v3_imagenet.yaml": "732e8bcddadd0fe9 05247e47f0cd2508 6dcb1b15e2734822 de649c485a00fcd1 74daa25073252b8d f4199115ef964efb 3baac4f396d8d8e1 0c315b30a348b076 5d36e7d1608e40d8 c715460c75ea8676 eedc4a1e2abd53d8 776efb80951c29c1 4b8ad81ce423372b",
    "configs/lenet_mnist.yaml": "00dea22c6de1c8ac bc55815d3ceb21e4 296abb0464f95be2 de649c485a00fcd1 119ac47b6175f0d3 af87e4f24c73558b 3baac4f396d8d8e1 0c315b30a348b076 5d36e7d1608e40d8 c715460c75ea8676 eedc4a1e2abd53d8 776efb80951c29c1 4b8ad81ce423372b",
    "configs/mnist1d_mlp.yaml": "142e1330e8f36f6a a89d5545eda3ec2a 1efe2384b8a030b3 de649c485a00fcd1 e2db34bbb324823d 3b0717808f477372 3baac4f396d8d8e1 0c315b30a348b076 5d36e7d1608e40d8 c715460c75ea8676 eedc4a1e2abd53d8 776efb80951c29c1 4b8ad81ce423372b",
    "configs/resnet20_cifar10_low.yaml": "8981eeacf15dccaf 7db5045da72a5280 8bbaa474102256d5 de649c485a00fcd1 8433d696d744aaeb 1a1706f14735ac24 3baac4f396d8d8e1 0c315b30a348b076 5d36e7d1608e40d8 c715460c75ea8676 eedc4a1e2abd53d8 776efb80951c29c1 4b8ad81ce423372b",
    "configs/resnet20_cifar10_standard.yaml": "8981eeacf15dccaf 7db5045da72a5280 31bdbb8b41f3b2c2 de649c485a00fcd1 8433d696d744aaeb 19078b3574252c91 3baac4f396d8d8e1 0c315b30a348b076 5d36e7d1608e40d8 c715460c75ea8676 eedc4a1e2abd53d8 776efb80951c29c1 4b8ad81ce423372b",
    "configs/resnet20_cifar10_warmup.yaml": "8981eeacf15dccaf 7db5045da72a5280 173d368f9a163eae de649c485a00fcd1 8433d696d744aaeb 1a1706f14735ac24 3baac4f396d8d8e1 0c315b30a348b076 5d36e7d1608e40d8 c715460c75ea8676 eedc4a1e2abd53d8 776efb80951c29c1 4b8ad81ce423372b",
    "configs/resnet50_imagenet.yaml": "732e8bcddadd0fe9 cc20fb86933ccf29 4763b32006a89ccb de649c485a00fcd1 8cb8782e2f40c485 4affada0b2b471d1 3baac4f396d8d8e1 0c315b30a348b076 5d36e7d1608e40d8 c715460c75ea8676 eedc4a1e2abd53d8 776efb80951c29c1 4b8ad81ce423372b",
    "configs/vgg16_cifar10_low.yaml": "8981eeacf15dccaf ddb7e4c260f36565 5304e35734553fba de649c485a00fcd1 dadbf4d9aecebf53 a406fb122bc15f16 3baac4f396d8d8e1 0c315b30a348b076 5d36e7d1608e40d8 c715460c75ea8676 eedc4a1e2abd53d8 776efb80951c29c1 4b8ad81ce423372b",
    "configs/vgg16_cifar10_standard.yaml": "8981eeacf15dccaf ddb7e4c260f36565 4919bba6bbbe0da1 de649c485a00fcd1 dadbf4d9aecebf53 147659c30840d0a6 3baac4f396d8d8e1 0c315b30a348b076 5d36e7d1608e40d8 c715460c75ea8676 eedc4a1e2abd53d8 776efb80951c29c1 4b8ad81ce423372b",
    "configs/vgg16_cifar10_warmup.yaml": "8981eeacf15dccaf ddb7e4c260f36565 79df56d50b47f388 de649c485a00fcd1 dadbf4d9aecebf53 147659c30840d0a6 3baac4f396d8d8e1 0c315b30a348b076 5d36e7d1608e40d8 c715460c75ea8676 eedc4a1e2abd53d8 776efb80951c29c1 4b8ad81ce423372b",
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_built_in_configs_hash_as_stores_recorded_them(name):
    root = Path(__file__).parent.parent
    p = load_params(root / name, [])
    assert " ".join(config_hash(getattr(p, s)) for s in SECTIONS) == PINNED[name]
