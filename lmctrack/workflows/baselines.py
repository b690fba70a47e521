"""The random baselines as stand-alone registered states (the IMP workflow trains them too)."""

from __future__ import annotations

from lmctrack.workflows.common import PARAMS_ARTIFACT, Context
from lmctrack.workflows.imp import random_pruned, reinitialized, sparsity_tags


def _register(ctx: Context, source: str, state, kind: str, role: str, step: int, seed: int) -> str:
    info = ctx.store.describe(source)
    level = int(info.tags.get("level", 0))
    with ctx.store.run(
        ctx.model_name,
        kind.replace("_", " "),
        params={"source": source, "seed": seed},
        tags={"kind": kind},
    ) as run:
        run.log_json(ctx.params.model_dump(mode="json"), PARAMS_ARTIFACT)
        return run.save_state(
            state,
            model_name=ctx.model_name,
            role=role,
            step=step,
            tags={**sparsity_tags(level, state.mask), "baseline": kind, "seed": str(seed)},
            parents=[source],
        )


def register_random_prune(ctx: Context, source: str, seed: int, strategy: str = "layerwise") -> str:
    step = int(ctx.store.describe(source).tags.get("step", 0))
    return _register(
        ctx, source, random_pruned(ctx, source, seed, strategy), "random_prune", "mask", step, seed
    )


def register_reinit(ctx: Context, source: str, seed: int) -> str:
    return _register(
        ctx, source, reinitialized(ctx, source, seed), "random_reinit", "reinit", 0, seed
    )
