"""The paper's two baselines for an IMP subnetwork (Wk, m), trained like it from step k:

- random pruning: m drawn at random within each layer (same per-layer sparsity) on Wk;
- random reinitialization: m on a fresh initialization (Figure 22 and the reference
  implementation start it at k; `imp.reinit_start: zero` starts it at 0, recorded in its tags).

Each baseline of each replicate and level draws its own random mask, init and SGD noise.
"""

from __future__ import annotations

from lmctrack.config import schema
from lmctrack.config.params import config_hash
from lmctrack.engine.state import State
from lmctrack.engine.train import Noise
from lmctrack.results.paper import Trained
from lmctrack.workflows import jobs
from lmctrack.workflows.common import Context
from lmctrack.workflows.imp_chain import accuracy, sparse_params, sparsity_tags


def random_pruned(sub: State, seed: int, strategy: str = "layerwise") -> State:
    """The random-pruning baseline of a subnetwork: the same per-layer sparsity, its weights
    chosen by the registry's random criterion."""
    from lmctrack.engine.prune import CRITERIA, RANDOM, prune_like

    return State(sub.weights, prune_like(sub.weights, sub.mask, CRITERIA[RANDOM], seed, strategy))


def drawn_by(method: str) -> tuple[str, ...]:
    """What names a baseline's draw in its key: random pruning scores the weights with the
    registry's random criterion (keys made when it shuffled the mask stand for another draw)."""
    from lmctrack.engine.prune import RANDOM

    return (method, RANDOM) if method == schema.RANDOM_PRUNE else (method,)


def reinitialized(ctx: Context, sub: State, init_seed: int) -> State:
    """The random-reinitialization baseline: the subnetwork's mask on a fresh initialization."""
    from lmctrack.engine.models import build_for_data

    ds = ctx.dataset
    fresh = build_for_data(ctx.params.model, ds, init_seed).state_dict()
    return State({k: v.detach().clone() for k, v in fresh.items()}, sub.mask)


def baselines(
    ctx: Context, parent, chain_key: str, wk_uri: str, wk: State, imp: list[Trained]
) -> list[Trained]:
    """Train both baselines for every sparse IMP training (all at once); reuse finished ones."""
    chosen = ctx.params.imp.baseline_levels
    plans = []
    for t in (t for t in imp if t.level > 0 and (chosen is None or t.level in chosen)):
        mask = ctx.store.load_state(t.start).mask
        for method in (schema.RANDOM_PRUNE, schema.RANDOM_REINIT):
            key = config_hash(chain_key, t.replicate, t.level, *drawn_by(method))
            parts = (ctx.params.seeds.init, t.replicate, t.level, method)
            if method == schema.RANDOM_PRUNE:
                start, step = (
                    random_pruned(State(wk.weights, mask), jobs.noise_seed(*parts)),
                    t.start_step,
                )
            else:
                start = reinitialized(ctx, State(wk.weights, mask), jobs.noise_seed(*parts, "init"))
                step = t.start_step if ctx.params.imp.reinit_start == "rewind" else 0
            seed = jobs.noise_seed(ctx.params.seeds.data_order, t.replicate, t.level, method)
            plans.append((t, method, key, start, step, seed))
    with jobs.claimed(ctx, [plan[2] for plan in plans]):
        todo = [
            jobs.training(
                ctx,
                key,
                f"{method} r{t.replicate} level {t.level}",
                start,
                start=step,
                noise=Noise(seed, seed),
            )
            for t, method, key, start, step, seed in plans
            if jobs.finished(ctx, key) is None
        ]
        results = jobs.train_all(ctx, todo)
        return [
            _register(ctx, parent, wk_uri, *plan, results[plan[2]])
            if plan[2] in results
            else _adopt(ctx, plan[0], plan[1], jobs.finished(ctx, plan[2]))
            for plan in plans
        ]


def _register(
    ctx: Context,
    parent,
    wk_uri: str,
    t: Trained,
    method: str,
    key: str,
    start: State,
    step: int,
    seed: int,
    result,
) -> Trained:
    tags = {
        **sparsity_tags(t.level, start.mask),
        schema.REPLICATE: str(t.replicate),
        schema.METHOD: method,
        schema.START_STEP: str(step),
        **jobs.noise_tags(seed),
    }
    with jobs.recorded(
        ctx,
        f"{method} r{t.replicate} level {t.level}",
        key=key,
        kind=method,
        parent=parent,
        params=sparse_params(
            ctx, wk_uri, k=t.start_step, density=t.density, level=t.level, criterion=method
        ),
    ) as run:
        role = schema.MASK if method == schema.RANDOM_PRUNE else schema.REINIT
        parents = [t.start] + ([wk_uri] if method == schema.RANDOM_PRUNE else [])
        start_uri = jobs.register_start(ctx, run, start, role, step, tags, parents, f"{key}:start")
        trained = State(result.weights, start.mask)
        named = {**tags, schema.STATE: "W_T"}
        uri = jobs.register_trained(ctx, run, trained, named, [start_uri], f"{key}:W_T")
        error = ctx.error(trained)
        run.log_metrics(accuracy(error))
    return Trained(method, t.replicate, t.level, t.density, start_uri, uri, seed, step, error)


def _adopt(ctx: Context, t: Trained, method: str, run_id: str) -> Trained:
    start, trained = ctx.store.run_states(run_id)
    tags = trained.tags
    return Trained(
        method,
        t.replicate,
        t.level,
        t.density,
        start.uri,
        trained.uri,
        int(tags[schema.DATA_ORDER_SEED]),
        int(tags[schema.START_STEP]),
        float(ctx.store.run_metrics(run_id)[schema.TEST_ERROR]),
    )


def register_random_prune(ctx: Context, source: str, seed: int, strategy: str = "layerwise") -> str:
    """`lmctrack prune --random --from MASK`: register the shuffled subnetwork on its own."""
    sub = ctx.store.load_state(source)
    return _register_start(
        ctx, source, random_pruned(sub, seed, strategy), schema.RANDOM_PRUNE, seed
    )


def register_reinit(ctx: Context, source: str, seed: int) -> str:
    """`lmctrack reinit --from MASK`: register the mask on a fresh initialization."""
    sub = ctx.store.load_state(source)
    return _register_start(ctx, source, reinitialized(ctx, sub, seed), schema.RANDOM_REINIT, seed)


def _register_start(ctx: Context, source: str, state: State, method: str, seed: int) -> str:
    info = ctx.store.describe(source)
    level = int(info.tags.get(schema.LEVEL, 0))
    step = int(info.tags.get(schema.STEP, 0))
    key = config_hash(source, *drawn_by(method), seed)
    tags = {**sparsity_tags(level, state.mask), schema.METHOD: method, "seed": str(seed)}
    subnetwork = {
        schema.K: step,
        schema.DENSITY: float(tags[schema.DENSITY]),
        schema.LEVEL: level,
        schema.CRITERION: method,
    }
    params = {"source": source, "seed": seed, **sparse_params(ctx, source, **subnetwork)}
    with jobs.recorded(ctx, method.replace("_", " "), key=key, kind=method, params=params) as run:
        role = schema.MASK if method == schema.RANDOM_PRUNE else schema.REINIT
        return jobs.register_start(ctx, run, state, role, step, tags, [source], f"{key}:start")
