"""The cost of scaling out, on this machine's loopback (deploy/services.py starts everything):

1. The reduced instability sweep (tests/conftest.py's tiny params: MNIST-1D with 1000 examples,
   100 steps, 2 inits x 2 copies x 2 rewind steps = 10 trainings) as a user runs it:
   `lmctrack instability` with runner.backend=ray against a Ray head with the machine's cores
   and an MLflow server on PostgreSQL, vs the local process pool on a sqlite store. Interleaved
   pairs after an untimed one, each on fresh seeds so nothing is reused; throughput ratio =
   local time / Ray time (goal >= 0.9).
2. The tracking server under N concurrent writers (separate processes, each a Store client):
   every writer opens runs and registers small states with keys; registrations per second, p50
   and p95 latency, and a count of what the registry holds afterwards (no lost writes).

    python benchmarks/cluster.py [--quick] [--repeats R] [--writers 8,32] [--each K]
                                 [--steps 100it,400it]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "deploy"))
sys.path.insert(0, str(ROOT / "tests"))
import services  # noqa: E402
from common import machine, scratch  # noqa: E402
from conftest import TINY_SAMPLES, tiny_params  # noqa: E402

from lmctrack.workflows.datasets import write_mnist1d  # noqa: E402

TRAININGS = 10  # 2 inits trained to T, then 2 inits x 2 rewind steps x 2 copies


def project(name: str, data_root: Path, store: dict, runner: dict | None) -> Path:
    folder = scratch(name)
    params = {**tiny_params(data_root), "store": store}
    if runner:
        params["runner"] = runner
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return folder


def sweep(folder: Path, seed: int, on_ray: bool, steps: str) -> float:
    """Wall time of `lmctrack instability` in the folder on fresh seeds; with on_ray, it must
    have trained on Ray."""
    argv = [sys.executable, "-m", "lmctrack", "instability", "-q", "--set", f"seeds.init={seed}"]
    argv += ["--set", f"train.steps={steps}"]
    env = {**os.environ, **services.RAY_LOOPBACK}
    began = time.perf_counter()
    done = subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"lmctrack instability failed in {folder}:\n{done.stderr[-3000:]}")
    if on_ray and "runner.backend=ray: " not in done.stderr:
        raise SystemExit("the sweep did not train on Ray: jobs.train_all must call run_configured")
    return seconds


def pairs(local: Path, remote: Path) -> list[tuple[str, Path]]:
    return [("local", local), ("ray", remote)]


def measure_sweeps(repeats: int, ray_address: str, tracking_uri: str, steps: list[str]) -> None:
    data_root = scratch("data")
    write_mnist1d(data_root, TINY_SAMPLES)
    local = project("local", data_root, {"tracking_uri": f"sqlite:///{scratch('db')}/m.db"}, None)
    remote = project(
        "remote",
        data_root,
        {"tracking_uri": tracking_uri},
        {"backend": "ray", "address": ray_address},
    )
    # An untimed pair first: the services' first minute (Ray's head starting its agents, the
    # server its workers, the OS caching files) is not what a lab's long-running services cost.
    first = [sweep(f, 99, name == "ray", steps[0]) for name, f in pairs(local, remote)]
    print(f"untimed first pair (wall s): local {first[0]:.1f}, Ray + server {first[1]:.1f}")
    for i, t in enumerate(steps):
        times: dict[str, list[float]] = {"local": [], "ray": []}
        for r in range(repeats):
            for name, folder in pairs(local, remote)[:: 1 if r % 2 == 0 else -1]:
                times[name].append(sweep(folder, 100 + 10 * i + r, name == "ray", t))
        loc, ray = statistics.median(times["local"]), statistics.median(times["ray"])
        print(f"sweep of {TRAININGS} trainings to T = {t}, {repeats} interleaved pairs (wall s):")
        print(f"  local processes + sqlite : {', '.join(f'{x:.1f}' for x in times['local'])}")
        print(f"  Ray + mlflow server (PG) : {', '.join(f'{x:.1f}' for x in times['ray'])}")
        print(
            f"  throughput Ray/local = {loc / ray:.2f} (goal >= 0.9 at 100it); "
            f"{TRAININGS / ray * 3600:.0f} vs {TRAININGS / loc * 3600:.0f} trainings/hour"
        )


# ---- the tracking server under concurrent writers -------------------------------------------


def _writer(tracking_uri: str, writer: int, each: int, tag: str, start, out) -> None:
    """One client: `each` runs, each registering one small keyed state; latencies to `out`."""
    torch.set_num_threads(1)
    from lmctrack.state import State
    from lmctrack.store import Store

    store = Store(tracking_uri)
    weights = {"w": torch.randn(64, 64), "b": torch.zeros(64)}
    start.wait()
    latencies = []
    for i in range(each):
        began = time.perf_counter()
        with store.run("bench_writers", f"w{writer}-{i}") as run:
            run.save_state(
                State(weights),
                model_name="bench_writers",
                role="final",
                step=i,
                tags={"bench": tag},
                key=f"{tag}-{writer}-{i}",
            )
        latencies.append(time.perf_counter() - began)
    out.put(latencies)


def measure_writers(tracking_uri: str, counts: list[int], each: int) -> None:
    from lmctrack.store import Store

    ctx = mp.get_context("fork")
    Store(tracking_uri)  # import MLflow once, before forking
    print(f"tracking server, each writer {each} runs x 1 registered state (64x64 floats):")
    for n in counts:
        tag = f"n{n}-{time.time_ns()}"
        start, out = ctx.Event(), ctx.Queue()
        procs = [
            ctx.Process(target=_writer, args=(tracking_uri, w, each, tag, start, out))
            for w in range(n)
        ]
        for p in procs:
            p.start()
        time.sleep(2 + n * 0.2)  # every writer connected and waiting
        load_before = os.getloadavg()[0]
        began = time.perf_counter()
        start.set()
        latencies = [x for _ in procs for x in out.get(timeout=1800)]
        seconds = time.perf_counter() - began
        for p in procs:
            p.join()
        every = Store(tracking_uri).client.search_model_versions(
            "name = 'bench_writers'", max_results=10000
        )
        found = [v for v in every if v.tags.get("lmctrack.bench") == tag]
        keys = {v.tags.get("lmctrack.state_key") for v in found}
        q = statistics.quantiles(latencies, n=20)
        print(
            f"  N={n:>2}: {len(latencies) / seconds:5.1f} registrations/s, "
            f"p50 {statistics.median(latencies):.2f} s, p95 {q[18]:.2f} s; registry holds "
            f"{len(found)} of {n * each} ({len(keys)} distinct keys); "
            f"load {load_before:.1f} -> {os.getloadavg()[0]:.1f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 pair, N=8 only, 3 each")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--writers", default="8,32")
    parser.add_argument("--each", type=int, default=5)
    parser.add_argument(
        "--steps",
        default="100it",
        help="T of the sweep's trainings, comma-separated (e.g. "
        "100it,400it: the fixed costs per command weigh less in longer sweeps)",
    )
    # one server process per spare core: on two cores shared with Ray and the driver, one
    parser.add_argument(
        "--server-workers", type=int, default=max(1, len(os.sched_getaffinity(0)) // 2)
    )
    args = parser.parse_args()
    counts = [8] if args.quick else [int(n) for n in args.writers.split(",")]
    repeats, each = (1, 3) if args.quick else (args.repeats, args.each)
    print(machine())
    artifacts = scratch("server") / "artifacts"
    artifacts.mkdir()
    cores = len(os.sched_getaffinity(0))
    with ExitStack() as stack:
        db = stack.enter_context(services.postgres())
        url = stack.enter_context(services.mlflow_server(db, artifacts, args.server_workers)).url
        address, _ = stack.enter_context(services.ray_head(cpus=cores))
        print(f"services: PostgreSQL, mlflow server ({args.server_workers} workers) at {url}, ")
        print(f"          Ray head with {cores} CPUs at {address}")
        measure_sweeps(repeats, address, url, args.steps.split(","))
        measure_writers(url, counts, each)
    print(machine().replace("at start", "at the end"))


if __name__ == "__main__":
    main()
