"""The tables the CLI prints and the report writes, from typed results; and the pipeline's report:
one human-readable page (report.md) and one metrics file for DVC (summary.json)."""

from __future__ import annotations

import json
from pathlib import Path

from lmctrack.config import schema
from lmctrack.results.paper import (
    Fork,
    Imp,
    SparseSweep,
    Sweep,
    sparse_from_dict,
    sweep_from_dict,
)
from lmctrack.workflows.training_run import in_step_order

Table = tuple[list[str], list[list]]


def _yes(flag: bool | None) -> str:
    return "-" if flag is None else "yes" if flag else "no"


def _pm(stats) -> str:
    return f"{stats.mean:.4f} ± {stats.std:.4f}"


def fork_table(fork: Fork, threshold: float) -> Table:
    """Algorithm 1's pairs: the error barrier per split and the verdict per pair."""
    splits = list(fork.pairs[0].curves) if fork.pairs else []
    columns = ["pair (seeds)", *[f"{s} error barrier" for s in splits], "stable (test)"]
    rows = [
        [
            f"{p.seeds[0]}-{p.seeds[1]}" if p.seeds else "-",
            *[p.error_barrier(s) for s in splits],
            _yes(schema.stable(p.error_barrier("test"), threshold) if "test" in splits else None),
        ]
        for p in fork.pairs
    ]
    return columns, rows


def soup_words(fork: Fork) -> str:
    """The copies' soup against the copies, for a fork table's title ("" before soups)."""
    if fork.soup_error is None or not fork.copy_errors:
        return ""
    n = schema.soup_metrics(fork.soup_error, fork.copy_errors)
    return (
        f"; uniform soup test error {n[schema.SOUP_ERROR]:.4f}, copies mean "
        f"{n[schema.COPIES_MEAN_ERROR]:.4f}, best {n[schema.COPIES_BEST_ERROR]:.4f}"
    )


def sweep_table(sweep: Sweep) -> Table:
    """Figure 3 as a table: the error barrier per rewind step and split, and the verdict; beside
    it the test error of the copies' uniform soup, of the mean and best copy, and whether the
    soup matches the mean copy."""
    columns = ["k", "split", "n", "mean", "std", "median", "endpoint error", "stable", "Wk error"]
    columns += ["soup error", "mean copy", "best copy", "soup matches"]
    soups = {s.k: s for s in sweep.soups}
    rows = [
        [
            f"{r.k}it",
            r.split,
            r.barrier.n,
            r.barrier.mean,
            r.barrier.std,
            r.barrier.median,
            r.endpoint_error,
            _yes(r.stable),
            sweep.wk_errors[r.k].mean if r.k in sweep.wk_errors else "-",
            *_soup_cells(soups.get(r.k)),
        ]
        for r in sweep.rows
    ]
    return columns, rows


def _soup_cells(soup) -> list:
    if soup is None:
        return ["-"] * 4
    return [soup.soup.mean, soup.mean_copy.mean, soup.best_copy.mean, _yes(soup.matching)]


def imp_table(imp: Imp) -> Table:
    """Table 2: test accuracy (mean ± std over replicates) of IMP and the baselines at each
    density, the drop vs dense, and the matching verdicts."""
    columns = [
        "level",
        "density",
        "dense",
        *[schema.METHOD_LABELS[m] for m in schema.METHODS],
        "IMP drop",
        "IMP matching",
        "within 1 std",
        "baselines matching",
    ]
    rows = [
        [
            r.level,
            r.density,
            _pm(r.dense),
            *[_pm(r.accuracy[m]) if m in r.accuracy else "-" for m in schema.METHODS],
            r.drop,
            _yes(r.matching),
            _yes(r.within_one_std),
            ", ".join(
                f"{schema.METHOD_LABELS[m]}: {_yes(v)}" for m, v in r.baselines_matching.items()
            )
            or "-",
        ]
        for r in imp.rows
    ]
    return columns, rows


def basin_table(imp: Imp) -> Table:
    """Consecutive IMP levels interpolated: the test error barrier and their distance."""
    rows = [
        [f"{i}->{i + 1}", p.error_barrier("test") if "test" in p.curves else "-", p.distances["l2"]]
        for i, p in enumerate(imp.same_basin)
    ]
    return ["levels", "test error barrier", "l2 distance"], rows


def sparse_table(sweep: SparseSweep) -> Table:
    """Figures 6 and 7 as a table: per density and k, the barrier and the error of the copies."""
    columns = [
        "density",
        "k",
        "split",
        "n",
        "barrier mean",
        "std",
        "stable",
        "test error",
        "drop",
        "matching",
    ]
    rows = [
        [
            r.density,
            f"{r.k}it",
            r.split,
            r.barrier.n,
            r.barrier.mean,
            r.barrier.std,
            _yes(r.stable),
            _pm(r.test_error),
            r.drop,
            _yes(r.matching),
        ]
        for r in sweep.rows
    ]
    return columns, rows


def earliest_table(sweep: SparseSweep) -> Table:
    """Figure 9: the median over samples of the earliest stable / matching rewind step."""
    rows = [
        [e.density, e.samples, _k(e.stable_from_k), _k(e.matching_from_k)] for e in sweep.earliest
    ]
    return ["density", "samples", "stable from k", "matching from k"], rows


def _k(k: float | None) -> str:
    return "never" if k is None else f"{k:g}it"


def _md_table(columns: list[str], rows: list[list]) -> list[str]:
    cells = [[f"{v:.4f}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(row) + " |" for row in cells]


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def report(outputs: Path, out: Path) -> dict:
    """Write report.md and summary.json from the JSON files the pipeline stages wrote."""
    lines = ["# lmctrack report", ""]
    summary: dict[str, float | int | bool | str | None] = {}
    sparse = _read(outputs / "sparse" / "sparse.json")
    if sparse:
        s = sparse_from_dict(sparse)
        summary["claim_holds"] = s.claim_holds
        lines += [
            "## The paper's claim",
            "",
            f"**{s.claim}**",
            "",
            f"({schema.DEFINITIONS['stable']}; {schema.DEFINITIONS['matching']}.)",
            "",
        ]
    train = _read(outputs / "train" / "train.json")
    if train:
        lines += ["## Trained states", ""]
        lines += [f"- {name}: `{uri}`" for name, uri in in_step_order(train["states"])] + [""]
    sweep = _read(outputs / "instability" / "instability.json")
    if sweep:
        w = sweep_from_dict(sweep)
        k = w.earliest_stable()
        summary["dense.stable_from_k"] = k
        lines += [
            "## Dense instability vs rewind step (Figure 3) and the error of Wk (Figure 11)",
            "",
            f"{len(w.inits)} inits x {len(w.copy_seeds)} copies (every pair a sample); "
            f"{schema.DEFINITIONS[schema.ERROR_BARRIER]}; BatchNorm: {w.bn}; stable when the mean "
            f"barrier < {w.threshold:.0%}. Stable on test from k = {k}.",
            "",
            "![instability](../instability/instability.png) ![Wk error](../instability/wk_error.png)",
            "",
            *_md_table(*sweep_table(w)),
            "",
        ]
        claim, holds = w.soup_claim()
        summary["soup_claim_holds"] = holds
        lines += [
            "## What stability buys: the soup of the copies (Wortsman et al. 2022)",
            "",
            f"**{claim}**",
            "",
            f"({schema.DEFINITIONS['soup']}; test error over inits, in the table above.)",
            "",
            "![soup](../instability/soup.png)",
            "",
        ]
        for r in w.rows:
            summary[f"dense.k{r.k}.{r.split}.barrier_mean"] = r.barrier.mean
    imp = _read(outputs / "imp" / "imp.json")
    if imp:
        i = Imp.from_dict(imp)
        matching = [r.density for r in i.rows if r.matching]
        summary["imp.sparsest_matching_density"] = min(matching) if matching else None
        lines += [
            f"## IMP rewinding to k = {i.k} vs random pruning and random reinitialization (Table 2, Figure 5)",
            "",
            f"Test accuracy, mean ± std over n = {i.replicates} replicates (each with its own "
            f"SGD noise per level). Matching: {i.matching_rule}.",
            "",
            "![imp](../imp/imp.png)",
            "",
            *_md_table(*imp_table(i)),
            "",
        ]
        if i.same_basin:
            lines += ["Same basin? Consecutive levels of replicate 0 interpolated:", ""]
            lines += _md_table(*basin_table(i)) + [""]
        for r in i.rows:
            summary[f"imp.level{r.level}.drop"] = r.drop
    if sparse:
        lines += [
            "## IMP subnetworks vs rewind step (Figures 6, 7 and 9)",
            "",
            f"Dense test error (mean over inits): {s.dense_error.mean:.4f}; BatchNorm: {s.bn}.",
            "",
            "![barrier](../sparse/sparse_instability.png) ![error](../sparse/sparse_error.png) "
            "![earliest](../sparse/earliest.png)",
            "",
            *_md_table(*sparse_table(s)),
            "",
            *_md_table(*earliest_table(s)),
            "",
        ]
        for e in s.earliest:
            summary[f"sparse.level{e.level}.stable_from_k"] = e.stable_from_k
            summary[f"sparse.level{e.level}.matching_from_k"] = e.matching_from_k
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary
