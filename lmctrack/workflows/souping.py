"""Model soups as tracked states: what stability buys (Wortsman et al. 2022).

`soup`: the ingredients (e.g. a fork's copies) averaged into one network, registered with role
`soup` and every ingredient as a parent; its run keeps the soup's test error beside the
ingredients' mean and best. `--greedy` selects ingredients on the validation split carved from
the training data (data.validation), never on the test split. `fork_soup`: the uniform soup of a
fork's copies, measured (not registered) for the fork's result.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lmctrack.config import schema
from lmctrack.config.params import config_hash
from lmctrack.engine.state import State
from lmctrack.errors import LmcError
from lmctrack.results.serial import Flat, to_dict
from lmctrack.workflows import jobs
from lmctrack.workflows.common import Context

SOUP_ARTIFACT = "soup.json"


@dataclass
class Souped(Flat):
    """A soup registered as `uri` by run `run_id`, and how it compares with its ingredients."""

    uri: str
    ingredients: list[str]
    method: str
    kept: list[str]  # the ingredients averaged (all of them for a uniform soup)
    test_error: float
    ingredient_errors: list[float]  # each ingredient's test error, in the order given
    run_id: str
    validation_accuracy: dict[str, float] = field(default_factory=dict)  # greedy: per URI
    reused: bool = False

    def headline(self) -> dict[str, float]:
        """The soup's test error beside its ingredients' mean and best: the run's metrics."""
        return schema.soup_metrics(self.test_error, self.ingredient_errors)


def soup(ctx: Context, uris: list[str], *, greedy: bool = False) -> Souped:
    """`lmctrack soup URI...`: the uniform (or greedy) soup of the states, registered with every
    ingredient as a parent; an identical soup registered before is returned instead."""
    if len(uris) < 2:
        raise LmcError(f"a soup averages at least 2 states, got {len(uris)}; pass more URIs")
    if greedy and ctx.params.data.validation is None:
        raise LmcError(
            "a greedy soup selects on a validation split and these states were trained without "
            "one; train them with data.validation set (e.g. --set data.validation=0.1)"
        )
    method = schema.GREEDY if greedy else schema.UNIFORM
    bn_limit = ctx.params.instability.bn_limit
    key = config_hash(list(uris), method, bn_limit, "soup")
    with jobs.claimed(ctx, [key]):
        done = jobs.reused(ctx, key, SOUP_ARTIFACT, Souped)
        return done if done is not None else _soup(ctx, key, uris, method)


def _soup(ctx: Context, key: str, uris: list[str], method: str) -> Souped:
    from lmctrack.engine.soup import greedy_soup, uniform_soup

    states = [ctx.store.load_state(uri) for uri in uris]
    model, bn_limit = ctx.template(), ctx.params.instability.bn_limit
    accuracy: dict[str, float] = {}
    if method == schema.GREEDY:
        chosen = greedy_soup(model, states, ctx.dataset, ctx.device, bn_limit)
        state, kept = chosen.state, [uris[i] for i in chosen.kept]
        accuracy = dict(zip(uris, chosen.accuracies, strict=True))
    else:
        state, kept = uniform_soup(model, states, ctx.dataset, ctx.device, bn_limit), list(uris)
    errors = [ctx.error(s) for s in states]
    result = Souped("", list(uris), method, kept, ctx.error(state), errors, "", accuracy)
    tags = {schema.SOUP_METHOD: method, schema.SOUP_KEPT: ",".join(kept)}
    with jobs.recorded(
        ctx,
        f"soup {method} of {len(uris)}",
        key=key,
        kind=schema.KIND_SOUP,
        params={"method": method, "ingredients": len(uris)},
        tags=tags,
        inputs=uris,
    ) as run:
        run.log_metrics(result.headline())
        step = ctx.store.describe(uris[0]).tags.get(schema.STEP)
        result.uri = jobs.register(
            ctx,
            run,
            state,
            role=schema.SOUP,
            step=None if step is None else int(step),
            tags={**tags, schema.STATE: f"{method} soup"},
            parents=uris,
            key=f"{key}:soup",
            trained_here=False,
        )
        result.run_id = run.id
        run.log_json(to_dict(result), SOUP_ARTIFACT)
    return result


def fork_soup(ctx: Context, copies: list[State]) -> float:
    """The test error of the uniform soup of a fork's copies (BatchNorm re-estimated on the
    training examples the paths use)."""
    from lmctrack.engine.soup import uniform_soup

    bn_limit = ctx.params.instability.bn_limit
    return ctx.error(uniform_soup(ctx.template(), copies, ctx.dataset, ctx.device, bn_limit))
