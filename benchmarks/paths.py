"""Interpolation paths: one pair of the default network (params.yaml), 30 alphas, train and test
splits, bn=reset, evaluated one alpha at a time (the reference loop) and in stacked passes
(lmctrack.engine.batched), interleaved, in this process. Target: batched >= 3x faster; curves equal
to 1e-6. Peak memory of each mode is measured in a forked child (growth of its peak RSS).

    python benchmarks/paths.py [--quick] [--repeats R]
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import statistics

from common import begin, interleaved, median_ratio, timed

from lmctrack.engine.data import load_dataset
from lmctrack.engine.interpolate import linear_path
from lmctrack.engine.models import build_model
from lmctrack.engine.state import State


def peak_growth_mb(fn) -> float:
    """Peak RSS growth (MB) of a forked child running fn: what fn holds at its worst."""

    def child(out) -> None:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        fn()
        out.put((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)

    ctx = mp.get_context("fork")
    out = ctx.Queue()
    process = ctx.Process(target=child, args=(out,))
    process.start()
    growth = out.get()
    process.join()
    return growth


def main() -> None:
    args, params = begin(__doc__)
    data = load_dataset(params.data)
    alphas = 6 if args.quick else 30
    states = [
        State(build_model(params.model, data.num_classes, data.input_shape, s).state_dict())
        for s in (0, 1)
    ]

    def path(batched: bool):
        template = build_model(params.model, data.num_classes, data.input_shape, 0)
        kw = {"alphas": alphas, "splits": ("train", "test"), "bn": "reset", "batched": batched}
        return linear_path(template, *states, data, **kw)

    curves = {b: path(b).curves for b in (False, True)}  # warm-up, and the equality check
    worst = max(
        abs(x - y)
        for split in curves[False]
        for metric in ("error", "loss")
        for x, y in zip(curves[False][split][metric], curves[True][split][metric], strict=True)
    )
    repeats = args.repeats or 3
    loop, stacked = interleaved(
        lambda: timed(lambda: path(False))[0], lambda: timed(lambda: path(True))[0], repeats
    )
    print(
        f"per-alpha loop / stacked passes: {median_ratio(loop, stacked):.2f}x "
        f"(loop {statistics.median(loop):.2f} s, stacked {statistics.median(stacked):.2f} s; "
        f"{alphas} alphas, train {data.num_examples('train')} + test "
        f"{data.num_examples('test')} examples, bn=reset; medians of {repeats} pairs)"
    )
    print(f"largest difference of an error or loss between the modes: {worst:.1e}")
    one = peak_growth_mb(lambda: path(False))
    many = peak_growth_mb(lambda: path(True))
    print(
        f"peak RSS growth: stacked {many:.0f} MB, per-alpha loop {one:.0f} MB "
        f"(the dataset, {sum(t.numel() * 4 for t in (data.train.x, data.test.x)) / 2**20:.0f} "
        "MB, is already in memory in both)"
    )


if __name__ == "__main__":
    main()
