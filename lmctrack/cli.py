"""The lmctrack command line: parse, call one workflow, print URIs (stdout) and tables (stderr).

Heavy libraries (torch, mlflow) are imported inside the commands so `--help` answers at once.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from lmctrack.errors import LmcError

if TYPE_CHECKING:  # pydantic models take a while to build: --help must not wait for them
    from lmctrack.config import Params

app = typer.Typer(
    help="Linear mode connectivity and the lottery ticket hypothesis, tracked in MLflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Place datasets under data/ (DVC-tracked).", no_args_is_help=True)
app.add_typer(data_app, name="data")

ParamsOpt = Annotated[
    Path | None,
    typer.Option("--params", "-p", help="params.yaml (default: ./params.yaml if present)"),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="override: section.key=value (repeatable)"),
]
OutOpt = Annotated[
    Path | None,
    typer.Option("--out", help="folder for DVC outputs: URIs, metrics JSON, plots, CSV"),
]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto | cpu | cuda")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print the full result as JSON on stdout")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")]
RunIdOpt = Annotated[
    str | None, typer.Option("--run-id", help="a run of `lmctrack train`, or its train.json")
]
BnOpt = Annotated[
    str | None, typer.Option("--bn", help="interpolate | reset: BatchNorm statistics policy")
]
SplitOpt = Annotated[str, typer.Option("--split", help="test | train")]


def _fail(message: str, code: int = 1) -> None:
    from lmctrack.progress import console

    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def guarded(fn: Callable) -> Callable:
    """Turn user-fixable failures into one clear line and a non-zero exit, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LmcError as e:
            _fail(str(e))
        except KeyboardInterrupt:
            _fail("interrupted; run the same command again to resume from the last checkpoint", 130)

    return wrapper


def _params(path: Path | None, overrides: list[str] | None, device: str | None = None) -> Params:
    from lmctrack.config import load_params

    if path is None and Path("params.yaml").is_file():
        path = Path("params.yaml")
    sets = list(overrides or [])
    if device:
        sets.append(f"train.device={device}")
    return load_params(path, sets)


def _step(text: str):
    from lmctrack.config import Step

    try:
        return Step.parse(text)
    except ValueError as e:
        raise LmcError(str(e)) from None


def _context(params: Params, quiet: bool, out: Path | None, store=None):
    from lmctrack.progress import board
    from lmctrack.workflows.common import make_context

    stack = board(enabled=not quiet and sys.stderr.isatty())
    progress = stack.__enter__()
    try:
        ctx = make_context(params, board=progress, store=store, out=out)
    except BaseException:  # e.g. a missing dataset: leave the terminal as it was
        stack.__exit__(None, None, None)
        raise
    ctx.on_close = lambda: stack.__exit__(None, None, None)
    return ctx


def _run_id(value: str | None) -> str | None:
    """A run id, or a JSON file written by `--out` (e.g. outputs/train/train.json) naming one."""
    if value is None or not value.endswith(".json"):
        return value
    path = Path(value)
    if not path.is_file():
        raise LmcError(
            f"{path} not found; run the stage that writes it first (e.g. `lmctrack train --out ...`)"
        )
    try:
        return json.loads(path.read_text())["run_id"]
    except (ValueError, KeyError):
        raise LmcError(
            f"{path} names no run_id; pass a run id or a JSON written by `lmctrack ... --out`"
        ) from None


def _with_run_params(user: Params, run_params: Params) -> Params:
    """Train as the source run did; take interpolation, IMP and store settings from the user."""
    update = {"instability": user.instability, "imp": user.imp, "store": user.store}
    train = run_params.train.model_copy(update={"device": user.train.device})
    return run_params.model_copy(update={**update, "train": train})


def _emit(result: dict, as_json: bool, lines: list[tuple[str, str]]) -> None:
    if as_json:
        typer.echo(json.dumps(result, indent=2, default=str))
    else:
        for name, value in lines:
            typer.echo(f"{name}\t{value}")


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.table import Table

    from lmctrack.progress import console

    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*[f"{v:.4f}" if isinstance(v, float) else str(v) for v in row])
    console.print(table)


@app.command()
@guarded
def train(
    params: ParamsOpt = None,
    set_: SetOpt = None,
    device: DeviceOpt = None,
    out: OutOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train W0 to W_T; register W0, every rewind state Wk, and W_T as model versions."""
    from lmctrack.workflows.train import state_name, train_run

    cfg = _params(params, set_, device)
    ctx = _context(cfg, quiet, out)
    try:
        run = train_run(ctx)
    finally:
        ctx.close()
    result = {
        "run_id": run.run_id,
        "reused": run.reused,
        "states": {state_name(s, run.total): uri for s, uri in sorted(run.states.items())},
    }
    ctx.write_output("train.json", result)
    _emit(result, as_json, [("run_id", run.run_id), *result["states"].items()])


def _fork_source(
    ctx_store, run_id: str | None, step: str | None, source: str | None
) -> tuple[str, str]:
    """(source URI, producing run id) from --run-id/--step or --from."""
    if (run_id is None) == (source is None):
        raise LmcError("give either --run-id RUN --step STEP or --from URI (not both)")
    if source is not None:
        return source, ctx_store.describe(source).run_id
    if step is None:
        raise LmcError(
            "--run-id needs --step, e.g. --step 500it (a rewind step the run registered)"
        )
    return "", run_id


@app.command()
@guarded
def fork(
    run_id: RunIdOpt = None,
    step: Annotated[
        str | None, typer.Option("--step", help="rewind step k of that run, e.g. 500it")
    ] = None,
    source: Annotated[
        str | None, typer.Option("--from", help="any state URI instead of --run-id/--step")
    ] = None,
    mask: Annotated[
        str | None, typer.Option("--mask", help="URI of a mask to apply to the state")
    ] = None,
    seeds: Annotated[int, typer.Option("--seeds", help="number of copies (noise seeds 1..N)")] = 2,
    reset_schedule: Annotated[
        bool,
        typer.Option(
            "--reset-schedule", help="train copies for all T steps, schedule restarted (Figure 4)"
        ),
    ] = False,
    track_every: Annotated[
        str | None,
        typer.Option(
            "--track-every", help="also interpolate the copies every N steps (Appendix C)"
        ),
    ] = None,
    params: ParamsOpt = None,
    set_: SetOpt = None,
    device: DeviceOpt = None,
    out: OutOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Algorithm 1: train copies of Wk under different SGD noise and interpolate every pair."""
    from lmctrack.workflows.common import open_store, params_of_run
    from lmctrack.workflows.fork import fork as run_fork
    from lmctrack.workflows.train import registered_run

    if seeds < 2:
        raise LmcError("--seeds must be at least 2: instability compares copies pairwise")
    user = _params(params, set_, device)
    store = open_store(user)
    uri, producer = _fork_source(store, _run_id(run_id), step, source)
    cfg = _with_run_params(user, params_of_run(store, producer))
    ctx = _context(cfg, quiet, out, store)
    try:
        if not uri:
            uri = registered_run(store, producer, ctx.total_steps).at(ctx.steps(_step(step)))
        track = ctx.steps(_step(track_every)) if track_every else None
        result = run_fork(
            ctx,
            uri,
            seeds=list(range(1, seeds + 1)),
            mask=mask,
            reset_schedule=reset_schedule,
            track_every=track,
        )
    finally:
        ctx.close()
    ctx.write_output("fork.json", result)
    _table(
        f"fork of {uri} (k={result['k']}, bn={result['bn']}, {result['alphas']} alphas)",
        ["pair", *[f"{s} error barrier" for s in cfg.instability.splits], "stable"],
        [
            [
                f"{p['copies'][0]}-{p['copies'][1]}",
                *[p["summary"][f"{s}.error_barrier"] for s in cfg.instability.splits],
                "yes"
                if p["summary"]["test.error_barrier"] < cfg.instability.stable_threshold
                else "no",
            ]
            for p in result["pairs"]
        ]
        if "test" in cfg.instability.splits
        else [],
    )
    _emit(result, as_json, [("run_id", result["run_id"]), *[("W_T", c) for c in result["copies"]]])


@app.command()
@guarded
def interpolate(
    uri_a: Annotated[str, typer.Argument(help="first state (alpha = 0)")],
    uri_b: Annotated[str, typer.Argument(help="second state (alpha = 1)")],
    alphas: Annotated[
        int | None, typer.Option("--alphas", help="points on the path, both ends included")
    ] = None,
    split: Annotated[
        list[str] | None, typer.Option("--split", help="test and/or train (repeatable)")
    ] = None,
    bn: BnOpt = None,
    each_mask: Annotated[
        bool, typer.Option("--each-mask", help="endpoints keep their own (different) masks")
    ] = False,
    params: ParamsOpt = None,
    set_: SetOpt = None,
    device: DeviceOpt = None,
    out: OutOpt = None,
    as_json: JsonOpt = True,
) -> None:
    """Evaluate the linear path between two states; report the error and loss barriers."""
    from lmctrack.workflows.common import open_store, params_of_run
    from lmctrack.workflows.interpolate import interpolate as run_interpolate

    sets = list(set_ or [])
    if alphas is not None:
        sets.append(f"instability.alphas={alphas}")
    if split:
        sets.append(f"instability.splits=[{','.join(split)}]")
    if bn is not None:
        sets.append(f"instability.bn={bn}")
    user = _params(params, sets, device)
    store = open_store(user)
    cfg = _with_run_params(user, params_of_run(store, store.describe(uri_a).run_id))
    ctx = _context(cfg, True, out, store)
    try:
        result = run_interpolate(ctx, uri_a, uri_b, mask_mode="each" if each_mask else "same")
    finally:
        ctx.close()
    ctx.write_output("interpolate.json", result)
    s = result["summary"]
    _table(
        f"{uri_a} -> {uri_b} (bn={result['bn']})",
        ["split", "error barrier (paper)", "loss barrier (Entezari)"],
        [
            [sp, s[f"{sp}.error_barrier"], s[f"{sp}.loss_barrier_linear"]]
            for sp in cfg.instability.splits
        ],
    )
    _emit(result, as_json, [("run_id", result["parent_run_id"])])


@app.command()
@guarded
def instability(
    mask: Annotated[
        str | None, typer.Option("--mask", help="URI of a mask applied to every Wk")
    ] = None,
    imp: Annotated[
        bool, typer.Option("--imp", help="IMP subnetworks at every k and level (Figures 6, 7, 9)")
    ] = False,
    params: ParamsOpt = None,
    set_: SetOpt = None,
    device: DeviceOpt = None,
    out: OutOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """The Figure-3 sweep: for each rewind step k, inits x copies; mean, std, median; plot."""
    from lmctrack.workflows.instability import instability as run_sweep
    from lmctrack.workflows.report import instability_table

    cfg = _params(params, set_, device)
    if imp and mask:
        raise LmcError("--imp finds its own masks at every rewind step; drop --mask")
    ctx = _context(cfg, quiet, out)
    try:
        if imp:
            return _sparse_sweep(ctx, as_json)
        result = run_sweep(ctx, mask=mask)
    finally:
        ctx.close()
    ctx.write_output("instability.json", result)
    _table(
        f"instability of {result['model']} (error barrier, bn={result['bn']}, "
        f"{len(result['inits'])} inits x {len(result['copy_seeds'])} copies)",
        *instability_table(result["rows"]),
    )
    _emit(result, as_json, [("run_id", result["run_id"])])


def _sparse_sweep(ctx, as_json: bool) -> None:
    from lmctrack.workflows.sparse import sparse_instability

    result = sparse_instability(ctx, _search_context(ctx.params, ctx))
    _table(
        f"IMP subnetworks of {result['model']}: error barrier (median) and matching vs rewind step (bn={result['bn']})",
        ["density", "k", "split", "n", "median", "mean", "std", "stable", "test error", "matching"],
        [
            [
                r["density"],
                f"{r['k']}it",
                r["split"],
                r["n"],
                r["median"],
                r["mean"],
                r["std"],
                "yes" if r["stable"] else "no",
                r["test_error"],
                "yes" if r["matching"] else "no",
            ]
            for r in result["rows"]
        ],
    )
    _table(
        "Figure 9: earliest rewind step at which IMP subnetworks are stable / matching",
        ["density", "stable from k", "matching from k"],
        [[r["density"], r["stable_from_k"], r["matching_from_k"]] for r in result["earliest"]],
    )
    _emit(result, as_json, [("run_id", result["run_id"])])


@app.command()
@guarded
def lineage(
    uri: Annotated[str, typer.Argument(help="a state URI, e.g. models:/name/3")],
    params: ParamsOpt = None,
    set_: SetOpt = None,
) -> None:
    """Print the ancestry tree of a state (W_T -> Wk -> W0)."""
    from rich.tree import Tree

    from lmctrack.progress import console
    from lmctrack.workflows.common import open_store

    store = open_store(_params(params, set_))
    root = store.lineage(uri)

    def label(node) -> str:
        t = node.info.tags
        bits = [
            f"[bold]{t.get('state', t.get('role', '?'))}[/]",
            node.info.uri,
            f"role={t.get('role')}",
        ]
        bits += [
            f"{k}={t[k]}"
            for k in ("step", "init_seed", "data_order_seed", "density", "level")
            if k in t
        ]
        bits.append(f"run={node.info.run_id}")
        return "  ".join(bits)

    def grow(tree: Tree, node) -> None:
        for parent in node.parents:
            grow(tree.add(label(parent)), parent)

    tree = Tree(label(root))
    grow(tree, root)
    console.print(tree)


@app.command()
@guarded
def ui(
    port: Annotated[int, typer.Option("--port", help="port on 127.0.0.1")] = 5000,
    params: ParamsOpt = None,
    set_: SetOpt = None,
) -> None:
    """Start the MLflow UI on 127.0.0.1 for this project's store."""
    import signal
    import subprocess

    from lmctrack.workflows.common import open_store

    store = open_store(_params(params, set_))
    command = store.ui_command(port)
    typer.echo(f"MLflow UI for {store.tracking_uri} at http://127.0.0.1:{port}", err=True)
    server = subprocess.Popen(command)
    # `kill` of lmctrack alone must not leave the server running: MLflow stops its workers itself.
    signal.signal(signal.SIGTERM, lambda *_: server.terminate())
    try:
        code = server.wait()
    except KeyboardInterrupt:  # Ctrl-C reached the server too: let it shut down, not an error
        code = server.wait()
    raise typer.Exit(code if code >= 0 else 128 - code)


@data_app.command("mnist1d")
@guarded
def data_mnist1d(
    root: Annotated[Path, typer.Option("--root", help="data folder")] = Path("data"),
    samples: Annotated[
        int, typer.Option("--samples", help="examples generated (train + test)")
    ] = 20000,
) -> None:
    """Generate MNIST-1D locally into ROOT/mnist1d/ (deterministic)."""
    from lmctrack.workflows.datasets import write_mnist1d

    typer.echo(str(write_mnist1d(root, samples)))


@data_app.command("import")
@guarded
def data_import(
    name: Annotated[
        str, typer.Argument(help="mnist | fashion_mnist | cifar10 | cifar100 | imagenet")
    ],
    source: Annotated[Path, typer.Argument(help="local folder holding the dataset files")],
    root: Annotated[Path, typer.Option("--root", help="data folder")] = Path("data"),
) -> None:
    """Copy a local dataset into ROOT in torchvision's layout and `dvc add` it."""
    from lmctrack.workflows.datasets import import_dataset

    typer.echo(str(import_dataset(name, source, root)))


def _run_of_state(
    store, uri: str | None, run_id: str | None, rewind: str | None
) -> tuple[str, str | None]:
    """(producing run id, rewind step text) from --from URI or --run-id/--rewind."""
    if (uri is None) == (run_id is None):
        raise LmcError(
            "give either --run-id RUN (with --rewind STEP) or --from URI of Wk (not both)"
        )
    if uri is not None:
        info = store.describe(uri)
        return info.run_id, f"{info.tags.get('step', 0)}it"
    return run_id, rewind


def _search_context(cfg: Params, ctx):
    """The context whose data (imp.prune_data) drives IMP's mask search, if any.

    Its network must be the one trained on the real data: same input shape, same classes."""
    if cfg.imp.prune_data is None:
        return None
    search = _context(cfg.model_copy(update={"data": cfg.imp.prune_data}), True, None, ctx.store)
    search.close()
    got, want = search.dataset, ctx.dataset
    if (got.input_shape, got.num_classes) != (want.input_shape, want.num_classes):
        shape = ", ".join(map(str, want.input_shape))
        raise LmcError(
            f"the prune data has inputs {got.input_shape} and {got.num_classes} classes but the "
            f"network takes {want.input_shape} with {want.num_classes} classes; give x_train of "
            f"shape (N, {shape}) and labels 0..{want.num_classes - 1}"
        )
    return search


@app.command()
@guarded
def imp(
    run_id: RunIdOpt = None,
    source: Annotated[
        str | None, typer.Option("--from", help="URI of Wk instead of --run-id/--rewind")
    ] = None,
    rewind: Annotated[
        str | None, typer.Option("--rewind", help="rewind step k, e.g. 500it (default imp.rewind)")
    ] = None,
    levels: Annotated[
        int | None, typer.Option("--levels", help="pruning levels (density 0.8^L)")
    ] = None,
    fraction: Annotated[
        float | None,
        typer.Option("--fraction", help="fraction of remaining weights pruned per level"),
    ] = None,
    one_shot: Annotated[
        bool, typer.Option("--one-shot", help="prune to --density at once")
    ] = False,
    density: Annotated[
        float | None, typer.Option("--density", help="one-shot: fraction of weights kept")
    ] = None,
    prune_data: Annotated[
        Path | None,
        typer.Option(
            "--prune-data", help="safetensors file (x_train, y_train) that drives the mask search"
        ),
    ] = None,
    params: ParamsOpt = None,
    set_: SetOpt = None,
    device: DeviceOpt = None,
    out: OutOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Algorithm 2: IMP with rewinding, the random baselines, matching and same-basin checks."""
    from lmctrack.workflows.common import open_store, params_of_run
    from lmctrack.workflows.imp import run_imp
    from lmctrack.workflows.train import registered_run

    sets = list(set_ or [])
    for key, value in (
        ("levels", levels),
        ("fraction", fraction),
        ("density", density),
        ("rewind", rewind),
    ):
        if value is not None:
            sets.append(f"imp.{key}={value}")
    if one_shot:
        sets.append("imp.one_shot=true")
    if prune_data is not None:
        if not prune_data.is_file():
            raise LmcError(
                f"--prune-data {prune_data} not found; pass a safetensors file with x_train, y_train"
            )
        sets += ["imp.prune_data.name=tensors", f"imp.prune_data.path={prune_data}"]
    user = _params(params, sets, device)
    store = open_store(user)
    producer, step_text = _run_of_state(store, source, _run_id(run_id), rewind)
    cfg = _with_run_params(user, params_of_run(store, producer))
    ctx = _context(cfg, quiet, out, store)
    try:
        search = _search_context(cfg, ctx)
        trained = registered_run(store, producer, ctx.total_steps)
        k = ctx.steps(_step(step_text)) if step_text else ctx.steps(cfg.imp.rewind)
        result = run_imp(ctx, trained, k, search)
    finally:
        ctx.close()
    ctx.write_output("imp.json", result)
    from lmctrack.workflows.report import basin_table, imp_table

    _table(
        f"IMP rewinding to {result['k']}it vs random baselines (test accuracy; {result['matching_rule']})",
        *imp_table(result),
    )
    _table(
        "same basin? consecutive IMP levels interpolated (test error barrier, paper definition)",
        *basin_table(result),
    )
    lines = [("run_id", result["run_id"])]
    lines += [
        (f"mask level {lv['level']} density {lv['density']:.4f}", lv["mask_uri"])
        for lv in result["levels"]
    ]
    _emit(result, as_json, lines)


@app.command()
@guarded
def prune(
    source: Annotated[str, typer.Option("--from", help="a mask (subnetwork) URI")],
    random: Annotated[
        bool, typer.Option("--random", help="random-pruning baseline: shuffle the mask")
    ] = True,
    seed: Annotated[int, typer.Option("--seed", help="seed of the shuffle")] = 0,
    strategy: Annotated[
        str, typer.Option("--strategy", help="layerwise (keep each layer's density) | global")
    ] = "layerwise",
    params: ParamsOpt = None,
    set_: SetOpt = None,
) -> None:
    """Register the random-pruning baseline of a subnetwork (same sparsity, random positions)."""
    from lmctrack.workflows.baselines import register_random_prune

    if not random:
        raise LmcError(
            "magnitude pruning is done level by level by `lmctrack imp`; use --random here"
        )
    with _store_context(params, set_, source) as ctx:
        typer.echo(register_random_prune(ctx, source, seed, strategy))


@app.command()
@guarded
def reinit(
    source: Annotated[str, typer.Option("--from", help="a mask (subnetwork) URI")],
    seed: Annotated[int, typer.Option("--seed", help="init seed of the fresh initialization")] = 1,
    params: ParamsOpt = None,
    set_: SetOpt = None,
) -> None:
    """Register the random-reinitialization baseline: the mask on a fresh initialization."""
    from lmctrack.workflows.baselines import register_reinit

    with _store_context(params, set_, source) as ctx:
        typer.echo(register_reinit(ctx, source, seed))


@app.command()
@guarded
def report(
    outputs: Annotated[
        Path, typer.Option("--outputs", help="folder holding the stages' --out folders")
    ] = Path("outputs"),
    out: Annotated[Path, typer.Option("--out", help="where report.md and summary.json go")] = Path(
        "outputs/report"
    ),
) -> None:
    """Collect the pipeline's results into report.md and summary.json (DVC metrics)."""
    from lmctrack.workflows.report import report as write_report

    summary = write_report(outputs, out)
    typer.echo(str(out / "report.md"))
    _table("summary", ["metric", "value"], [[k, v] for k, v in summary.items()])


@contextlib.contextmanager
def _store_context(
    params: Path | None,
    set_: list[str] | None,
    uri: str,
    device: str | None = None,
    out: Path | None = None,
):
    """A context with the params of the run that produced `uri` (its data and architecture)."""
    from lmctrack.workflows.common import open_store, params_of_run

    user = _params(params, set_, device)
    store = open_store(user)
    cfg = _with_run_params(user, params_of_run(store, store.describe(uri).run_id))
    ctx = _context(cfg, True, out, store)
    try:
        yield ctx
    finally:
        ctx.close()


@app.command()
@guarded
def hessian(
    uri: Annotated[str, typer.Argument(help="a state URI; for a sparse state, kept weights only")],
    samples: Annotated[
        int, typer.Option("--samples", help="random vectors in Hutchinson's estimate")
    ] = 100,
    limit: Annotated[
        int, typer.Option("--limit", help="the loss is taken on the first N train examples")
    ] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="seed of the random vectors")] = 0,
    params: ParamsOpt = None,
    set_: SetOpt = None,
    device: DeviceOpt = None,
    out: OutOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Hessian diagonal of the train loss at a state (Hutchinson), logged with its histogram."""
    from lmctrack.workflows.analyses import hessian as run_hessian

    with _store_context(params, set_, uri, device, out) as ctx:
        result = run_hessian(ctx, uri, samples=samples, limit=limit, seed=seed)
    s = result["summary"]
    layers = sorted(k for k in s if k.startswith("layer_mean/"))
    _table(
        f"Hessian diagonal of {uri} ({samples} samples, {result['examples']} train examples)",
        ["statistic", "value"],
        [[k, f"{s[k]:.4g}"] for k in ("mean", "max", "min", "trace", *layers)],
    )
    _emit(result, as_json, [("run_id", result["run_id"])])


def _plane_table(title: str, result: dict) -> None:
    _table(
        f"{title} ({result['split']} split, bn={result['bn']}; "
        f"grid error {result['summary']['error_min']:.4f} .. {result['summary']['error_max']:.4f})",
        ["point", "state", "x", "y", "error", "loss"],
        [
            [role, p["uri"], p["x"], p["y"], p.get("error", "off grid"), p.get("loss", "off grid")]
            for role, p in result["points"].items()
        ],
    )


@app.command()
@guarded
def plane(
    origin: Annotated[str, typer.Argument(help="the plane's origin, e.g. Wk")],
    uri_a: Annotated[str, typer.Argument(help="a state on the x axis, e.g. W_T of copy 1")],
    uri_b: Annotated[str, typer.Argument(help="a third state, e.g. W_T of copy 2")],
    grid: Annotated[int, typer.Option("--grid", help="grid nodes per axis")] = 11,
    margin: Annotated[
        float, typer.Option("--margin", help="extent beyond the states, a fraction of theirs")
    ] = 0.2,
    split: SplitOpt = "test",
    bn: BnOpt = None,
    params: ParamsOpt = None,
    set_: SetOpt = None,
    device: DeviceOpt = None,
    out: OutOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Error and loss on the plane through three states (e.g. Wk, W_T copy 1, W_T copy 2)."""
    from lmctrack.workflows.analyses import plane as run_plane

    sets = [*(set_ or []), *([f"instability.bn={bn}"] if bn else [])]
    with _store_context(params, sets, origin, device, out) as ctx:
        result = run_plane(ctx, origin, uri_a, uri_b, grid=grid, margin=margin, split=split)
    _plane_table(f"plane through {origin}, {uri_a}, {uri_b}", result)
    _emit(result, as_json, [("run_id", result["run_id"])])


@app.command("plane-random")
@guarded
def plane_random(
    uri: Annotated[str, typer.Argument(help="the state at the centre")],
    grid: Annotated[
        int, typer.Option("--grid", help="grid nodes per axis (odd: centre on a node)")
    ] = 11,
    span: Annotated[
        float, typer.Option("--span", help="half-width of the grid, in filter norms")
    ] = 1.0,
    seed: Annotated[int, typer.Option("--seed", help="seed of the two random directions")] = 0,
    split: SplitOpt = "test",
    bn: BnOpt = None,
    params: ParamsOpt = None,
    set_: SetOpt = None,
    device: DeviceOpt = None,
    out: OutOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Error and loss along two filter-normalised random directions around one state."""
    from lmctrack.workflows.analyses import random_plane

    sets = [*(set_ or []), *([f"instability.bn={bn}"] if bn else [])]
    with _store_context(params, sets, uri, device, out) as ctx:
        result = random_plane(ctx, uri, grid=grid, span=span, seed=seed, split=split)
    _plane_table(f"random directions around {uri} (seed {seed}, span {span})", result)
    _emit(result, as_json, [("run_id", result["run_id"])])
