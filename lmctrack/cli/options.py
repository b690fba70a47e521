"""What every command shares: the Typer apps, the option types, the one way to open a workspace
(params, store, dataset, progress display), and how results are printed.

Heavy libraries (torch, mlflow) are imported inside functions so that `lmctrack --help` answers
at once; the params models are read at import, to declare the options that mirror them (`param`).
"""

from __future__ import annotations

import functools
import inspect
import json
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union, get_args, get_origin

import typer

from lmctrack.config.overrides import Overrides, option, parse_sets
from lmctrack.errors import LmcError, existing_file

if TYPE_CHECKING:
    from lmctrack.api import Context

app = typer.Typer(
    help="Linear mode connectivity and the lottery ticket hypothesis, tracked in MLflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # Click's help: flags as `--json`, `--random / --no-random`, no <bool>
)
data_app = typer.Typer(
    help="Place datasets under data/ (DVC-tracked).", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(data_app, name="data")


def whole_summaries(*apps: typer.Typer) -> None:
    """Each command's summary in the command list is its docstring's first paragraph, whole:
    Click would cut one longer than the terminal's spare width mid-sentence ("...")."""
    for group in apps:
        for info in group.registered_commands:
            doc = inspect.getdoc(info.callback) or ""
            if info.short_help is None and doc:
                info.short_help = " ".join(doc.split("\n\n", 1)[0].split())


ParamsOpt = Annotated[
    Path | None,
    typer.Option("--params", "-p", help="params.yaml (default: ./params.yaml if present)"),
]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="override: section.key=value (repeatable)")
]
OutOpt = Annotated[
    Path | None,
    typer.Option("--out", help="folder for DVC outputs: URIs, metrics JSON, plots, CSV"),
]


@dataclass(frozen=True)
class Param:
    """Marks a CLI option that sets the params key `key`: `command` turns its value into a typed
    override (named by `flag` in errors); not given, the params decide."""

    key: str
    flag: str


def param(key: str, flag: str, help: str | None = None) -> Any:
    """The option of `flag`, declared once from the pydantic field of `key` (section.key): its
    type, its help (the field's description unless `help`), and the params default it falls
    back to. A boolean field becomes an on-switch."""
    from lmctrack.config.params import Params

    section, name = key.split(".")
    spec = Params.model_fields[section].annotation.model_fields[name]
    default = spec.get_default(call_default_factory=True)
    kinds = {a for a in _alternatives(spec.annotation) if a is not type(None)}
    choices = [c for kind in kinds for c in get_args(kind) if get_origin(kind) is Literal]
    text = help or spec.description or name.replace("_", " ")
    shown = f"{text}: {' | '.join(choices)}" if choices and help is None else text
    note = f"{shown} (params {key}, default {_shown(default)})"
    if kinds == {bool}:
        return Annotated[bool, typer.Option(flag, help=note), Param(key, flag)]
    kind = next(iter(kinds)) if len(kinds) == 1 and kinds <= {int, float} else str
    if any(get_origin(k) is list for k in kinds):
        kind = list[str]
    return Annotated[kind | None, typer.Option(flag, help=note), Param(key, flag)]


def _alternatives(annotation: Any) -> tuple:
    """The types a field accepts: the members of a union, else the annotation itself."""
    return get_args(annotation) if get_origin(annotation) in (Union, UnionType) else (annotation,)


def _shown(default: Any) -> str:
    """A default as params.yaml writes it."""
    if isinstance(default, list):
        return "[" + ", ".join(map(str, default)) + "]"
    if default is None or isinstance(default, bool):
        return {None: "null", True: "true", False: "false"}[default]
    return str(default)


DeviceOpt = param("train.device", "--device")
BackendOpt = param("runner.backend", "--backend", "where trainings run: local | ray")
JsonOpt = Annotated[
    bool, typer.Option("--json/--no-json", help="print the full result as JSON on stdout")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")]
RunIdOpt = Annotated[
    str | None, typer.Option("--run-id", help="a run of `lmctrack train`, or its train.json")
]
BnOpt = param(
    "instability.bn", "--bn", "interpolate | reset | repair: BatchNorm statistics on the path"
)
SplitOpt = Annotated[str, typer.Option("--split", help="test | train")]
PruneDataOpt = Annotated[
    Path | None,
    typer.Option(
        "--prune-data", help="safetensors (x_train, y_train) to search the masks on, e.g. distilled"
    ),
]


def prune_data_file(path: Path | None) -> None:
    """--prune-data checked before any training: the file must be there."""
    if path is not None:
        fix = "pass a safetensors file with x_train, y_train (`lmctrack distill` writes one)"
        existing_file(path, f"--prune-data {path}", fix)


def guarded(fn: Callable) -> Callable:
    """Turn user-fixable failures into one clear line and a non-zero exit, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LmcError as e:
            fail(str(e))
        except KeyboardInterrupt:
            fail("interrupted; run the same command again to resume from the last checkpoint", 130)

    return wrapper


def fail(message: str, code: int = 1) -> None:
    from lmctrack.execution.progress import console

    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def run_id_of(value: str | None) -> str | None:
    """A run id, or a JSON file written by `--out` (e.g. outputs/train/train.json) naming one."""
    if value is None or not value.endswith(".json"):
        return value
    path = Path(value)
    existing_file(path, str(path), "run the stage that writes it first (`lmctrack train --out`)")
    try:
        data = json.loads(path.read_text())
        run_id = data["run_id"] if isinstance(data, dict) else None
    except ValueError:
        run_id = None
    if not isinstance(run_id, str):
        raise LmcError(
            f"{path} names no run_id; pass a run id or a JSON written by `lmctrack train --out`"
        )
    return run_id


@contextmanager
def workspace(
    params: Path | None,
    sets: Overrides,
    *,
    out: Path | None = None,
    quiet: bool = True,
    state: str | None = None,
    run_id: str | None = None,
    trains: bool = False,
) -> Iterator[Context]:
    """The session a command works in (api.session), with a live progress display on a
    terminal unless --quiet. A command that `trains` with runner.backend=ray warms the Ray
    workers up first (cluster.warm_up), so that they import torch while this process does."""
    from lmctrack.config.params import resolve
    from lmctrack.store import preload

    preload()  # MLflow's import overlaps torch's and the dataset's (Store waits for it)
    if trains:
        from lmctrack.execution.executor import executor

        executor(resolve(params, sets).runner).warm_up()
    from lmctrack.api import session
    from lmctrack.execution.progress import board

    with (
        board(enabled=not quiet and sys.stderr.isatty()) as progress,
        session(params, sets, board=progress, out=out, state=state, run_id=run_id) as ctx,
    ):
        yield ctx


def step_of(text: str):
    from lmctrack.config.params import Step

    try:
        return Step.parse(text)
    except ValueError as e:
        raise LmcError(str(e)) from None


def emit(result: Any, as_json: bool, lines: list[tuple[str, str]]) -> None:
    """URIs (or the whole result as JSON, with its headline numbers) on stdout, for shells
    and DVC stages."""
    from lmctrack.results.paper import to_dict

    if as_json:
        typer.echo(json.dumps(to_dict(result), indent=2, default=str))
    else:
        for name, value in lines:
            typer.echo(f"{name}\t{value}")


def table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    """A table on stderr that never cuts a number: a rich table whose words wrap and whose
    numbers keep their width, or, piped or in a terminal too narrow for it, plain rows."""
    from rich.table import Table

    from lmctrack.execution.progress import console

    cells = [[f"{v:.4f}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    # a column wraps between words, down to its longest word (a number is one word)
    widths = [
        max(
            len(word)
            for text in (name, *(row[i] for row in cells))
            for word in text.split() or [""]
        )
        for i, name in enumerate(columns)
    ]
    if not console.is_terminal or sum(widths) + 3 * len(columns) + 1 > console.width:
        lines = (title, "\t".join(columns), *("\t".join(row) for row in cells))
        console.file.write("".join(f"{line}\n" for line in lines))  # tab-separated, as written
        return
    t = Table(title=title)
    for column, width in zip(columns, widths, strict=True):
        t.add_column(column, overflow="fold", min_width=width)
    for row in cells:
        t.add_row(*row)
    console.print(t)


def write(ctx: Context, name: str, result: Any) -> None:
    """The command's result as JSON in --out (a DVC stage's output)."""
    from lmctrack.results.paper import to_dict

    ctx.write_output(name, to_dict(result))


# The options commands share, declared once (see `command`): WORKSPACE by default, and --bn for
# the commands that evaluate paths or planes.
COMMON_OPTIONS = {
    "params": (ParamsOpt, None),
    "set_": (SetOpt, None),
    "device": (DeviceOpt, None),
    "backend": (BackendOpt, None),
    "out": (OutOpt, None),
    "as_json": (JsonOpt, False),
    "quiet": (QuietOpt, False),
    "bn": (BnOpt, None),
}
WORKSPACE = ("params", "set_", "device", "backend", "out", "as_json", "quiet")


@dataclass
class Common:
    """The shared options as one value: opens the workspace and prints the result."""

    params: Path | None = None
    sets: list[str] = field(default_factory=list)
    options: Overrides | None = None  # the command's options that set params keys (`param`)
    out: Path | None = None
    as_json: bool = False
    quiet: bool = True
    trains: bool = False  # the command takes --backend: it runs trainings or other Ray tasks

    def overrides(self, more: Mapping[str, Any] | None = None) -> Overrides:
        """`--set` (parsed here, once), then `more`, then the command's own options: typed, the
        last value of a key wins."""
        return parse_sets(self.sets) | (more or {}) | (self.options or {})

    def workspace(
        self,
        *,
        more: Mapping[str, Any] | None = None,
        state: str | None = None,
        run_id: str | None = None,
    ):
        return workspace(
            self.params,
            self.overrides(more),
            out=self.out,
            quiet=self.quiet,
            state=state,
            run_id=run_id,
            trains=self.trains,
        )

    def finish(self, ctx: Context, name: str, result: Any, lines: list[tuple[str, str]]) -> None:
        """Write the result for DVC (--out; `name` empty: the workflow wrote its own files) and
        print its URIs (or all of it, --json)."""
        if name:
            write(ctx, name, result)
        emit(result, self.as_json, lines)


def _params_of(parameter: inspect.Parameter) -> Param | None:
    """The params key an option sets, when it was declared with `param`."""
    return next(
        (m for m in getattr(parameter.annotation, "__metadata__", ()) if isinstance(m, Param)), None
    )


def chosen(parameters: list[inspect.Parameter], values: dict[str, Any]) -> Overrides:
    """The options given on the command line that set params keys, as typed overrides named by
    their flags (an on-switch left off, or an option not given, sets nothing)."""
    out = Overrides()
    for p in parameters:
        marker = _params_of(p)
        value = values.get(p.name)
        if marker is not None and value is not None and value is not False:
            out = out | option(marker.key, value, marker.flag)
    return out


def command(
    name: str | None = None,
    *,
    options: tuple[str, ...] = WORKSPACE,
    as_json: bool = False,
    on: typer.Typer = app,
) -> Callable:
    """Register `fn(..., opts: Common)` as a command taking its own options plus the shared
    `options`, guarded so that user-fixable failures print one line. Options declared with
    `param` become typed overrides of their params keys (`opts.options`)."""

    def register(fn: Callable) -> Callable:
        signature = inspect.signature(fn, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != "opts"]
        shared = [
            inspect.Parameter(
                key,
                inspect.Parameter.KEYWORD_ONLY,
                annotation=COMMON_OPTIONS[key][0],
                default=as_json if key == "as_json" else COMMON_OPTIONS[key][1],
            )
            for key in options
        ]

        @functools.wraps(fn)
        def wrapper(**kwargs: Any) -> Any:
            given = {key: kwargs.pop(key) for key in options}
            opts = Common(
                params=given.get("params"),
                sets=list(given.get("set_") or []),
                options=chosen([*own, *shared], {**kwargs, **given}),
                out=given.get("out"),
                as_json=given.get("as_json", as_json),
                quiet=given.get("quiet", True),
                trains="backend" in options,
            )
            return fn(**kwargs, opts=opts)

        wrapper.__signature__ = signature.replace(parameters=[*own, *shared])
        on.command(name)(guarded(wrapper))
        return fn

    return register
