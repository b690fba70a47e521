"""Linear interpolation between two states: the path, its barriers and distances, logged to a run."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lmctrack.config import schema
from lmctrack.config.params import InstabilityConfig, ModelConfig
from lmctrack.engine.state import State
from lmctrack.results.paper import Pair, to_dict
from lmctrack.workflows.common import Context


@dataclass(frozen=True)
class PathSettings:
    """What a path's numbers depend on besides its two states and the data: all a Ray task
    needs to compute it away from the Context."""

    model: ModelConfig
    instability: InstabilityConfig
    mask_mode: str = "same"


def interpolate_states(
    ctx: Context, a: State, b: State, *, a_uri: str = "", b_uri: str = "", mask_mode: str = "same"
) -> Pair:
    """The linear path between two States (error and loss per split) and their distances
    (Appendices B and G: weight space, and function space on every split of the path)."""
    from lmctrack.engine.interpolate import check_compatible

    check_compatible(a, b, mask_mode)
    pair = path_between(ctx.dataset, ctx.device, path_settings(ctx, mask_mode), a, b)
    pair.a, pair.b = a_uri, b_uri
    return pair


def interpolate_pairs(
    ctx: Context,
    pairs: Sequence[tuple[State, State]],
    *,
    mask_mode: str = "same",
    settings: Sequence[PathSettings] | None = None,
) -> list[Pair]:
    """interpolate_states for every pair (without URIs): in the local pool of processes, or each
    pair as a Ray task when runner.backend is ray, so that a sweep's analysis spreads over the
    cores or the cluster like its trainings. The same numbers either way on CPUs (one thread per
    process or task). `settings` gives each pair its own (e.g. another BatchNorm policy or
    width); by default every pair gets the context's."""
    from lmctrack.engine.interpolate import check_compatible

    settings = list(settings or [path_settings(ctx, mask_mode)] * len(pairs))
    for (a, b), how in zip(pairs, settings, strict=True):
        check_compatible(a, b, how.mask_mode)  # here, before any task starts
    calls = [(how, a, b) for (a, b), how in zip(pairs, settings, strict=True)]
    return ctx.executor.map(path_between, calls, ctx.dataset, ctx.device, "interpolation")


def path_settings(ctx: Context, mask_mode: str = "same") -> PathSettings:
    """The context's settings for a path (its model, instability section and mask mode)."""
    return PathSettings(ctx.params.model, ctx.params.instability, mask_mode)


def path_between(dataset, device: torch.device, settings: PathSettings, a: State, b: State) -> Pair:
    """The path and distances between two compatible States, on `dataset` and `device` (in
    this process or in a Ray task)."""
    from lmctrack.engine.compare import compare_pair, parameter_names
    from lmctrack.engine.interpolate import linear_path
    from lmctrack.engine.models import build_for_data

    inst = settings.instability
    model = build_for_data(settings.model, dataset, 0).to(device)
    how = inst.model_dump(include={"alphas", "splits", "bn", "eval_limit", "bn_limit"})
    path = linear_path(model, a, b, dataset, mask_mode=settings.mask_mode, device=device, **how)
    distances = compare_pair(
        model,
        a,
        b,
        dataset,
        splits=inst.splits,
        device=device,
        names=parameter_names(model),
        limit=inst.eval_limit,
    )
    return Pair("", "", path.bn, path.mask_mode, path.alphas, path.curves, distances)


def log_pair(ctx: Context, parent, label: str, pair: Pair) -> Pair:
    """Log one pair as a child run: curves against alpha (step = alpha index, so the UI overlays
    the runs' curves), the table, the figure and the barriers. Returns the pair with its run id."""
    from lmctrack.results.plots import plot_path, save

    with ctx.run(
        label,
        parent=parent,
        params={
            "a": pair.a,
            "b": pair.b,
            "bn": pair.bn,
            "alphas": len(pair.alphas),
            "splits": ",".join(pair.curves),
        },
        tags={schema.KIND: schema.KIND_PAIR},
    ) as run:
        run.log_input_states([uri for uri in (pair.a, pair.b) if uri])
        run.log_curve("alpha", pair.alphas)  # chart the curves against it (x axis: alpha)
        for split, curve in pair.curves.items():
            for quantity, values in curve.items():
                run.log_curve(f"{split}_{quantity}", values)
        run.log_metrics(pair.metrics())
        run.log_table(
            [
                {"alpha": alpha, "split": split, "error": c["error"][i], "loss": c["loss"][i]}
                for split, c in pair.curves.items()
                for i, alpha in enumerate(pair.alphas)
            ],
            "interpolation.json",
        )
        pair.run_id = run.id
        run.log_json(to_dict(pair), "pair.json")
        figure = ctx.scratch() / f"{run.id}_path.png"
        save(plot_path({label: pair}, f"{label} (bn={pair.bn})"), figure)
        run.log_file(figure, "plots")
    return pair


def interpolate(ctx: Context, a_uri: str, b_uri: str, *, mask_mode: str = "same") -> Pair:
    """`lmctrack interpolate A B`: one logged run with the path between two registered states."""
    a, b = ctx.store.load_state(a_uri), ctx.store.load_state(b_uri)
    pair = interpolate_states(ctx, a, b, a_uri=a_uri, b_uri=b_uri, mask_mode=mask_mode)
    with ctx.run("interpolate", tags={schema.KIND: schema.KIND_INTERPOLATE}) as run:
        log_pair(ctx, run, "pair", pair)
        run.log_metrics(pair.metrics())
    if ctx.out is not None:
        _write_csv(ctx, pair)
    return pair


def _write_csv(ctx: Context, pair: Pair) -> None:
    lines = ["alpha,split,error,loss"]
    for split, curve in pair.curves.items():
        for i, alpha in enumerate(pair.alphas):
            lines.append(f"{alpha:.6f},{split},{curve['error'][i]:.6f},{curve['loss'][i]:.6f}")
    ctx.out.mkdir(parents=True, exist_ok=True)
    (ctx.out / "interpolation.csv").write_text("\n".join(lines) + "\n")
