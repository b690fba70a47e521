"""How much lmctrack costs on top of PyTorch, on the default network (params.yaml).

1. Throughput of the training engine (lmctrack.engine.train.train) against a minimal hand-written
loop on
   the same in-memory tensors, batch size, optimizer and randperm batching, in one process with one
   thread, interleaved. Target: engine/bare >= 0.9.
2. The share of `lmctrack train`'s wall time spent in tracking and registration: the train workflow
   runs in-process against a temporary sqlite store whose Store/Run methods are timed. Target: the
   store calls take <= 5%. Importing MLflow (per command) and creating a store's schema (once per
   project) are reported beside it, and the share counting the import too.
3. The seconds lmctrack.store.preload() saves a command: from a fresh process's start to its store
   answering, with MLflow imported when the store opens or in the background from the start.

    python benchmarks/engine_vs_bare.py [--quick] [--steps N] [--repeats R] [--share-only]
"""

from __future__ import annotations

import argparse
import functools
import importlib
import inspect
import math
import statistics
import subprocess
import sys
import time
from collections import defaultdict

import torch
from common import (
    PARAMS_FILE,
    default_params,
    interleaved,
    machine,
    median_ratio,
    scratch,
    timed,
)
from torch import nn

from lmctrack.config.params import Params
from lmctrack.engine.data import TensorDataset, load_dataset
from lmctrack.engine.models import build_model
from lmctrack.engine.train import Noise, train
from lmctrack.execution.progress import Board


def bare_loop(model: nn.Module, data: TensorDataset, params: Params, steps: int) -> None:
    """The smallest loop that trains like the engine: randperm per epoch, slices of it, SGD."""
    cfg = params.train
    x, y = data.train.x, data.train.y
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    loss_fn = nn.CrossEntropyLoss()
    batch, ipe = cfg.batch_size, math.ceil(len(y) / cfg.batch_size)
    generator = torch.Generator().manual_seed(params.seeds.data_order)
    for t in range(steps):
        b = t % ipe
        if b == 0:
            perm = torch.randperm(len(y), generator=generator)
        idx = perm[b * batch : (b + 1) * batch]
        loss = loss_fn(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()


def engine_loop(model: nn.Module, data: TensorDataset, params: Params, steps: int) -> None:
    """The engine as `lmctrack train` drives it, progress reports included (to a silent board)."""
    board = Board(None)
    noise = Noise(params.seeds.data_order, params.seeds.augment)
    train(
        model,
        data,
        params.train,
        start=0,
        stop=steps,
        noise=noise,
        progress=lambda step, metrics: board.update("train", step, metrics),
    )


def throughput(loop, data: TensorDataset, params: Params, steps: int) -> float:
    model = build_model(params.model, data.num_classes, data.input_shape, params.seeds.init)
    seconds, _ = timed(lambda: loop(model, data, params, steps))
    return steps / seconds


def compare_engine(params: Params, steps: int, repeats: int) -> None:
    data = load_dataset(params.data)
    for loop in (bare_loop, engine_loop):  # warm-up: the first optimizer imports torch._dynamo
        throughput(loop, data, params, 20)
    engine, bare = interleaved(
        lambda: throughput(engine_loop, data, params, steps),
        lambda: throughput(bare_loop, data, params, steps),
        repeats,
    )
    print(
        f"engine/bare throughput ratio: {median_ratio(engine, bare):.2f} "
        f"(engine {statistics.median(engine):.0f} it/s, bare {statistics.median(bare):.0f} it/s; "
        f"medians of {repeats} interleaved runs of {steps} steps)"
    )


# --- tracking share -----------------------------------------------------------------------------


class StoreTimer:
    """Wall time spent inside Store and Run methods (outermost calls only, so nothing twice)."""

    def __init__(self, *classes: type) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._depth = 0
        for cls in classes:
            for name, fn in list(vars(cls).items()):
                if inspect.isfunction(fn):
                    setattr(cls, name, self._timed(fn, f"{cls.__name__}.{name}"))

    def _timed(self, fn, label: str):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            self._depth += 1
            began = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self.seconds[label] += time.perf_counter() - began

        return wrapper

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


def create_store(uri: str) -> float:
    """Create a store's schema in another process (the first command in a project pays this)."""
    code = f"from lmctrack.store import Store; Store({uri!r})"
    seconds, _ = timed(lambda: subprocess.run([sys.executable, "-c", code], check=True))
    return seconds


# Opening a sqlite store imports MLflow's SQL backend: a library's import, paid once per command
# (`import lmctrack.store` alone does not import MLflow; its Store does).
MLFLOW_MODULES = (
    "lmctrack.store.core",
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.model_registry.sqlalchemy_store",
)


def tracking_share(overrides: list[str]) -> None:
    """`lmctrack train` in-process (quiet board) against a new store whose schema exists."""
    seconds_import, _ = timed(lambda: [importlib.import_module(m) for m in MLFLOW_MODULES])
    from lmctrack.store import Run, Store
    from lmctrack.workflows.common import make_context
    from lmctrack.workflows.training_run import train_run

    timer = StoreTimer(Store, Run)
    uri = f"sqlite:///{scratch('store') / 'mlflow.db'}"
    seconds_schema = create_store(uri)
    params = default_params(*overrides, f"store.tracking_uri={uri}")

    def command():
        ctx = make_context(params, board=Board(None))
        return train_run(ctx)

    wall, run = timed(command)
    store_seconds = timer.total
    assert not run.reused and len(run.states) >= 2, "the benchmark must train and register"
    pyfunc = "with" if Store(uri).describe(run.final).architecture else "WITHOUT"
    print(
        f"tracking share of lmctrack train wall time: {store_seconds / wall:.1%} "
        f"(store calls {store_seconds:.2f} s of {wall:.1f} s; {params.train.steps} steps, "
        f"{len(run.states)} states registered {pyfunc} their pyfunc MLmodel)"
    )
    for label, seconds in sorted(timer.seconds.items(), key=lambda kv: -kv[1])[:4]:
        print(f"  {label}: {seconds:.3f} s")
    with_import = (store_seconds + seconds_import) / (wall + seconds_import)
    print(
        f"importing MLflow and its SQL backend (once per command, not in the share above): "
        f"{seconds_import:.1f} s; counting it, MLflow takes {with_import:.1%} of the command"
    )
    print(
        f"first command in a project: a fresh process creating the store's schema took "
        f"{seconds_schema:.1f} s (interpreter start and imports included)"
    )


# What `lmctrack train` does before it first needs the store, in a fresh process: MLflow's import
# either waits until then or, started by lmctrack.store.preload() first, overlaps with the rest.
STARTUP = """
import sys, time
from pathlib import Path
began = time.perf_counter()
import lmctrack.store
from lmctrack.config.params import load_params  # pydantic first: the thread imports it too
if sys.argv[1] == "preload":
    lmctrack.store.preload()
from lmctrack.workflows.common import make_context
from lmctrack.execution.progress import Board
params = load_params(Path(sys.argv[2]), sys.argv[3:])
ctx = make_context(params, board=Board(None))
ctx.store.find_run(ctx.model_name, "0")
print(time.perf_counter() - began)
"""


def import_overlap(overrides: list[str], repeats: int) -> None:
    """Seconds from a command's start to its store answering, with and without preload()."""
    uri = f"sqlite:///{scratch('overlap') / 'mlflow.db'}"
    create_store(uri)
    params = default_params(*overrides)
    args = [str(PARAMS_FILE), *overrides, f"data.root={params.data.root}"]
    args.append(f"store.tracking_uri={uri}")

    def startup(mode: str) -> float:
        argv = [sys.executable, "-c", STARTUP, mode, *args]
        return float(subprocess.run(argv, check=True, capture_output=True, text=True).stdout)

    preloaded, plain = interleaved(lambda: startup("preload"), lambda: startup("plain"), repeats)
    print(
        f"command start to store ready: {statistics.median(plain):.2f} s importing MLflow when "
        f"the store opens, {statistics.median(preloaded):.2f} s with preload() "
        f"(saves {statistics.median(p - q for p, q in zip(plain, preloaded)):.2f} s; medians of "
        f"{repeats} interleaved pairs)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few steps: a smoke run")
    parser.add_argument("--steps", type=int, help="steps per engine/bare run (default 1000)")
    parser.add_argument("--repeats", type=int, help="interleaved engine/bare pairs (default 5)")
    parser.add_argument("--share-only", action="store_true", help="only the tracking share")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(machine())
    steps = args.steps or (200 if args.quick else 1000)
    if not args.share_only:
        compare_engine(default_params(), steps, args.repeats or (3 if args.quick else 5))
    tracking_share(["train.steps=500it"] if args.quick else [])
    import_overlap([], args.repeats or (3 if args.quick else 5))


if __name__ == "__main__":
    main()
