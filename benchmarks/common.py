"""What both benchmarks share: the project's default params, the dataset ready on disk, timing.

The machine is small and shared, so every comparison is run as interleaved pairs and reported as
medians: a load spike from other work then hits one pair, not one side of the comparison.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

from lmctrack.config.params import Params, load_params
from lmctrack.engine.data import generate_mnist1d, mnist1d_file
from lmctrack.execution.local import usable_cores

PARAMS_FILE = Path(__file__).resolve().parents[1] / "params.yaml"
_WORKDIR = tempfile.TemporaryDirectory(prefix="lmctrack-bench-")  # removed when the run exits


def scratch(name: str) -> Path:
    """A folder of this run's own, under a temporary directory (the data, the store)."""
    path = Path(_WORKDIR.name) / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_params(*overrides: str) -> Params:
    """The project's params.yaml (what `lmctrack train` uses), the data staged in a temp root.

    MNIST-1D is generated once here and written where the loader looks, so the runs measured
    below read it from disk as a user's second command would, instead of regenerating it (~10 s).
    """
    params = load_params(PARAMS_FILE, list(overrides))
    if params.data.name != "mnist1d":
        return params
    root = _staged_mnist1d(params.data.num_samples)
    return load_params(PARAMS_FILE, [*overrides, f"data.root={root}"])


@functools.cache
def _staged_mnist1d(num_samples: int) -> Path:
    root = scratch("data")
    path = mnist1d_file(root, num_samples)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(generate_mnist1d(num_samples), str(path))
    return root


def machine() -> str:
    """The cores and how busy they were: the numbers below mean little without it."""
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"machine: {usable_cores()} usable cores, load average {load} (1, 5, 15 min) at start"


def begin(doc: str) -> tuple[argparse.Namespace, Params]:
    """A benchmark of interpolation paths started: its --quick and --repeats parsed (the first
    paragraph of `doc` as the help), one thread, the machine printed, the default params."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer alphas: a smoke run")
    parser.add_argument("--repeats", type=int, help="interleaved pairs (default 3)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(machine())
    return args, default_params()


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    began = time.perf_counter()
    result = fn()
    return time.perf_counter() - began, result


def interleaved(
    a: Callable[[], float], b: Callable[[], float], repeats: int
) -> tuple[list[float], list[float]]:
    """Run a and b `repeats` times each, alternating which goes first; returns both samples."""
    samples_a, samples_b = [], []
    for r in range(repeats):
        first, second = (a, b) if r % 2 == 0 else (b, a)
        x, y = first(), second()
        samples_a.append(x if first is a else y)
        samples_b.append(y if first is a else x)
    return samples_a, samples_b


def median_ratio(top: list[float], bottom: list[float]) -> float:
    """Median of the per-pair ratios: each pair ran back to back under the same load."""
    return statistics.median(t / b for t, b in zip(top, bottom, strict=True))
