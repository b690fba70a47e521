"""`lmctrack --help` and each command's help read like a well-kept CLI's: one-line summaries that
are whole sentences, boolean options as flags (`--json`, `--random / --no-random`), not values."""

from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

from lmctrack.cli import app

COMMAND = typer.main.get_command(app)
NAMES = sorted(COMMAND.commands)


def _help(*args: str) -> str:
    done = CliRunner().invoke(app, [*args, "--help"], terminal_width=200, env={"COLUMNS": "200"})
    assert done.exit_code == 0, done.output
    return done.output


def _listed(text: str) -> dict[str, list[str]]:
    """The Commands section: each command's lines (its summary and any continuation)."""
    section = text.split("Commands:", 1)[1]
    rows: dict[str, list[str]] = {}
    current = None
    for line in section.splitlines():
        words = line.split(None, 1)
        if words and words[0] in COMMAND.commands:
            current = words[0]
            rows[current] = [words[1] if len(words) > 1 else ""]
        elif current and line.strip():
            rows[current].append(line.strip())
    return rows


def test_the_command_list_gives_each_command_one_whole_sentence():
    rows = _listed(_help())
    assert sorted(rows) == NAMES
    for name, lines in rows.items():
        assert len(lines) == 1, f"{name}: {lines}"
        summary = lines[0].strip()
        assert summary[:1].isupper() and summary.endswith("."), f"{name}: {summary!r}"


@pytest.mark.parametrize("name", NAMES)
def test_a_command_help_shows_boolean_options_as_flags(name: str):
    text = _help(name)
    assert "<bool>" not in text and "BOOLEAN" not in text, text
    for param in COMMAND.commands[name].params:
        if getattr(param, "is_flag", False) and param.default is True:
            # a flag that is on unless turned off must be one that can be turned off
            assert param.secondary_opts, f"{name} {param.opts}: on by default, no --no- form"


def test_the_old_flag_names_still_parse():
    """Every flag keeps the name it had (a --no- form is added, none renamed)."""
    flags = {
        name: sorted(o for p in cmd.params for o in p.opts if getattr(p, "is_flag", False))
        for name, cmd in COMMAND.commands.items()
        if not hasattr(cmd, "commands")
    }
    assert "--json" in flags["interpolate"] and "--random" in flags["prune"]
    assert "--reset-schedule" in flags["fork"] and "--each-mask" in flags["interpolate"]
    assert {"--quiet", "-q"} <= set(flags["fork"]) and "--imp" in flags["instability"]
    assert "--one-shot" in flags["imp"]
    assert all(re.fullmatch(r"--?[a-z][a-z-]*", f) for names in flags.values() for f in names)
