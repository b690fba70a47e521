"""Linear interpolation between two states: the path, its barriers and distances, logged to a run."""

from __future__ import annotations

from lmctrack import schema
from lmctrack.results import Pair, to_dict
from lmctrack.state import State
from lmctrack.workflows.common import Context


def interpolate_states(
    ctx: Context, a: State, b: State, *, a_uri: str = "", b_uri: str = "", mask_mode: str = "same"
) -> Pair:
    """The linear path between two States (error and loss per split) and their distances
    (Appendices B and G: weight space, and function space on every split of the path)."""
    from lmctrack.compare import compare_pair, parameter_names
    from lmctrack.interpolate import check_compatible, linear_path

    check_compatible(a, b, mask_mode)
    inst = ctx.params.instability
    model = ctx.template()
    path = linear_path(
        model,
        a,
        b,
        ctx.dataset,
        alphas=inst.alphas,
        splits=inst.splits,
        bn=inst.bn,
        mask_mode=mask_mode,
        device=ctx.device,
        eval_limit=inst.eval_limit,
        bn_limit=inst.bn_limit,
    )
    distances = compare_pair(
        model,
        a,
        b,
        ctx.dataset,
        splits=inst.splits,
        device=ctx.device,
        names=parameter_names(model),
        limit=inst.eval_limit,
    )
    return Pair(a_uri, b_uri, path.bn, path.mask_mode, path.alphas, path.curves, distances)


def log_pair(ctx: Context, parent, label: str, pair: Pair) -> Pair:
    """Log one pair as a child run: curves against alpha (step = alpha index, so the UI overlays
    the runs' curves), the table, the figure and the barriers. Returns the pair with its run id."""
    from lmctrack.plots import plot_path, save

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
        run.log_json({**to_dict(pair), "definitions": schema.DEFINITIONS}, "pair.json")
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
