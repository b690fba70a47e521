"""Linear mode connectivity across initializations (Git Re-Basin, Ainsworth et al. 2022; REPAIR,
Jordan et al. 2022), beside the paper's question across SGD noise.

Between networks trained from different inits, three paths per pair: as trained (naive), with
B's hidden units permuted to match A (aligned), and aligned with REPAIR on the path; a sweep's
paths are interpolated at once, in the pool of processes or as Ray tasks. `connect`
trains align.inits networks and compares every pair; with align.widths it does so at every
width (Git Re-Basin's barrier vs width). Each path is a logged pair run under the sweep's run,
the aligned states are registered (`lmctrack align`), and the typed result is kept on the run so
an identical sweep is read back instead of recomputed.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

from lmctrack.config import schema
from lmctrack.config.schema import Stats
from lmctrack.results.paper import Pair, to_dict
from lmctrack.results.serial import known
from lmctrack.workflows import jobs
from lmctrack.workflows.alignment import align
from lmctrack.workflows.common import Context
from lmctrack.workflows.instability import sweep_seeds
from lmctrack.workflows.paths import interpolate_pairs, log_pair, path_settings
from lmctrack.workflows.training_run import train_runs

CONNECT_ARTIFACT = "connect.json"
_BN = {schema.PERMUTED_REPAIR: "repair"}  # the path kinds whose BatchNorm policy is fixed


@dataclass
class Connection:
    """Two networks from different inits and the paths between them, by kind (schema.PAIR_KINDS)."""

    a: str
    b: str
    aligned: str  # B permuted to match A
    width: int | None
    max_logit_diff: float
    paths: dict[str, Pair]

    def barrier(self, kind: str, split: str) -> float:
        return self.paths[kind].error_barrier(split)

    def headline(self) -> dict[str, float]:
        """Each path kind's error barrier per split (naive, aligned, aligned + REPAIR), named as
        the connect run's metrics."""
        return {
            f"{kind}.{schema.metric(split, schema.ERROR_BARRIER)}": pair.error_barrier(split)
            for kind, pair in self.paths.items()
            for split in pair.curves
        }

    @classmethod
    def from_dict(cls, data: dict) -> Connection:
        paths = {kind: Pair.from_dict(p) for kind, p in data["paths"].items()}
        return cls(**{**known(cls, data), "paths": paths})


@dataclass
class Connect:
    """The across-inits sweep: every pair of inits at every width."""

    run_id: str
    model: str
    method: str
    bn: str  # the naive and aligned paths' policy (aligned_repair: REPAIR)
    inits: list[int]
    widths: list[int | None]  # None: the model's default width
    splits: list[str]
    connections: list[Connection]
    reused: bool = False

    @property
    def kinds(self) -> list[str]:
        return list(self.connections[0].paths)

    def barrier(self, kind: str, split: str, width: int | None = None) -> Stats:
        """The error barrier of one path kind over the pairs at one width."""
        return Stats.of(c.barrier(kind, split) for c in self.connections if c.width == width)

    def headline(self) -> dict[str, dict[str, float]]:
        """Per width (its value, or "default"): each path kind's error barrier over the pairs
        per split, mean and std, named as the sweep run's metrics at that width."""
        return {str(width or "default"): self.barriers(width) for width in self.widths}

    def barriers(self, width: int | None) -> dict[str, float]:
        return {
            f"{kind}.{schema.metric(split, schema.ERROR_BARRIER)}.{stat}": getattr(s, stat)
            for kind in self.kinds
            for split in self.splits
            for s in [self.barrier(kind, split, width)]
            for stat in ("mean", "std")
        }

    def rows(self) -> list[list]:
        """Table rows: width, path kind, split, mean, std, n."""
        return [
            [width or "default", kind, split, s.mean, s.std, s.n]
            for width in self.widths
            for kind in self.kinds
            for split in self.splits
            for s in [self.barrier(kind, split, width)]
        ]

    def plot(self, kind: str = "bars"):
        """`bars`: mean barrier per path kind (one bar per width); `width`: barrier vs width."""
        return plot_width(self) if kind == "width" else plot_bars(self)

    def to_frame(self):
        """One row per pair of inits, width and path kind: the barriers per split."""
        import pandas as pd

        return pd.DataFrame(
            [
                {"width": c.width, "a": c.a, "b": c.b, "path": kind}
                | {split: c.barrier(kind, split) for split in self.splits}
                for c in self.connections
                for kind in c.paths
            ]
        )

    @classmethod
    def from_dict(cls, data: dict) -> Connect:
        connections = [Connection.from_dict(c) for c in data["connections"]]
        return cls(**{**known(cls, data), "connections": connections})


def _with(ctx: Context, *, bn: str | None = None, width: int | None = None) -> Context:
    """The same context with another BatchNorm policy or model width (same store and data)."""
    p = ctx.params
    update = {}
    if bn is not None:
        update["instability"] = p.instability.model_copy(update={"bn": bn})
    if width is not None:
        update["model"] = p.model.model_copy(update={"width": width})
    return dataclasses.replace(ctx, params=p.model_copy(update=update)) if update else ctx


def connect_pairs(
    ctx: Context,
    parent,
    pairs: Sequence[tuple[Context, str, str, str]],
    *,
    kinds: tuple[str, ...] = schema.PAIR_KINDS,
) -> list[Connection]:
    """Each (context, A, B, label): A and B compared as trained and with B aligned to A
    (align.method, align.seed), each path kind a logged pair run under `parent`. All the paths
    are interpolated at once (in the pool of processes, or as Ray tasks)."""
    aligned = [align(c, a_uri, b_uri) for c, a_uri, b_uri, _ in pairs]
    ends, settings = [], []
    for (c, a_uri, b_uri, _), b_aligned in zip(pairs, aligned, strict=True):
        a, b = ctx.store.load_state(a_uri), ctx.store.load_state(b_uri)
        permuted = ctx.store.load_state(b_aligned.uri)
        for kind in kinds:
            end, end_uri = (b, b_uri) if kind == schema.NAIVE else (permuted, b_aligned.uri)
            ends.append((a, end, a_uri, end_uri))
            settings.append(path_settings(_with(c, bn=_BN.get(kind))))
    paths = interpolate_pairs(ctx, [(a, b) for a, b, *_ in ends], settings=settings)
    for pair, (*_, a_uri, end_uri) in zip(paths, ends, strict=True):
        pair.a, pair.b = a_uri, end_uri
    paths_left = iter(paths)
    connections = []
    for (c, a_uri, b_uri, label), b_aligned in zip(pairs, aligned, strict=True):
        logged = {
            kind: log_pair(ctx, parent, f"{kind} {label}".strip(), next(paths_left))
            for kind in kinds
        }
        width = c.params.model.width
        connections.append(
            Connection(a_uri, b_uri, b_aligned.uri, width, b_aligned.max_logit_diff, logged)
        )
    return connections


def connect_two(
    ctx: Context, a_uri: str, b_uri: str, kinds: tuple[str, ...] = schema.PAIR_KINDS
) -> Connection:
    """`lmctrack connect A B` (and `interpolate A B --align`): one run, the paths side by side."""
    with ctx.run(
        f"connect {ctx.params.align.method}",
        params={"a": a_uri, "b": b_uri, "method": ctx.params.align.method},
        tags={schema.KIND: schema.KIND_CONNECT},
    ) as run:
        (connection,) = connect_pairs(ctx, run, [(ctx, a_uri, b_uri, "")], kinds=kinds)
        run.log_input_states([a_uri, b_uri, connection.aligned])
        run.log_metrics(connection.headline())
    return connection


def connect(ctx: Context) -> Connect:
    """`lmctrack connect`: align.inits networks per width (align.widths, or the model's), every
    pair's naive, aligned and aligned+REPAIR barriers; an identical finished sweep is reused."""
    cfg, inst = ctx.params.align, ctx.params.instability
    widths = list(cfg.widths) or [None]
    seeds = sweep_seeds(ctx, cfg.inits)
    paths = (inst.alphas, inst.splits, inst.bn, inst.bn_limit, inst.eval_limit)
    key = ctx.training_hash(ctx.params.seeds, cfg, *paths, "connect")
    with jobs.claimed(ctx, [key]):
        done = jobs.finished(ctx, key)
        if done is not None:
            data = json.loads(ctx.store.run_artifact(done, CONNECT_ARTIFACT).read_text())
            result = Connect.from_dict({**data, "reused": True})
        else:
            runs = {width: train_runs(_with(ctx, width=width), seeds) for width in widths}
            result = _sweep(ctx, key, seeds, runs)
    write_outputs(ctx, result)
    return result


def _sweep(ctx: Context, key: str, seeds, runs: dict) -> Connect:
    cfg, inst = ctx.params.align, ctx.params.instability
    with jobs.recorded(
        ctx,
        f"connect {cfg.method}",
        key=key,
        kind=schema.KIND_CONNECT,
        params={
            "inits": cfg.inits,
            "widths": ",".join(str(w or "default") for w in runs),
            "method": cfg.method,
            "bn": inst.bn,
            "alphas": inst.alphas,
        },
    ) as run:
        pairs = [
            (
                _with(ctx, width=width),
                trained[i].final,
                trained[j].final,
                f"{seeds[i].init}-{seeds[j].init}" + (f" width={width}" if width else ""),
            )
            for width, trained in runs.items()
            for i, j in combinations(range(len(trained)), 2)
        ]
        connections = connect_pairs(ctx, run, pairs)
        result = Connect(
            run_id=run.id,
            model=ctx.model_name,
            method=cfg.method,
            bn=inst.bn,
            inits=[s.init for s in seeds],
            widths=list(runs),
            splits=list(inst.splits),
            connections=connections,
        )
        run.log_input_states([uri for c in connections for uri in (c.a, c.b, c.aligned)])
        for width in result.widths:
            run.log_metrics(result.barriers(width), step=width or 0)
        run.log_json(to_dict(result), CONNECT_ARTIFACT)
        for figure in figures(ctx, result):
            run.log_file(figure, "plots")
    return result


def figures(ctx: Context, result: Connect) -> list:
    """The bar chart, and barrier vs width when there are several widths, as PNG files."""
    from lmctrack.results.plots import save

    folder = ctx.out or ctx.scratch()
    paths = [save(result.plot("bars"), folder / "connect_bars.png")]
    if len(result.widths) > 1:
        paths.append(save(result.plot("width"), folder / "connect_width.png"))
    return paths


def write_outputs(ctx: Context, result: Connect) -> None:
    """With --out: the typed result, a CSV of every path's barriers, metrics JSON and plots."""
    if ctx.out is None:
        return
    ctx.write_output(CONNECT_ARTIFACT, to_dict(result))
    ctx.write_output(
        "connect_metrics.json",
        {
            f"{width or 'default'}.{kind}.{split}.{stat}": value
            for width, kind, split, mean, std, n in result.rows()
            for stat, value in (("mean", mean), ("std", std), ("n", n))
        },
    )
    lines = ["width,a,b,path,split,error_barrier"]
    lines += [
        f"{c.width or ''},{c.a},{c.b},{kind},{split},{c.barrier(kind, split):.6f}"
        for c in result.connections
        for kind in c.paths
        for split in result.splits
    ]
    (ctx.out / "connect.csv").write_text("\n".join(lines) + "\n")
    figures(ctx, result)


def plot_bars(result: Connect):
    """Mean error barrier per path kind, one bar per width, ± std over the pairs; per split."""
    from lmctrack.results.plots import ERROR_BARRIER, _figure

    fig, axes = _figure(cols=len(result.splits))
    kinds, widths = result.kinds, result.widths
    step = 0.8 / len(widths)
    for ax, split in zip(axes[0], result.splits, strict=True):
        for w, width in enumerate(widths):
            stats = [result.barrier(kind, split, width) for kind in kinds]
            ax.bar(
                [k + (w - (len(widths) - 1) / 2) * step for k in range(len(kinds))],
                [s.mean for s in stats],
                step,
                yerr=[s.std for s in stats],
                capsize=3,
                label=f"width {width or 'default'} (n = {stats[0].n} pairs)",
            )
        ax.set_xticks(range(len(kinds)), kinds)
        ax.set_ylabel(f"{split} error barrier")
        ax.legend(fontsize="small")
    fig.suptitle(
        f"{result.model}: {len(result.inits)} inits, {result.method} matching; BatchNorm: "
        f"{result.bn} (aligned_repair: REPAIR)\n{ERROR_BARRIER}",
        fontsize="medium",
    )
    return fig


def plot_width(result: Connect):
    """Error barrier vs width, one line per path kind, mean ± std over the pairs; per split."""
    from lmctrack.results.plots import ERROR_BARRIER, _figure, _lines, _samples

    fig, axes = _figure(cols=len(result.splits))
    for ax, split in zip(axes[0], result.splits, strict=True):
        series = [
            (kind, width, result.barrier(kind, split, width))
            for kind in result.kinds
            for width in result.widths
        ]
        _lines(ax, series, label=str)
        ax.set_xscale("log", base=2)
        ax.set_xticks(result.widths, [str(w) for w in result.widths])
        ax.set_xlabel("width (model.width)")
        ax.set_ylabel(f"{split} error barrier")
        ax.set_title(f"{split}; mean ± std over {_samples(series)}", fontsize="medium")
        ax.legend(fontsize="small")
    fig.suptitle(
        f"{result.model}: barrier vs width ({result.method} matching; BatchNorm: {result.bn})\n"
        f"{ERROR_BARRIER}",
        fontsize="medium",
    )
    return fig
