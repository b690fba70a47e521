"""Permutation alignment as tracked states (Git Re-Basin, Ainsworth et al. 2022).

`align`: B's hidden units permuted to match A's, checked to compute B's function, registered as a
state (role aligned, parents B and A) whose producing run keeps the permutation as a safetensors
artifact. `transport`: a subnetwork's mask found on init A carried through such a permutation onto
init B, to ask whether a ticket's mask works on another init once the units correspond.
Both are identified by their inputs' URIs and settings, so asking twice registers nothing new.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from lmctrack.config import schema
from lmctrack.config.params import config_hash
from lmctrack.engine.align import Permutation, apply_permutation, invert_permutation
from lmctrack.engine.state import State
from lmctrack.errors import LmcError
from lmctrack.workflows import jobs
from lmctrack.workflows.common import Context

PERMUTATION_FILE = "permutation.safetensors"
CHECK_EXAMPLES = 256  # training examples the permuted network's function is checked on


@dataclass
class Aligned:
    """B permuted to match A, registered as `uri` by run `run_id`."""

    uri: str
    a: str
    b: str
    method: str
    seed: int
    max_logit_diff: float
    run_id: str
    reused: bool = False


@dataclass
class Transported:
    """A's mask in B's unit order on B's weights, registered as `uri`."""

    uri: str
    mask: str  # the subnetwork the mask was found in
    target: str
    alignment: str  # the aligned state whose permutation carried the mask
    density: float
    run_id: str
    reused: bool = False


def same_architecture(a: State, b: State, names: tuple[str, str] = ("A", "B")) -> None:
    """Raise LmcError unless both states have the same tensors with the same shapes."""
    from lmctrack.engine.evaluate import first_mismatch

    problem = first_mismatch(a.weights, b.weights, names)
    if problem is not None:
        raise LmcError(
            f"{names[0]} and {names[1]} are different architectures: {problem}; "
            "align states of the same model"
        )


def align(
    ctx: Context, a_uri: str, b_uri: str, *, method: str | None = None, seed: int | None = None
) -> Aligned:
    """`lmctrack align A B`: register B permuted to match A (align.method and align.seed unless
    given); an identical alignment registered before is returned instead."""
    cfg = ctx.params.align
    method = cfg.method if method is None else method
    seed = cfg.seed if seed is None else seed
    limit = cfg.data_limit if method == "activation" else None
    key = config_hash(a_uri, b_uri, method, seed, limit, "align")
    with jobs.claimed(ctx, [key]):
        done = jobs.finished(ctx, key)
        if done is not None:
            return _adopt(ctx, done, a_uri, b_uri, method, seed)
        return _align(ctx, key, a_uri, b_uri, method, seed)


def _align(ctx: Context, key: str, a_uri: str, b_uri: str, method: str, seed: int) -> Aligned:
    from lmctrack.engine.align import align_states

    a, b = ctx.store.load_state(a_uri), ctx.store.load_state(b_uri)
    same_architecture(a, b)
    ds, limit = ctx.dataset, ctx.params.align.data_limit
    check = next(ds.eval_batches("train", batch_size=CHECK_EXAMPLES, device=ctx.device))[0]
    batches = ds.eval_batches("train", device=ctx.device, limit=limit)
    result = align_states(
        ctx.template(), ds.example(), a, b, check, method=method, batches=batches, seed=seed
    )
    tags = {
        schema.ALIGN_METHOD: method,
        schema.ALIGN_SEED: str(seed),
        schema.MAX_LOGIT_DIFF: str(result.max_logit_diff),
        schema.PERMUTATION: PERMUTATION_FILE,
    }
    with jobs.recorded(
        ctx,
        f"align {method}",
        key=key,
        kind=schema.KIND_ALIGN,
        params={"a": a_uri, "b": b_uri, "method": method, "seed": seed},
        tags=tags,
    ) as run:
        run.log_input_states([a_uri, b_uri])
        folder = ctx.scratch() / key
        folder.mkdir()
        save_permutation(result.perm, folder / PERMUTATION_FILE)
        run.log_file(folder / PERMUTATION_FILE)
        run.log_metrics({schema.MAX_LOGIT_DIFF: result.max_logit_diff})
        step = ctx.store.describe(b_uri).tags.get(schema.STEP)
        uri = jobs.register(
            ctx,
            run,
            result.state,
            role=schema.ALIGNED,
            step=None if step is None else int(step),
            tags={**tags, schema.STATE: "aligned B"},
            parents=[b_uri, a_uri],
            key=f"{key}:aligned",
            trained_here=False,
        )
    return Aligned(uri, a_uri, b_uri, method, seed, result.max_logit_diff, run.id)


def _adopt(ctx: Context, run_id: str, a_uri: str, b_uri: str, method: str, seed: int) -> Aligned:
    info = ctx.store.run_states(run_id)[-1]
    diff = float(info.tags[schema.MAX_LOGIT_DIFF])
    return Aligned(info.uri, a_uri, b_uri, method, seed, diff, run_id, reused=True)


def save_permutation(perm: Permutation, path: Path) -> None:
    """A permutation (group -> unit indices) as a safetensors file: loading it runs no code."""
    from safetensors.torch import save_file

    save_file({g: p.detach().cpu().to(torch.int64).contiguous() for g, p in perm.items()}, path)


def load_permutation(store, uri: str) -> Permutation:
    """The permutation that produced an aligned state, read from its run's artifact."""
    from safetensors.torch import load_file

    info = store.describe(uri)
    name = info.tags.get(schema.PERMUTATION)
    if name is None:
        raise LmcError(
            f"{uri} is not an aligned state (it has no permutation); "
            "pass a state registered by `lmctrack align`"
        )
    return load_file(str(store.run_artifact(info.run_id, name)))


def transport(
    ctx: Context,
    mask_uri: str,
    target_uri: str,
    *,
    by: str | None = None,
    method: str | None = None,
    seed: int | None = None,
) -> Transported:
    """`lmctrack transport`: the mask of subnetwork `mask_uri` (found on init A) on the target
    state of init B, in B's unit order: through the permutation of the aligned state `by`, or of
    the target aligned to the mask's own state (`align`). Registered with parents [B, mask,
    alignment]: B first, since the weights are B's (its W0 is the transported state's ancestor)."""
    sub, target = ctx.store.load_state(mask_uri), ctx.store.load_state(target_uri)
    if sub.mask is None:
        raise LmcError(
            f"{mask_uri} has no mask; pass a subnetwork (a mask level of `lmctrack imp`) to --from"
        )
    same_architecture(sub, target, ("the subnetwork", "the target"))
    alignment = by or align(ctx, mask_uri, target_uri, method=method, seed=seed).uri
    key = config_hash(mask_uri, target_uri, alignment, "transport")
    with jobs.claimed(ctx, [key]):
        done = jobs.finished(ctx, key)
        if done is not None:
            info = ctx.store.run_states(done)[-1]
            density = float(info.tags[schema.DENSITY])
            return Transported(info.uri, mask_uri, target_uri, alignment, density, done, True)
        return _transport(ctx, key, mask_uri, sub, target_uri, target, alignment)


def _transport(
    ctx: Context, key: str, mask_uri: str, sub: State, target_uri: str, target: State, by: str
) -> Transported:
    from lmctrack.engine.align import permutation_spec
    from lmctrack.workflows.imp_chain import sparsity_tags

    spec = permutation_spec(ctx.template(), ctx.dataset.example())
    # Unit i of the aligned B is B's unit perm[i] and matches A's unit i: A's mask in B's order
    # is A's mask permuted by the inverse.
    inverse = invert_permutation(load_permutation(ctx.store, by))
    _, mask = apply_permutation(spec, inverse, sub.weights, sub.mask)
    state = State(target.weights, mask)
    level = int(ctx.store.describe(mask_uri).tags.get(schema.LEVEL, 0))
    step = ctx.store.describe(target_uri).tags.get(schema.STEP)
    with jobs.recorded(
        ctx,
        "transport mask",
        key=key,
        kind=schema.KIND_TRANSPORT,
        params={"mask": mask_uri, "target": target_uri, "alignment": by},
    ) as run:
        run.log_input_states([mask_uri, target_uri, by])
        uri = jobs.register(
            ctx,
            run,
            state,
            role=schema.MASK,
            step=None if step is None else int(step),
            tags={
                **sparsity_tags(level, mask),
                schema.MASK_SOURCE: mask_uri,
                schema.STATE: "(W_B, m_A)",
            },
            parents=[target_uri, mask_uri, by],
            key=f"{key}:transported",
            trained_here=False,
        )
    return Transported(uri, mask_uri, target_uri, by, state.density(), run.id)
