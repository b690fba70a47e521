"""Opening the context a piece of work runs in, for the CLI and the Python API alike: the params
(params.yaml with typed `{"section.key": value}` overrides, or those of the run that produced a given
state), the store, the dataset and the progress board."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from lmctrack.config.overrides import Overrides, overrides
from lmctrack.config.params import Params, Sets, resolve
from lmctrack.errors import LmcError
from lmctrack.execution.progress import Board
from lmctrack.workflows.common import Context, make_context, open_store, params_of_run

# Settings that decide a state's training: work that continues a registered run takes them from
# that run, never from the caller's params.
RUN_SECTIONS = ("data", "model", "train", "seeds")


def from_run(user: Params, made: Params, sets: Overrides) -> Params:
    """Continue a run: its data, model, training and seeds; the caller's other sections. An
    explicit override of a setting the run decided, to another value, is refused, not ignored."""
    for key in sets:
        section, _, field = key.partition(".")
        if section in RUN_SECTIONS and key != "train.device":
            mine = getattr(getattr(user, section), field, None)
            theirs = getattr(getattr(made, section), field, None)
            if mine != theirs:
                raise LmcError(
                    f"{sets.origin(key)}: the source run was made with {section}.{field}={theirs}; "
                    f"these settings come from the run, so drop the override or train a new run"
                )
    train = made.train.model_copy(update={"device": user.train.device})
    keep = {n: getattr(user, n) for n in type(user).model_fields if n not in RUN_SECTIONS}
    return made.model_copy(update={**keep, "train": train})


@contextmanager
def session(
    params: Path | str | Params | None = None,
    sets: Sets = None,
    *,
    board: Board | None = None,
    out: Path | None = None,
    state: str | None = None,
    run_id: str | None = None,
) -> Iterator[Context]:
    """The context work runs in: the params (those of the run that produced `state` or `run_id`,
    when given), the store, the dataset; always closed."""
    if out is not None and out.exists() and not out.is_dir():
        raise LmcError(f"--out {out} is a file; give a folder (it is created when missing)")
    sets = overrides(sets)
    cfg = resolve(params, sets)
    store = open_store(cfg)
    producer = store.describe(state).run_id if state else run_id
    if producer:
        cfg = from_run(cfg, params_of_run(store, producer), sets)
    ctx = make_context(cfg, board=board or Board(None), store=store, out=out)
    try:
        yield ctx
    except BaseException:
        with suppress(Exception):  # what was done before the failure is kept; the failure wins
            store.settle()
        raise
    else:
        store.settle()
    finally:
        ctx.close()
