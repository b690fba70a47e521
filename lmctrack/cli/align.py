"""Networks from different inits, modulo a permutation of hidden units (Git Re-Basin): align two
states, compare the paths between them, sweep inits and widths, carry a mask across inits."""

from __future__ import annotations

from typing import Annotated

import typer

from lmctrack.cli.options import WORKSPACE, Common, command, param, table
from lmctrack.config.overrides import option
from lmctrack.errors import LmcError

MethodOpt = param("align.method", "--method")
SeedOpt = param("align.seed", "--seed")
InitsOpt = param("align.inits", "--inits", "networks per width")


def connection_table(title: str, connection) -> None:
    """The paths between two states side by side: one row per split, one column per path kind."""
    kinds = list(connection.paths)
    splits = list(connection.paths[kinds[0]].curves)
    table(
        f"{title} (error barrier; max logit diff of the permuted B {connection.max_logit_diff:.2g})",
        ["split", *kinds],
        [[split, *(connection.barrier(kind, split) for kind in kinds)] for split in splits],
    )


@command(options=("params", "set_", "device", "out", "as_json"))
def align(
    uri_a: Annotated[str, typer.Argument(help="the state to match")],
    uri_b: Annotated[str, typer.Argument(help="the state whose hidden units are permuted")],
    method: MethodOpt = None,
    seed: SeedOpt = None,
    *,
    opts: Common,
) -> None:
    """Permute B's hidden units to match A and register it (parents B, A; function checked).

    The permutation is a safetensors artifact of the registering run; asking again reuses it."""
    from lmctrack import api

    with opts.workspace(state=uri_a) as ctx:
        result = api.align(uri_a, uri_b, ctx=ctx)
    table(
        f"{uri_b} aligned to {uri_a}",
        ["method", "seed", "max logit diff", "reused"],
        [[result.method, result.seed, f"{result.max_logit_diff:.3g}", result.reused]],
    )
    opts.finish(ctx, "align.json", result, [("run_id", result.run_id), ("aligned", result.uri)])


@command(options=(*WORKSPACE, "bn"))
def connect(
    uri_a: Annotated[str | None, typer.Argument(help="a state (omit both for the sweep)")] = None,
    uri_b: Annotated[str | None, typer.Argument(help="a state from another init")] = None,
    method: MethodOpt = None,
    seed: SeedOpt = None,
    inits: InitsOpt = None,
    widths: Annotated[
        str | None, typer.Option("--widths", help="width sweep: model.width values, e.g. 16,64")
    ] = None,
    *,
    opts: Common,
) -> None:
    """Naive, aligned and aligned+REPAIR barriers between A and B, or over inits and widths.

    Without states: align.inits networks trained from different inits, every pair, at every
    width of --widths (the width sweep); tables, plots and the typed result in --out."""
    from lmctrack import api

    if (uri_a is None) != (uri_b is None):
        raise LmcError("give two states A B, or none for the sweep over inits")
    if uri_a is not None and (inits is not None or widths is not None):
        raise LmcError("--inits and --widths set up the sweep; drop them, or drop A and B")
    sweep = option("align.widths", widths and widths.split(","), "--widths")
    with opts.workspace(more=sweep, state=uri_a) as ctx:
        result = api.connect(uri_a, uri_b, ctx=ctx)
    if uri_a is not None:
        connection_table(f"{uri_a} -> {uri_b}", result)
        opts.finish(ctx, "connect.json", result, [("aligned", result.aligned)])
        return
    table(
        f"{result.model}: {len(result.inits)} inits, {result.method} matching (bn={result.bn})",
        ["width", "path", "split", "barrier mean", "std", "pairs"],
        result.rows(),
    )
    opts.finish(ctx, "", result, [("run_id", result.run_id)])


@command(options=("params", "set_", "device", "as_json"))
def transport(
    source: Annotated[str, typer.Option("--from", help="a subnetwork (mask) found on init A")],
    target: Annotated[str, typer.Option("--to", help="a state of init B, e.g. its W0 or Wk")],
    by: Annotated[
        str | None,
        typer.Option("--by", help="an aligned state whose permutation to use (e.g. W_T of B)"),
    ] = None,
    method: MethodOpt = None,
    seed: SeedOpt = None,
    *,
    opts: Common,
) -> None:
    """Carry a subnetwork's mask from init A to init B through the permutation aligning them.

    The permutation is --by's (an aligned state), else that of --to aligned to --from; the mask,
    in B's unit order on B's weights, is registered with parents B, the mask and the alignment."""
    from lmctrack import api

    with opts.workspace(state=target) as ctx:
        result = api.transport(source, target, by=by, ctx=ctx)
    table(
        f"mask of {source} on {target}",
        ["density", "alignment", "reused"],
        [[result.density, result.alignment, result.reused]],
    )
    opts.finish(ctx, "", result, [("run_id", result.run_id), ("mask", result.uri)])
