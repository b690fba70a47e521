"""`lmctrack lineage`: where a state came from, as the graph it is. Each state is printed once:
a shared ancestor (IMP's W_k under every level) in full the first time, then as "W100 (v3,
above)"; lines fit 80 columns. `--json` gives the nodes and edges. Imports no torch."""

from __future__ import annotations

import json
import textwrap
from typing import Annotated

import typer

from lmctrack.cli.options import JsonOpt, ParamsOpt, SetOpt, app, guarded
from lmctrack.config import schema

WIDTH = 80
TAGS = (
    schema.ROLE,
    schema.STEP,
    schema.INIT_SEED,
    schema.DATA_ORDER_SEED,
    schema.REPLICATE,
    schema.LEVEL,
    schema.DENSITY,
)


@app.command()
@guarded
def lineage(
    uri: Annotated[str, typer.Argument(help="a state URI, e.g. models:/name/3")],
    as_json: JsonOpt = False,
    params: ParamsOpt = None,
    set_: SetOpt = None,
) -> None:
    """Print the ancestry of a state (W_T -> Wk -> W0), each state once."""
    from lmctrack import api  # its registry lookups import no torch
    from lmctrack.config.overrides import parse_sets

    root = api.lineage(uri, params=params, sets=parse_sets(set_ or ()))
    if as_json:
        typer.echo(json.dumps(root.graph(), indent=2))
    else:
        typer.echo("\n".join(render(root)))


def render(root) -> list[str]:
    """The graph as an indented tree whose repeated states are references, within WIDTH (a URI
    that does not fit beside its name goes under it)."""
    lines: list[str] = []
    shown: set[str] = set()

    def visit(node, lead: str, rest: str) -> None:
        info = node.info
        name = state(node)
        if info.uri in shown:
            lines.append(f"{lead}{name} (v{info.version}, above)")
            return
        shown.add(info.uri)
        head, tags = f"{lead}{name}  {info.uri}", [info.uri]
        if len(head) <= WIDTH:
            head, tags = head, []
        else:
            head = f"{lead}{name}"
        lines.append(head)
        tags += [f"{k}={info.tags[k]}" for k in TAGS if k in info.tags] + [f"run={info.run_id}"]
        guide = rest + ("│ " if node.parents else "  ") + "  "
        lines.extend(
            textwrap.wrap(
                "  ".join(tags),
                WIDTH,
                initial_indent=guide,
                subsequent_indent=guide,
                break_long_words=False,
                break_on_hyphens=False,
            )
        )
        for i, parent in enumerate(node.parents):
            last = i == len(node.parents) - 1
            visit(parent, rest + ("└─" if last else "├─"), rest + ("  " if last else "│ "))

    visit(root, "", "")
    return lines


def state(node) -> str:
    """The paper's name of a state (W0, W100, W_T, (W100, m)), else its role."""
    tags = node.info.tags
    return tags.get(schema.STATE, tags.get(schema.ROLE, "?"))
