"""A registered version's description in words, shown on its page in the MLflow UI, with links
to its parents' version pages and to the run that made it: lineage a person can follow by
clicking (the tags keep the same facts for programs).

For example: "W_T of copy 2 (seed 3), from [W100 = version 45](#/models/...), trained to 1500 it;
made by [this run](#/experiments/...)."
"""

from __future__ import annotations

from lmctrack.config import schema
from lmctrack.store.info import StateInfo

_TRAINED = (schema.TRAINED, schema.SPARSE, schema.SEARCH)


def version_link(info: StateInfo) -> str:
    """A markdown link to a version's page, named by the state it is: [W100 = version 45](...)."""
    state = info.tags.get(schema.STATE) or info.tags.get(schema.ROLE, "state")
    return f"[{state} = version {info.version}](#/models/{info.name}/versions/{info.version})"


def _details(tags: dict[str, str]) -> list[str]:
    """What sets this state apart from its siblings: its copy, its init, its sparsity."""
    out = []
    if schema.COPY in tags:
        out.append(f"copy {tags[schema.COPY]} (seed {tags.get(schema.DATA_ORDER_SEED, '?')})")
    if schema.INIT_SEED in tags:
        out.append(f"init seed {tags[schema.INIT_SEED]}")
    method = tags.get(schema.METHOD)
    sparse = [schema.METHOD_LABELS.get(method, method)] if method else []
    if schema.LEVEL in tags and tags.get(schema.ROLE) != schema.TRAINED:
        sparse.append(f"level {tags[schema.LEVEL]}")
    if sparse:
        out.append(" ".join(sparse))
    if schema.DENSITY in tags and tags.get(schema.DENSITY) != "1.0":
        out.append(f"density {float(tags[schema.DENSITY]):.4g}")
    return out


def description(
    tags: dict[str, str], parents: list[StateInfo], experiment_id: str, run_id: str
) -> str:
    """The version's page text: what state it is, of which parents, and the run that made it."""
    role, step = tags.get(schema.ROLE, "state"), tags.get(schema.STEP)
    words = tags.get(schema.STATE) or role
    details = _details(tags)
    if details:
        words += " of " + ", ".join(details)
    if parents:
        words += ", from " + " and ".join(version_link(p) for p in parents)
    if step is not None:
        words += f", trained to {step} it" if role in _TRAINED else f", at step {step} it"
    return f"{words}; made by [this run](#/experiments/{experiment_id}/runs/{run_id})."
