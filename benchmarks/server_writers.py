"""The tracking server under N concurrent writers, each a separate process with a Store client
registering states the way a training does: its W0 first (not timed), then runs that each register
one keyed state with that W0 as parent and the dataset as input. Counted afterwards: the versions
the registry holds, their distinct keys and lineage (nothing lost, nothing registered twice).
Used by benchmarks/cluster.py (on the machine's shared cores) and benchmarks/capacity.py (the
server on a core of its own).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

# What a writer registers, as a training does (workflows.jobs.register): the network's weights
# with its architecture (so the pyfunc files too), the dataset and its W0 as lineage, a work key.
ARCHITECTURE = {"name": "mnist1d_cnn", "width": None, "num_classes": 10, "input_shape": [1, 40]}


def _writer(tracking_uri: str, writer: int, each: int, tag: str, start, out) -> None:
    """One client: its W0 registered (not timed), then `each` runs, each registering one keyed
    state made from that W0, on the same dataset; latencies to `out`."""
    torch.set_num_threads(1)
    from lmctrack.config.params import ModelConfig
    from lmctrack.engine.models import build_model
    from lmctrack.engine.state import State
    from lmctrack.store import Store

    store = Store(tracking_uri)
    shape = tuple(ARCHITECTURE["input_shape"])
    state = State(build_model(ModelConfig(), 10, shape, writer).state_dict())

    def register(name: str, role: str, step: int, key: str, parents: list[str]) -> str:
        with store.run("bench_writers", name) as run:
            uri = run.save_state(
                state,
                model_name="bench_writers",
                role=role,
                step=step,
                tags={"bench": tag if parents else "parents"},
                parents=parents,
                dataset=dataset(tag),
                key=f"{tag}-{key}",
                architecture=ARCHITECTURE,
            )
        store.settle()  # a registration counts once all of it is stored
        return uri

    try:
        w0 = register(f"w{writer}-init", "init", 0, f"{writer}:init", [])
        start.wait()
        latencies = []
        for i in range(each):
            began = time.perf_counter()
            register(f"w{writer}-{i}", "final", i, f"{writer}-{i}:final", [w0])
            latencies.append(time.perf_counter() - began)
    except BaseException as error:
        start.abort()  # the measurement stops at once, not at its timeout
        out.put(f"writer {writer} failed: {error!r}"[:2000])
        raise
    out.put(latencies)


def dataset(tag: str):
    """The dataset every writer's runs trained on (one per measurement)."""
    from lmctrack.store.inputs import DataRef

    return DataRef("mnist1d", f"bench-{tag}")


def _received(out) -> list[float]:
    got = out.get(timeout=600)
    if isinstance(got, str):
        raise SystemExit(got)
    return got


def core_ticks() -> dict[int, tuple[int, int]]:
    """Per core: (busy, all) clock ticks since boot, from /proc/stat."""
    ticks = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name != "cpu":
            values = [int(x) for x in fields[:8]]
            ticks[int(name[3:])] = (sum(values) - values[3] - values[4], sum(values))
    return ticks


def busy(before: dict[int, tuple[int, int]]) -> dict[int, float]:
    """Per core, the fraction of the time since `before` it was busy (any process)."""
    after = core_ticks()
    return {c: (after[c][0] - b) / max(1, after[c][1] - t) for c, (b, t) in before.items()}


@dataclass
class Writers:
    """N writers' registrations, timed from their common start, and what the registry holds."""

    n: int
    each: int
    seconds: float
    latencies: list[float]
    found: int  # versions with this measurement's tag
    keys: int  # distinct state keys among them
    linked: int  # those whose parents name their writer's W0
    busy: dict[int, float]  # per core, the fraction of the timed window it was busy
    registry: int  # versions of the benchmark's model afterwards, earlier measurements' included

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds

    def p95(self) -> float:
        return statistics.quantiles(self.latencies, n=20)[18]

    def line(self) -> str:
        return (
            f"N={self.n:>2}: {self.rate:5.1f} registrations/s, p50 "
            f"{statistics.median(self.latencies):.2f} s, p95 {self.p95():.2f} s; registry holds "
            f"{self.found} of {self.n * self.each} ({self.keys} distinct keys, {self.linked} "
            f"with their W0 as parent; {self.registry} versions in the registry after)"
        )


def writers(tracking_uri: str, n: int, each: int) -> Writers:
    """N forked writers (this process's CPU affinity theirs) registering through the server,
    all started together once each has registered its W0."""
    from lmctrack.store import Store

    ctx = mp.get_context("fork")
    tag = f"n{n}-{time.time_ns()}"
    store = Store(tracking_uri)  # MLflow imported once, before forking
    # The dataset recorded once first, as a sweep's earlier runs have: MLflow's server inserts a
    # dataset new to an experiment without a lock, and writers recording it at the same moment
    # fail (PostgreSQL: duplicate key "dataset_pk"), a race this measurement is not about.
    with store.run("bench_writers", "dataset") as run:
        run.log_dataset(dataset(tag))
    store.settle()
    start, out = ctx.Barrier(n + 1), ctx.Queue()
    procs = [
        ctx.Process(target=_writer, args=(tracking_uri, w, each, tag, start, out)) for w in range(n)
    ]
    for p in procs:
        p.start()
    try:
        start.wait(timeout=600)  # every writer's W0 registered
    except threading.BrokenBarrierError:
        raise SystemExit(str(out.get(timeout=10))) from None
    began, ticks = time.perf_counter(), core_ticks()
    latencies = [x for _ in procs for x in _received(out)]
    seconds, cores = time.perf_counter() - began, busy(ticks)
    for p in procs:
        p.join()
    every = store.client.search_model_versions("name = 'bench_writers'", max_results=10000)
    key = "lmctrack.state_key"
    found = [v for v in every if v.tags.get("lmctrack.bench") == tag]
    w0 = {v.tags.get(key): f"models:/bench_writers/{v.version}" for v in every}

    def linked(version) -> bool:  # key {tag}-{writer}-{i}:final, its W0's {tag}-{writer}:init
        writer = version.tags[key].removeprefix(f"{tag}-").split("-")[0]
        return version.tags.get("lmctrack.parents") == json.dumps([w0.get(f"{tag}-{writer}:init")])

    keys = {v.tags.get(key) for v in found}
    with_w0 = sum(map(linked, found))
    return Writers(n, each, seconds, latencies, len(found), len(keys), with_w0, cores, len(every))


def measure_writers(tracking_uri: str, counts: list[int], each: int) -> None:
    print(f"tracking server, each writer {each} runs x 1 registered state (with lineage):")
    for n in counts:
        load_before = os.getloadavg()[0]
        result = writers(tracking_uri, n, each)
        print(f"  {result.line()}; load {load_before:.1f} -> {os.getloadavg()[0]:.1f}")
