"""Params are the CLI: an option's value reaches the params typed (no string round trip), a bad
value is reported by the flag, `--set` or file it came from, and every command goes through
lmctrack.api (the CLI imports no workflow), so the CLI and the notebook API cannot drift."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
import typer

import lmctrack.cli
from lmctrack import api
from lmctrack.api import extras as api_extras
from lmctrack.cli import app
from lmctrack.cli.options import chosen
from lmctrack.config.overrides import Overrides, parse_sets
from lmctrack.config.params import Step, load_params
from lmctrack.errors import LmcError

COMMAND = typer.main.get_command(app)


def given(name: str, *args: str) -> Overrides:
    """The typed overrides the command `name` makes of its command-line options, parsed by Click
    as the real command line is (nothing runs)."""
    click_command = COMMAND.commands[name]
    values = click_command.make_context(name, list(args)).params
    fn = inspect.unwrap(click_command.callback)
    own = list(inspect.signature(fn, eval_str=True).parameters.values())
    return chosen(own, values)


@pytest.fixture
def no_yaml(monkeypatch):
    """Any YAML parsing of a value fails the test: typed values must not be read from text."""

    def refuse(*_):
        raise AssertionError("a typed value was parsed as text")

    monkeypatch.setattr("lmctrack.config.overrides.yaml.safe_load", refuse)


def test_an_option_reaches_the_params_typed(no_yaml):
    sets = given("imp", "--levels", "3", "--rewind", "500it", "--one-shot", "--density", "0.3")
    assert sets == {
        "imp.levels": 3,
        "imp.rewind": "500it",
        "imp.one_shot": True,
        "imp.density": 0.3,
    }
    params = load_params(None, sets)
    assert params.imp.levels == 3 and isinstance(params.imp.levels, int)
    assert params.imp.rewind == Step(it=500) and params.imp.one_shot and params.imp.density == 0.3


def test_options_not_given_set_nothing_so_the_params_decide(no_yaml):
    assert given("imp") == {}
    assert given("fork") == {}  # no --seeds: instability.copies of the params
    params = load_params(None, given("fork"))
    assert params.instability.copies == 3


def test_fork_seeds_default_to_instability_copies(tmp_path: Path):
    seeds = next(p for p in COMMAND.commands["fork"].params if p.name == "seeds")
    assert seeds.default is None and "instability.copies" in seeds.help
    path = tmp_path / "params.yaml"
    path.write_text("instability:\n  copies: 4\n")
    assert load_params(path, given("fork")).instability.copies == 4
    assert load_params(path, given("fork", "--seeds", "5")).instability.copies == 5


def test_a_bad_option_value_is_named_by_its_flag():
    with pytest.raises(LmcError, match=r"^--levels 0: imp.levels: .*greater than or equal to 1"):
        load_params(None, given("imp", "--levels", "0"))
    with pytest.raises(LmcError, match=r"^--method both: align.method: "):
        load_params(None, given("align", "A", "B", "--method", "both"))
    with pytest.raises(LmcError, match=r"^sets\['train.lr'\]=-1: train.lr: "):
        load_params(None, {"train.lr": -1})


def test_options_override_set_and_the_last_value_of_a_key_wins():
    sets = parse_sets(["imp.levels=2", "train.lr=0.05", "imp.levels=4"]) | given(
        "imp", "--levels", "3"
    )
    assert list(sets) == ["train.lr", "imp.levels"] and sets["imp.levels"] == 3
    assert sets.origin("imp.levels") == "--levels 3"
    assert sets.origin("train.lr") == "--set train.lr=0.05"
    assert load_params(None, sets).train.lr == 0.05


def test_set_strings_are_read_once_as_yaml():
    sets = parse_sets(["train.rewind_steps=[0it,100it]", "data.augment=true", "train.lr=0.05"])
    assert sets == {"train.rewind_steps": ["0it", "100it"], "data.augment": True, "train.lr": 0.05}
    assert load_params(None, sets).train.rewind_steps == [Step(it=0), Step(it=100)]


def test_a_notebook_sets_typed_values():
    params = load_params(None, {"train.steps": Step(ep=2), "instability.splits": ["test"]})
    assert params.train.steps == Step(ep=2) and params.instability.splits == ["test"]


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (lazy imports inside functions included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


CLI_FILES = sorted(Path(lmctrack.cli.__file__).parent.glob("*.py"))


@pytest.mark.parametrize("path", CLI_FILES, ids=lambda p: p.name)
def test_the_cli_imports_no_workflow(path: Path):
    workflows = {m for m in _imports(path) if m.startswith("lmctrack.workflows")}
    assert not workflows, f"{path.name} imports {workflows}: call lmctrack.api instead"


def _calls_api(fn, module) -> bool:
    """Whether `fn`, or a function of its module that it calls, calls lmctrack.api."""
    tree = ast.parse(inspect.getsource(fn).lstrip())
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    attrs = {
        n.attr
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "api"
    }
    if attrs & {*api.__all__, *api_extras.__all__, "trained", "open_store"}:
        return True
    helpers = [getattr(module, n) for n in names if inspect.isfunction(getattr(module, n, None))]
    return any(
        h.__module__ == module.__name__ and h is not fn and _calls_api(h, module) for h in helpers
    )


def _commands():
    for group in (COMMAND, COMMAND.commands["data"]):
        for name, cmd in group.commands.items():
            if not hasattr(cmd, "commands"):
                yield name, inspect.unwrap(cmd.callback)


@pytest.mark.parametrize(
    ("name", "fn"), list(_commands()), ids=lambda v: v if isinstance(v, str) else ""
)
def test_every_command_calls_the_api(name, fn):
    module = inspect.getmodule(fn)
    assert _calls_api(fn, module), f"`lmctrack {name}` does not go through lmctrack.api"


def test_the_api_reaches_the_tools_beyond_the_algorithms():
    assert api.connect is api_extras.connect and api.hessian is api_extras.hessian
    with pytest.raises(AttributeError):
        api.no_such_function  # noqa: B018
