"""The Python API beyond the paper's two algorithms, as the CLI calls it: alignment across inits
(Git Re-Basin), loss-landscape analyses, dataset distillation and the 2023 follow-up, the
random baselines, the report and the data folder (lmctrack.api re-exports them).

Each function takes `params` and typed `sets` like those of lmctrack.api.paper, or `ctx`: a context
already open (the CLI's workspace).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from lmctrack.api.paper import ParamsLike, within
from lmctrack.workflows.common import Context

Sets = Mapping[str, object] | None


def connect(
    a: str | None = None,
    b: str | None = None,
    *,
    kinds: tuple[str, ...] | None = None,
    params: ParamsLike = None,
    sets: Sets = None,
    ctx: Context | None = None,
):
    """The paths between states A and B of different inits side by side (`kinds`: naive,
    aligned, aligned + REPAIR), or without A and B the sweep over align.inits and align.widths."""
    from lmctrack.config import schema
    from lmctrack.workflows.connect import connect as sweep
    from lmctrack.workflows.connect import connect_two

    with within(ctx, params, sets, a) as ctx:
        if a is None or b is None:
            return sweep(ctx)
        return connect_two(ctx, a, b, kinds=kinds or schema.PAIR_KINDS)


def transport(
    source: str,
    target: str,
    *,
    by: str | None = None,
    params: ParamsLike = None,
    sets: Sets = None,
    ctx: Context | None = None,
):
    """The mask of subnetwork `source` (init A) carried onto `target` (init B) through the
    permutation aligning them (`by`'s, an aligned state; else `target` aligned to `source`)."""
    from lmctrack.workflows.alignment import transport as carry

    with within(ctx, params, sets, target) as ctx:
        return carry(ctx, source, target, by=by)


def soup(
    uris: list[str],
    *,
    greedy: bool = False,
    params: ParamsLike = None,
    sets: Sets = None,
    ctx: Context | None = None,
):
    """The uniform soup of states (mean weights, masks kept, BatchNorm re-estimated) or with
    `greedy` the greedy one (selected on data.validation, never on test), registered with role
    soup and every ingredient as a parent. Returns the typed `Souped` result."""
    from lmctrack.workflows.souping import soup as average

    with within(ctx, params, sets, uris[0] if uris else None) as ctx:
        return average(ctx, list(uris), greedy=greedy)


def hessian(
    uri: str,
    *,
    samples: int = 100,
    limit: int = 1000,
    seed: int = 0,
    params: ParamsLike = None,
    sets: Sets = None,
    ctx: Context | None = None,
):
    """Hessian diagonal of the train loss at a state (Hutchinson), logged with its histogram."""
    from lmctrack.workflows.analyses import hessian as estimate

    with within(ctx, params, sets, uri) as ctx:
        return estimate(ctx, uri, samples=samples, limit=limit, seed=seed)


def plane(
    origin: str,
    a: str,
    b: str,
    *,
    grid: int = 11,
    margin: float = 0.2,
    split: str = "test",
    params: ParamsLike = None,
    sets: Sets = None,
    ctx: Context | None = None,
):
    """Error and loss on the plane through three states (e.g. Wk, W_T copy 1, W_T copy 2)."""
    from lmctrack.workflows.analyses import plane as through

    with within(ctx, params, sets, origin) as ctx:
        return through(ctx, origin, a, b, grid=grid, margin=margin, split=split)


def random_plane(
    uri: str,
    *,
    grid: int = 11,
    span: float = 1.0,
    seed: int = 0,
    split: str = "test",
    params: ParamsLike = None,
    sets: Sets = None,
    ctx: Context | None = None,
):
    """Error and loss along two filter-normalised random directions around one state."""
    from lmctrack.workflows.analyses import random_plane as around

    with within(ctx, params, sets, uri) as ctx:
        return around(ctx, uri, grid=grid, span=span, seed=seed, split=split)


def distill(
    out: Path = Path("outputs/distill"),
    *,
    params: ParamsLike = None,
    sets: Sets = None,
    ctx: Context | None = None,
):
    """Distill the training set (distill.method: MTT or DM) into OUT/distilled.safetensors,
    registered with its lineage and its quality against a random real subset."""
    from lmctrack.workflows.distillation import distill as run_distill

    with within(ctx, params, sets) as ctx:
        return run_distill(ctx, out)


def followup(
    run_id: str | None = None,
    prune_data: Path | None = None,
    *,
    out: Path = Path("outputs/followup"),
    params: ParamsLike = None,
    sets: Sets = None,
    ctx: Context | None = None,
):
    """The 2023 follow-up from Wk (imp.rewind) of run `run_id` (trained when None): IMP on the
    real data vs on `prune_data` (distilled first, into `out`, when None), with its verdict."""
    from lmctrack.api.paper import train, trained
    from lmctrack.config.params import DataConfig
    from lmctrack.workflows.distillation import TENSORS
    from lmctrack.workflows.distillation import distill as run_distill
    from lmctrack.workflows.followup import distilled_search
    from lmctrack.workflows.followup import followup as compare

    with within(ctx, params, sets, run_id=run_id) as ctx:
        if prune_data is not None:  # a file that does not fit the network: before any training
            distilled_search(ctx, DataConfig(name=TENSORS, path=str(prune_data)))
        k = ctx.steps(ctx.params.imp.rewind)
        run = train(ctx=ctx) if run_id is None else trained(run_id, ctx=ctx)
        if prune_data is None:
            prune_data = Path(run_distill(ctx, out).path)
        return compare(ctx, run.at(k), DataConfig(name=TENSORS, path=str(prune_data)))


def random_prune(
    source: str,
    seed: int = 0,
    strategy: str = "layerwise",
    *,
    params: ParamsLike = None,
    sets: Sets = None,
    ctx: Context | None = None,
) -> str:
    """Register the random-pruning baseline of subnetwork `source`: same sparsity (per layer, or
    overall with `strategy="global"`), random positions. Returns its URI."""
    from lmctrack.workflows.baselines import register_random_prune

    with within(ctx, params, sets, source) as ctx:
        return register_random_prune(ctx, source, seed, strategy)


def reinit(
    source: str,
    seed: int = 1,
    *,
    params: ParamsLike = None,
    sets: Sets = None,
    ctx: Context | None = None,
) -> str:
    """Register the random-reinitialization baseline: the mask of `source` on a fresh init."""
    from lmctrack.workflows.baselines import register_reinit

    with within(ctx, params, sets, source) as ctx:
        return register_reinit(ctx, source, seed)


def report(outputs: Path = Path("outputs"), out: Path = Path("outputs/report")) -> dict:
    """Collect the pipeline's results (the stages' --out folders) into report.md and
    summary.json (DVC metrics); returns the summary."""
    from lmctrack.workflows.report import report as write_report

    return write_report(outputs, out)


def mnist1d(root: Path = Path("data"), samples: int = 20000) -> Path:
    """Generate MNIST-1D locally into ROOT/mnist1d/ (deterministic)."""
    from lmctrack.workflows.data_files import write_mnist1d

    return write_mnist1d(root, samples)


def import_dataset(name: str, source: Path, root: Path = Path("data")) -> Path:
    """Copy a local dataset into ROOT in torchvision's layout and `dvc add` it."""
    from lmctrack.workflows.data_files import import_dataset as copy_in

    return copy_in(name, source, root)


__all__ = [
    "connect",
    "distill",
    "followup",
    "hessian",
    "import_dataset",
    "mnist1d",
    "plane",
    "random_plane",
    "random_prune",
    "reinit",
    "report",
    "transport",
]
