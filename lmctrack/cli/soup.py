"""What stability buys: a soup of stable copies, registered as a state with its ingredients."""

from __future__ import annotations

from typing import Annotated

import typer

from lmctrack.cli.options import WORKSPACE, Common, command, table
from lmctrack.config import schema


@command(options=tuple(o for o in WORKSPACE if o != "backend"))
def soup(
    uris: Annotated[list[str], typer.Argument(help="the states to average (e.g. a fork's copies)")],
    greedy: Annotated[
        bool, typer.Option("--greedy", help="add by held-out accuracy (needs data.validation)")
    ] = False,
    *,
    opts: Common,
) -> None:
    """Average states into one soup and register it (role soup, every ingredient a parent).

    The uniform soup is the mean of the weights, masks kept, BatchNorm re-estimated on training
    data. --greedy adds ingredients by held-out accuracy, each only if it does not drop (needs
    data.validation); the test split is only reported, never used to choose."""
    from lmctrack import api

    with opts.workspace(state=uris[0]) as ctx:
        result = api.soup(uris, greedy=greedy, ctx=ctx)
    numbers = result.headline()
    table(
        f"{result.method} soup of {len(uris)} states ({len(result.kept)} kept)",
        ["soup test error", "mean ingredient", "best ingredient", "reused"],
        [[numbers[k] for k in _COLUMNS] + [result.reused]],
    )
    opts.finish(ctx, "soup.json", result, [("run_id", result.run_id), ("soup", result.uri)])


_COLUMNS = (schema.SOUP_ERROR, schema.COPIES_MEAN_ERROR, schema.COPIES_BEST_ERROR)
