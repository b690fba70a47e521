"""The paper's figures as PNG files (matplotlib, Agg canvas; no pyplot global state).

Every plot says what its numbers are: the split, the barrier definition, the BatchNorm policy
and how many samples a mean is taken over. Each function returns a Figure (shown as is in a
notebook); `save` writes one as PNG.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from lmctrack.config import schema
from lmctrack.config.schema import Stats
from lmctrack.engine.interpolate import error_barrier

ERROR_BARRIER = "error barrier = sup_a E(a) - mean(E(0), E(1))"
DENSE = "dense network (mean)"
DPI = 120  # of the saved PNG files


def _figure(cols: int = 1, rows: int = 1, size: tuple[float, float] = (5.5, 4.0)):
    """A standalone figure (no pyplot): safe in threads and under any interactive backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = Figure(figsize=(size[0] * cols, size[1] * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def save(fig: Figure, out: Path) -> Path:
    """Write a figure as PNG (the folder is created), its titles wrapped to fit; returns the
    path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _fitted(fig).savefig(out, format="png", dpi=DPI)
    return out


def _titles(fig: Figure) -> list:
    """The figure's title and its axes' titles (matplotlib Text objects) that say something."""
    found = [fig._suptitle] + [ax.title for ax in fig.axes]
    return [t for t in found if t is not None and t.get_text()]


def _fitted(fig: Figure) -> Figure:
    """Wrap every title that runs past the figure's edge onto more lines (a long model name or
    definition would otherwise be cut off in the PNG), measured at the resolution it is saved
    at: text widths do not scale exactly with the resolution."""
    import textwrap

    fig.set_dpi(DPI)
    for _ in range(3):  # wrapping moves the layout; a title that moved is measured again
        fig.draw_without_rendering()
        cut = False
        for text in _titles(fig):
            box = text.get_window_extent()
            room = 2 * min((box.x0 + box.x1) / 2, fig.bbox.width - (box.x0 + box.x1) / 2)
            if box.width <= room:
                continue
            lines = text.get_text().splitlines()
            chars = int(max(map(len, lines)) * 0.95 * room / box.width)
            text.set_text("\n".join(textwrap.fill(line, max(chars, 10)) for line in lines))
            cut = True
        if not cut:
            break
    return fig


def _stable_line(ax, threshold: float) -> None:
    """The stability threshold, drawn and labelled the same on every barrier plot."""
    ax.axhline(threshold, color="gray", linestyle="--", label=schema.stable_label(threshold))


Series = Sequence[tuple[Any, float, Stats]]  # (line, x, statistics of the samples at x)


def _samples(series: Series) -> str:
    counts = sorted({s.n for _, _, s in series})
    return f"n = {'/'.join(map(str, counts))} samples"


def _lines(ax, series: Series, label, center: str = "mean") -> None:
    """One line per group: `center` (mean or median) vs x, with a ±std band."""
    for group in sorted({g for g, _, _ in series}, key=str):
        points = sorted((x, s) for g, x, s in series if g == group)
        xs = [x for x, _ in points]
        ys = [getattr(s, center) for _, s in points]
        (line,) = ax.plot(xs, ys, marker="o", markersize=3, label=label(group))
        stds = [s.std for _, s in points]
        if len(xs) == 1:  # a band needs two points: a lone point (e.g. a baseline) gets a bar
            ax.errorbar(xs, ys, yerr=stds, color=line.get_color(), capsize=3, linewidth=1)
            continue
        low = [y - d for y, d in zip(ys, stds, strict=True)]
        high = [y + d for y, d in zip(ys, stds, strict=True)]
        ax.fill_between(xs, low, high, color=line.get_color(), alpha=0.2, linewidth=0)


def _rewind_axis(ax, ks: Sequence[int]) -> None:
    """Rewind steps include k = 0: a symlog axis, linear below the smallest positive k, a tick
    at every k measured and room after the last (its point would sit on the frame)."""
    steps = sorted(set(ks))
    positive = [k for k in steps if k > 0]
    ax.set_xscale("symlog", linthresh=min(positive) if positive else 1)
    ax.set_xlim(0, 1.3 * max(positive, default=1))
    _ticks(ax.xaxis, steps)
    ax.set_xlabel("rewind step k (iterations; symlog axis)")


def _ticks(axis, values: Sequence[float]) -> None:
    """Ticks at exactly these values, labelled plainly (a log axis's powers of ten say less)."""
    from matplotlib.ticker import NullFormatter

    axis.set_ticks(values, [f"{v:.3g}" for v in values])
    axis.set_minor_formatter(NullFormatter())


def plot_path(path_results: Mapping[str, Any], title: str) -> Figure:
    """Error (top) and loss (bottom) along the linear paths, one column per split, one line per
    pair. `path_results` maps a pair's name to a Pair or PathResult: `alphas`,
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
    return _fitted(fig)


def plot_instability(
    rows: Sequence, title: str, *, bn: str, threshold: float, center: str = "mean"
) -> Figure:
    """Figure 3: error barrier vs rewind step k, one line per split, ±std band, the 2% line.
    rows: SweepRow-like (k, split, barrier: Stats); center="median" for Figure 9's statistic."""
    fig, axes = _figure()
    ax = axes[0][0]
    series = [(r.split, r.k, r.barrier) for r in rows]
    _lines(ax, series, label=lambda split: f"{split} ({center})", center=center)
    _stable_line(ax, threshold)
    _rewind_axis(ax, [r.k for r in rows])
    ax.set_ylabel("error barrier (sup - endpoint mean)")
    ax.legend(fontsize="small")
    ax.set_title(
        f"{title}\nBatchNorm: {bn}; {center} ± std over {_samples(series)}", fontsize="medium"
    )
    return _fitted(fig)


def plot_wk_error(errors: Mapping[int, Stats], title: str) -> Figure:
    """Figure 11: the test error of Wk itself (before any further training) vs k."""
    fig, axes = _figure()
    ax = axes[0][0]
    series = [("Wk", k, s) for k, s in errors.items()]
    _lines(ax, series, label=lambda _: "test error of Wk")
    _rewind_axis(ax, list(errors))
    ax.set_ylabel("test error")
    ax.legend(fontsize="small")
    ax.set_title(f"{title}\nmean ± std over {_samples(series)} (inits)", fontsize="medium")
    return _fitted(fig)


def plot_soup(rows: Sequence, title: str) -> Figure:
    """The uniform soup of each fork's copies vs k, beside the copies' mean and best test error.
    rows: SoupRow-like (k, soup, mean_copy, best_copy: Stats over inits)."""
    fig, axes = _figure()
    ax = axes[0][0]
    names = {"soup": "uniform soup", "mean_copy": "mean copy", "best_copy": "best copy"}
    series = [(label, r.k, getattr(r, name)) for r in rows for name, label in names.items()]
    _lines(ax, series, label=lambda group: group)
    _rewind_axis(ax, [r.k for r in rows])
    ax.set_ylabel("test error")
    ax.legend(fontsize="small")
    ax.set_title(f"{title}\nmean ± std over inits", fontsize="medium")
    return _fitted(fig)


def plot_imp_rewind(
    series: Series,
    title: str,
    *,
    metric: str,
    threshold: float | None = None,
    dense: float | None = None,
) -> Figure:
    """Figures 6/7: `metric` of IMP subnetworks vs rewind step, one line per density.
    series: (density, k, Stats); `threshold`: the stability line (Figure 6), `dense`: the dense
    network's value (Figure 7)."""
    fig, axes = _figure()
    ax = axes[0][0]
    _lines(ax, series, label=lambda d: f"{d:.1%} of weights")
    if threshold is not None:
        _stable_line(ax, threshold)
    if dense is not None:
        ax.axhline(dense, color="black", linestyle=":", label=DENSE)
    _rewind_axis(ax, [k for _, k, _ in series])
    ax.set_ylabel(metric)
    ax.legend(fontsize="small")
    ax.set_title(f"{title}\nIMP subnetworks; mean ± std over {_samples(series)}", fontsize="medium")
    return _fitted(fig)


def plot_earliest(earliest: Sequence, title: str) -> Figure:
    """Figure 9: per density, the median over samples of the earliest stable / matching k."""
    fig, axes = _figure()
    ax = axes[0][0]
    found = []
    for name, label in (("stable_from_k", "stable from k"), ("matching_from_k", "matching from k")):
        points = [(e.density, getattr(e, name)) for e in earliest if getattr(e, name) is not None]
        label += "" if points else " (never)"
        ax.plot([d for d, _ in points], [k for _, k in points], marker="o", label=label)
        found += [k for _, k in points]
    densities = sorted({e.density for e in earliest})
    ax.set_xscale("log")
    _ticks(ax.xaxis, densities)
    ax.set_xlim(1.25 * densities[-1], densities[0] / 1.25)  # dense at the left, as in the paper
    linthresh = min((k for k in found if k > 0), default=1)
    ax.set_yscale("symlog", linthresh=linthresh)
    ax.set_ylim(-0.2 * linthresh, 1.3 * max(found, default=linthresh) or linthresh)
    _ticks(ax.yaxis, sorted(set(found)) or [0])
    ax.set_xlabel("fraction of weights remaining (log axis)")
    ax.set_ylabel("rewind step k (median over samples)")
    ax.legend(fontsize="small")
    ax.set_title(f"{title}\n{schema.DEFINITIONS['earliest_k']}", fontsize="small")
    return _fitted(fig)


def plot_imp_density(
    rows: Sequence[Mapping[str, Any]],
    title: str,
    *,
    metric: str = "test accuracy",
    dense: float | None = None,
    dense_std: float = 0.0,
) -> Figure:
    """Figures 5/8: `metric` vs fraction of weights remaining, one line per method (IMP, random
    pruning, random reinitialisation). rows: {"method", "density", "mean", "std", "n"}.
    The x axis runs from dense (left) to sparse (right), on a log scale, as in the paper."""
    fig, axes = _figure()
    ax = axes[0][0]
    series = [
        (r["method"], r["density"], Stats(r["mean"], r["std"], r["mean"], r["n"])) for r in rows
    ]
    _lines(ax, series, label=str)
    if dense is not None:
        ax.axhline(dense, color="black", linestyle=":", label=DENSE)
        ax.axhspan(dense - dense_std, dense + dense_std, color="black", alpha=0.08, linewidth=0)
    ax.set_xscale("log")
    _ticks(ax.xaxis, sorted({r["density"] for r in rows}))
    ax.invert_xaxis()
    ax.set_xlabel("fraction of weights remaining (log axis)")
    ax.set_ylabel(metric)
    ax.legend(fontsize="small")
    ax.set_title(f"{title}\nmean ± std over {_samples(series)}", fontsize="medium")
    return _fitted(fig)


def plot_plane(plane, title: str, *, metric: str = "error") -> Figure:
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
    return _fitted(fig)
