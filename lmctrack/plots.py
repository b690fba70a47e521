"""The paper's figures as PNG files (matplotlib, Agg canvas; no pyplot global state).

Every plot says what its numbers are: the split, the barrier definition, the BatchNorm policy
and how many samples a mean is taken over. Each function returns the Path it wrote.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lmctrack.interpolate import error_barrier

ERROR_BARRIER = "error barrier = sup_a E(a) - mean(E(0), E(1))"
STABLE = 0.02  # the paper's stability threshold on the error barrier


def _figure(cols: int = 1, rows: int = 1, size: tuple[float, float] = (5.5, 4.0)):
    """A standalone figure (no pyplot): safe in threads and under any interactive backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] * cols, size[1] * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def _save(fig, out: Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=120)
    return out


def _samples(rows: Sequence[Mapping[str, Any]]) -> str:
    counts = sorted({int(r["n"]) for r in rows if "n" in r})
    return f"n = {'/'.join(map(str, counts))} samples" if counts else "n not recorded"


def _lines(ax, rows: Sequence[Mapping[str, Any]], group: str, x: str, center: str, label) -> None:
    """One line per value of `group`: `center` (mean or median) vs `x`, with a ±std band."""
    for value in sorted({r[group] for r in rows}, key=str):
        points = sorted((r for r in rows if r[group] == value), key=lambda r: r[x])
        xs = [r[x] for r in points]
        ys = [r[center] for r in points]
        (line,) = ax.plot(xs, ys, marker="o", markersize=3, label=label(value))
        if all("std" in r for r in points):
            low = [y - r["std"] for y, r in zip(ys, points, strict=True)]
            high = [y + r["std"] for y, r in zip(ys, points, strict=True)]
            ax.fill_between(xs, low, high, color=line.get_color(), alpha=0.2, linewidth=0)


def _rewind_axis(ax, rows: Sequence[Mapping[str, Any]]) -> None:
    """Rewind steps include k = 0: a symlog axis, linear below the smallest positive k."""
    positive = [r["k"] for r in rows if r["k"] > 0]
    ax.set_xscale("symlog", linthresh=min(positive) if positive else 1)
    ax.set_xlim(left=0)
    ax.set_xlabel("rewind step k (iterations; symlog axis)")


def plot_path(path_results: Mapping[str, Any], out: Path, title: str) -> Path:
    """Error (top) and loss (bottom) along the linear paths, one column per split, one line per
    pair. `path_results` maps a pair's name to a PathResult-like object: `alphas`,
    `curves[split]["error" | "loss"]`, `bn`."""
    if not path_results:
        raise ValueError("plot_path needs at least one path")
    first = next(iter(path_results.values()))
    splits = list(first.curves)
    fig, axes = _figure(cols=len(splits), rows=2)
    for col, split in enumerate(splits):
        for name, result in path_results.items():
            errors = result.curves[split]["error"]
            barrier = error_barrier(errors)
            axes[0][col].plot(result.alphas, errors, label=f"{name} (barrier {barrier:.2%})")
            axes[1][col].plot(result.alphas, result.curves[split]["loss"], label=name)
        axes[0][col].set_title(f"{split} error")
        axes[0][col].set_ylabel(f"{split} error")
        axes[1][col].set_ylabel(f"{split} loss (cross-entropy)")
        axes[1][col].set_xlabel("alpha (W = (1 - alpha) W1 + alpha W2)")
        axes[0][col].legend(fontsize="small")
    policies = sorted({r.bn for r in path_results.values()})
    fig.suptitle(
        f"{title}\n{len(path_results)} pair(s); BatchNorm: {', '.join(policies)}; {ERROR_BARRIER}",
        fontsize="medium",
    )
    return _save(fig, out)


def plot_instability(
    rows: Sequence[Mapping[str, Any]],
    out: Path,
    title: str,
    *,
    center: str = "mean",
    bn: str | None = None,
    threshold: float = STABLE,
) -> Path:
    """Figure 3: error barrier vs rewind step k, one line per split, ±std band, the 2% line.

    rows: {"k": int, "split": str, "mean": float, "std": float, "median": float, "n": int}; use
    center="median" for Figure 9.
    """
    fig, axes = _figure()
    ax = axes[0][0]
    _lines(ax, rows, "split", "k", center, label=lambda split: f"{split} ({center})")
    ax.axhline(threshold, color="gray", linestyle="--", label=f"stable below {threshold:.0%}")
    _rewind_axis(ax, rows)
    ax.set_ylabel("error barrier (sup - endpoint mean)")
    ax.legend(fontsize="small")
    policy = f"BatchNorm: {bn}; " if bn else ""
    ax.set_title(f"{title}\n{policy}{center} ± std over {_samples(rows)}", fontsize="medium")
    return _save(fig, out)


def plot_imp_rewind(
    rows: Sequence[Mapping[str, Any]],
    out: Path,
    title: str,
    *,
    metric: str = "test error",
    dense: float | None = None,
) -> Path:
    """Figures 6/7: `metric` (e.g. test error, or instability) of IMP subnetworks vs rewind step,
    one line per density. rows: {"density": float, "k": int, "mean": float, "std": float, "n"}.
    `dense`: the dense network's value, drawn as a reference line."""
    fig, axes = _figure()
    ax = axes[0][0]
    _lines(ax, rows, "density", "k", "mean", label=lambda d: f"{d:.1%} of weights")
    if dense is not None:
        ax.axhline(dense, color="black", linestyle=":", label="dense network")
    _rewind_axis(ax, rows)
    ax.set_ylabel(metric)
    ax.legend(fontsize="small")
    ax.set_title(f"{title}\nIMP subnetworks; mean ± std over {_samples(rows)}", fontsize="medium")
    return _save(fig, out)


def plot_imp_density(
    rows: Sequence[Mapping[str, Any]],
    out: Path,
    title: str,
    *,
    metric: str = "test error",
    dense: float | None = None,
) -> Path:
    """Figures 5/8: `metric` vs fraction of weights remaining, one line per method (IMP, random
    pruning, random reinitialisation). rows: {"method": str, "density": float, "mean", "std", "n"}.
    The x axis runs from dense (left) to sparse (right), on a log scale, as in the paper."""
    fig, axes = _figure()
    ax = axes[0][0]
    _lines(ax, rows, "method", "density", "mean", label=str)
    if dense is not None:
        ax.axhline(dense, color="black", linestyle=":", label="dense network")
    from matplotlib.ticker import NullFormatter

    densities = sorted({r["density"] for r in rows})
    ax.set_xscale("log")
    ax.set_xticks(densities, [f"{d:.3g}" for d in densities])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.invert_xaxis()
    ax.set_xlabel("fraction of weights remaining (log axis)")
    ax.set_ylabel(metric)
    ax.legend(fontsize="small")
    ax.set_title(f"{title}\nmean ± std over {_samples(rows)}", fontsize="medium")
    return _save(fig, out)


def plot_plane(plane, out: Path, title: str, *, metric: str = "error") -> Path:
    """Filled contours of the plane's `metric` ("error" or "loss") with its points marked."""
    values = getattr(plane, metric)
    fig, axes = _figure(size=(6.0, 5.0))
    ax = axes[0][0]
    filled = ax.contourf(plane.xs, plane.ys, values, levels=20, cmap="viridis")
    fig.colorbar(filled, ax=ax, label=f"{plane.split} {metric}")
    for name, (x, y) in plane.points.items():
        ax.plot([x], [y], marker="o", color="white", markeredgecolor="black")
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 5), color="white")
    ax.set_xlabel(plane.labels[0])
    ax.set_ylabel(plane.labels[1])
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_title(f"{title}\n{plane.split} {metric}; BatchNorm: {plane.bn}", fontsize="medium")
    return _save(fig, out)
