"""Linear interpolation between two states: barriers, curves and distances, logged to a run."""

from __future__ import annotations

from pathlib import Path

from lmctrack.workflows.common import Context

DEFINITIONS = {
    "error_barrier": "sup_a E(a) - mean(E(0), E(1)) over the path (Frankle et al. 2020, the paper's instability)",
    "loss_barrier_linear": "max_a L(a) - ((1-a) L(0) + a L(1)) (Entezari et al. 2022)",
    "path": "W(a) = (1 - a) W_A + a W_B, a evenly spaced in [0, 1] including both ends",
}


def interpolate_states(
    ctx: Context, a, b, *, mask_mode: str = "same", progress_key: str | None = None
):
    """The linear path between two States and their distances (Appendices B and G)."""
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
    )
    distances = compare_pair(
        model, a, b, ctx.dataset, split="test", device=ctx.device, names=parameter_names(model)
    )
    return path, distances


def log_pair(
    ctx: Context,
    run,
    label: str,
    a_uri: str,
    b_uri: str,
    path,
    distances: dict,
    extra: dict | None = None,
) -> dict:
    """Log one pair's curves (step = alpha index, so the UI overlays runs), table, figure, numbers."""
    from lmctrack.plots import plot_path

    summary = {**path.summary(), **{f"distance.{k}": float(v) for k, v in distances.items()}}
    result = {
        "a": a_uri,
        "b": b_uri,
        "bn": path.bn,
        "mask_mode": path.mask_mode,
        "alphas": path.alphas,
        "curves": path.curves,
        "summary": summary,
        "definitions": DEFINITIONS,
        **(extra or {}),
    }
    with ctx.store.run(
        ctx.model_name,
        label,
        parent=run,
        params={
            "a": a_uri,
            "b": b_uri,
            "bn": path.bn,
            "alphas": len(path.alphas),
            "splits": ",".join(path.curves),
        },
        tags={"kind": "pair"},
    ) as child:
        child.log_input_states([a_uri, b_uri])
        for split, curve in path.curves.items():
            for metric, values in curve.items():
                child.log_curve(f"{split}_{metric}", values)
        child.log_metrics(summary)
        child.log_table(
            [
                {
                    "alpha": alpha,
                    "split": split,
                    "error": curve["error"][i],
                    "loss": curve["loss"][i],
                }
                for split, curve in path.curves.items()
                for i, alpha in enumerate(path.alphas)
            ],
            "interpolation.json",
        )
        child.log_json(result, "pair.json")
        figure = ctx.scratch() / f"{child.id}_path.png"
        plot_path({label: path}, figure, f"{label} (bn={path.bn})")
        child.log_file(figure, "plots")
        result["run_id"] = child.id
    return result


def interpolate(ctx: Context, a_uri: str, b_uri: str, *, mask_mode: str = "same") -> dict:
    """`lmctrack interpolate A B`: one logged run with the path between two registered states."""
    a, b = ctx.store.load_state(a_uri), ctx.store.load_state(b_uri)
    path, distances = interpolate_states(ctx, a, b, mask_mode=mask_mode)
    with ctx.store.run(ctx.model_name, "interpolate", tags={"kind": "interpolate"}) as run:
        result = log_pair(ctx, run, "pair", a_uri, b_uri, path, distances)
        run.log_metrics(result["summary"])
    result["parent_run_id"] = run.id
    if ctx.out is not None:
        _write_csv(ctx.out / "interpolation.csv", path)
    return result


def _write_csv(out: Path, path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = ["alpha,split,error,loss"]
    for split, curve in path.curves.items():
        for i, alpha in enumerate(path.alphas):
            lines.append(f"{alpha:.6f},{split},{curve['error'][i]:.6f},{curve['loss'][i]:.6f}")
    out.write_text("\n".join(lines) + "\n")
