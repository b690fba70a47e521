"""Collect the pipeline's results into one human-readable report and one metrics file for DVC."""

from __future__ import annotations

import json
from pathlib import Path


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _md_table(columns: list[str], rows: list[list]) -> list[str]:
    fmt = [f"{v:.4f}" if isinstance(v, float) else str(v) for row in rows for v in row]
    cells = [fmt[i : i + len(columns)] for i in range(0, len(fmt), len(columns))]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(row) + " |" for row in cells]


Table = tuple[list[str], list[list]]


def instability_table(rows: list[dict]) -> Table:
    """Figure 3 as a table: the error barrier per rewind step and split, with the verdict."""
    columns = ["k", "split", "n", "mean", "std", "median", "endpoint error", "stable"]
    cells = [
        [
            f"{r['k']}it",
            r["split"],
            r["n"],
            r["mean"],
            r["std"],
            r["median"],
            r["endpoint_error"],
            "yes" if r["stable"] else "no",
        ]
        for r in rows
    ]
    return columns, cells


def imp_table(result: dict) -> Table:
    """Table 2: full, IMP, random prune, random reinit test accuracy, delta, matching."""
    columns = [
        "level",
        "density",
        "full",
        "IMP",
        "random prune",
        "random reinit",
        "delta",
        "matching",
    ]
    keys = ("level", "density", "full", "imp", "random_prune", "random_reinit", "delta")
    return columns, [[r[k] for k in keys] + ["Y" if r["matching"] else "N"] for r in result["rows"]]


def basin_table(result: dict) -> Table:
    """Consecutive IMP levels interpolated: the test error barrier and their distance."""
    columns = ["levels", "error barrier", "l2 distance"]
    cells = [
        [
            f"{b['levels'][0]}->{b['levels'][1]}",
            b["summary"]["test.error_barrier"],
            b["summary"]["distance.l2"],
        ]
        for b in result["same_basin"]
    ]
    return columns, cells


def first_stable(rows: list[dict], split: str = "test") -> int | None:
    """The earliest rewind step from which every later k is stable (mean barrier < threshold)."""
    ks = sorted((r["k"], r["stable"]) for r in rows if r["split"] == split)
    for i, (k, _) in enumerate(ks):
        if all(stable for _, stable in ks[i:]):
            return k
    return None


def report(outputs: Path, out: Path) -> dict:
    """Write report.md and summary.json from the JSON files the pipeline stages wrote."""
    lines = ["# lmctrack report", ""]
    summary: dict[str, float | int | None] = {}
    train = _read(outputs / "train" / "train.json")
    if train:
        # registered in training order, so version order is step order
        states = sorted(train["states"].items(), key=lambda item: int(item[1].rsplit("/", 1)[1]))
        lines += ["## Trained states", ""] + [f"- {name}: `{uri}`" for name, uri in states] + [""]
    forks = sorted(
        (f for f in (_read(p) for p in outputs.glob("fork/*/fork.json")) if f), key=lambda f: f["k"]
    )
    if forks:
        lines += [
            "## Forks (Algorithm 1): error barrier between copies",
            "",
            f"Barrier: {forks[0]['definitions']['error_barrier']}; BatchNorm policy: {forks[0]['bn']}.",
            "",
        ]
        lines += _md_table(
            ["k", "copies", "test barrier mean", "test barrier std"],
            [
                [
                    f["k"],
                    len(f["copies"]),
                    f["summary"]["test.error_barrier.mean"],
                    f["summary"]["test.error_barrier.std"],
                ]
                for f in forks
            ],
        ) + [""]
    sweep = _read(outputs / "instability" / "instability.json")
    if sweep:
        k = first_stable(sweep["rows"])
        summary["first_stable_k_test"] = k
        lines += [
            "## Instability sweep (Figure 3)",
            "",
            f"{len(sweep['inits'])} inits x {len(sweep['copy_seeds'])} copies per state; {sweep['barrier']}; "
            f"bn={sweep['bn']}; stable when the mean barrier < {sweep['threshold']:.0%}. "
            f"Stable on test from k = {k}.",
            "",
            "![instability](../instability/instability.png)",
            "",
        ]
        lines += _md_table(*instability_table(sweep["rows"])) + [""]
        for r in sweep["rows"]:
            summary[f"instability.k{r['k']}.{r['split']}.mean"] = r["mean"]
    imp = _read(outputs / "imp" / "imp.json")
    if imp:
        lines += [
            f"## IMP rewinding to k = {imp['k']} (Table 2 style; test accuracy; {imp['matching_rule']})",
            "",
            "![imp](../imp/imp.png)",
            "",
        ]
        lines += _md_table(*imp_table(imp)) + [""]
        lines += ["Same basin? Consecutive levels interpolated (test error barrier):", ""]
        lines += _md_table(*basin_table(imp)) + [""]
        matching = [r["density"] for r in imp["rows"] if r["matching"]]
        summary["imp.sparsest_matching_density"] = min(matching) if matching else None
        for r in imp["rows"]:
            summary[f"imp.level{r['level']}.accuracy"] = r["imp"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary
