"""The cost of scaling out, on this machine's loopback (deploy/services.py starts everything):

1. The reduced instability sweep (tests/conftest.py's tiny params: MNIST-1D with 1000 examples,
   100 steps, 2 inits x 2 copies x 2 rewind steps = 10 trainings) as a user runs it:
   `lmctrack instability` with runner.backend=ray against a Ray head with the machine's cores
   and an MLflow server on PostgreSQL, vs the local process pool on a sqlite store. Interleaved
   rounds after an untimed one, each on fresh seeds so nothing is reused; throughput ratio =
   local time / Ray time (goal >= 0.9). With --split, the mixed setups too (local processes +
   the server, Ray + sqlite): which half of the difference is Ray's and which the server's,
   each as a ratio of its own.
   Also printed: the machine's CPU per command (every process's, from /proc/stat), which
   divided by its cores bounds the command's wall time from below, and the import cost of a
   fresh Ray worker, which each command pays per worker (warm-up overlaps it with the driver's
   own imports, on a core the single-threaded driver leaves idle meanwhile).
   With --in-driver, the four setups again in this one process through lmctrack.api (as a
   notebook runs sweeps): Ray's workers start once, so what is left is the per-training cost
   of Ray and of the server, with the HTTP requests each sweep sent and the driver process's
   own CPU (what of the server's cost is the client's).
2. The tracking server under N concurrent writers (separate processes, each a Store client;
   benchmarks/server_writers.py): every writer opens runs and registers states with keys and
   lineage; registrations per second, p50 and p95 latency, and a count of what the registry
   holds afterwards (no lost writes). benchmarks/capacity.py measures the same with the server
   on a core of its own.

    python benchmarks/cluster.py [--quick] [--repeats R] [--writers 8,32] [--each K]
                                 [--steps 100it,400it] [--split] [--in-driver]
                                 [--server uvicorn|gunicorn]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack, chdir
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "deploy"))
sys.path.insert(0, str(ROOT / "tests"))
import services  # noqa: E402
from common import machine, scratch  # noqa: E402
from conftest import TINY_SAMPLES, tiny_params  # noqa: E402
from server_requests import Requests  # noqa: E402
from server_writers import measure_writers  # noqa: E402

from lmctrack.workflows.data_files import write_mnist1d  # noqa: E402

TRAININGS = 10  # 2 inits trained to T, then 2 inits x 2 rewind steps x 2 copies
SEED_STRIDE = 10  # more than the sweep's inits
CORES = len(os.sched_getaffinity(0))


def ceiling(local_wall: float, cpu: float) -> float:
    """The most a setup that uses `cpu` seconds of the machine's CPU can reach of the local
    command's throughput: on CORES cores it takes at least cpu / CORES, however it overlaps."""
    return local_wall / (cpu / CORES)


def project(name: str, data_root: Path, store: dict, runner: dict | None) -> Path:
    folder = scratch(name)
    params = {**tiny_params(data_root), "store": store}
    if runner:
        params["runner"] = runner
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return folder


def machine_cpu() -> float:
    """CPU seconds all processes of the machine have used (busy time in /proc/stat: user, nice,
    system, irq, softirq): around a command, what it cost the machine, the services' and Ray's
    processes included, which a per-process count misses when they exit."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def sweep(folder: Path, seed: int, on_ray: bool, steps: str) -> tuple[float, float]:
    """Wall time of `lmctrack instability` in the folder on fresh seeds and the machine's CPU
    seconds meanwhile; with on_ray, it must have trained on Ray."""
    argv = [sys.executable, "-m", "lmctrack", "instability", "-q", "--set", f"seeds.init={seed}"]
    argv += ["--set", f"train.steps={steps}"]
    env = {**os.environ, **services.RAY_LOOPBACK}
    began, cpu = time.perf_counter(), machine_cpu()
    done = subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True)
    seconds, cpu = time.perf_counter() - began, machine_cpu() - cpu
    if done.returncode != 0:
        raise SystemExit(f"lmctrack instability failed in {folder}:\n{done.stderr[-3000:]}")
    if on_ray and "runner.backend=ray: " not in done.stderr:
        raise SystemExit("the sweep did not train on Ray: jobs.train_all must use ctx.executor")
    return seconds, cpu


# Where a sweep trains and what it records into: (name, Ray backend?, tracking server?). The first
# and last are the comparison; with --split the mixed two say which half costs what.
SETUPS = [
    ("local processes + sqlite", False, False),
    ("local processes + server", False, True),
    ("Ray + sqlite", True, False),
    ("Ray + mlflow server (PG)", True, True),
]


def worker_imports() -> float:
    """CPU seconds a fresh process spends importing what a Ray training task runs (ray, torch,
    lmctrack). Every command is a new Ray job whose workers are new processes that pay this
    (Ray binds a worker process to one job); the local pool forks its workers from the driver,
    which has imported all of it already."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    code = "import ray, torch, lmctrack.execution.local, lmctrack.engine.interpolate"
    subprocess.run([sys.executable, "-c", code], check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def projects(setups: list, ray_address: str, tracking_uri: str) -> dict[str, Path]:
    """A project folder per setup, all on one copy of the data."""
    data_root = scratch("data")
    if not any(data_root.iterdir()):
        write_mnist1d(data_root, TINY_SAMPLES)
    return {
        name: project(
            f"setup{i}",
            data_root,
            {"tracking_uri": tracking_uri if server else f"sqlite:///{scratch(f'db{i}')}/m.db"},
            {"backend": "ray", "address": ray_address} if on_ray else None,
        )
        for i, (name, on_ray, server) in enumerate(setups)
    }


# Every sweep on seeds of its own (the server is shared): nothing is found finished. A sweep's
# inits use seeds.init, seeds.init + 1, ..., so consecutive values would share an init.
_SEEDS = iter(range(100, 10**7, SEED_STRIDE))


def row(name: str, walls: list[float]) -> str:
    """A setup's wall times and their median, as both measurements print them."""
    times = ", ".join(f"{s:.1f}" for s in walls)
    return f"  {name:<27}: {times} (median {statistics.median(walls):.1f})"


def halves(median: dict[str, float]) -> str:
    """Each half of the difference alone: the server without Ray, Ray without the server."""
    local = median[SETUPS[0][0]]
    return (
        f"local + server / local = {local / median[SETUPS[1][0]]:.2f} (the server alone); "
        f"Ray + sqlite / local = {local / median[SETUPS[2][0]]:.2f} (Ray alone)"
    )


def driver_cpu() -> float:
    """CPU seconds of this process, all its threads (the background writer's HTTP included);
    neither the local pool's workers nor Ray's are counted."""
    used = resource.getrusage(resource.RUSAGE_SELF)
    return used.ru_utime + used.ru_stime


def measure_sweeps(
    repeats: int, ray_address: str, tracking_uri: str, steps: list[str], split: bool
) -> None:
    setups = SETUPS if split else [SETUPS[0], SETUPS[-1]]
    folders = projects(setups, ray_address, tracking_uri)

    def timed(name: str, on_ray: bool, t: str) -> tuple[float, float]:
        return sweep(folders[name], next(_SEEDS), on_ray, t)

    # An untimed round first: the services' first minute (Ray's head starting its agents, the
    # server its workers, the OS caching files) is not what a lab's long-running services cost.
    first = [f"{name} {timed(name, on_ray, steps[0])[0]:.1f}" for name, on_ray, _ in setups]
    print(f"untimed first round (wall s): {', '.join(first)}")
    for i, t in enumerate(steps):
        measured = setups if i == 0 else [setups[0], setups[-1]]
        times: dict[str, list[float]] = {name: [] for name, _, _ in measured}
        cpus: dict[str, list[float]] = {name: [] for name, _, _ in measured}
        for r in range(repeats):
            for name, on_ray, _ in measured[:: 1 if r % 2 == 0 else -1]:
                wall, cpu = timed(name, on_ray, t)
                times[name].append(wall)
                cpus[name].append(cpu)
        median = {name: statistics.median(x) for name, x in times.items()}
        print(
            f"sweep of {TRAININGS} trainings to T = {t}, {repeats} interleaved rounds "
            "(wall s; the machine's CPU s meanwhile, every process):"
        )
        for name, x in times.items():
            print(f"{row(name, x)}; CPU {', '.join(f'{s:.1f}' for s in cpus[name])}")
        loc, ray = median[SETUPS[0][0]], median[SETUPS[-1][0]]
        loc_cpu, ray_cpu = (statistics.median(cpus[s[0]]) for s in (SETUPS[0], SETUPS[-1]))
        print(
            f"  throughput Ray + server / local = {loc / ray:.2f} (goal >= 0.9 at 100it); "
            f"{TRAININGS / ray * 3600:.0f} vs {TRAININGS / loc * 3600:.0f} trainings/hour; "
            f"fixed cost per command {ray - loc:+.1f} s"
        )
        if len(measured) == len(SETUPS):
            print(f"  {halves(median)}")
        print(
            f"  the machine's CPU per command: Ray + server {ray_cpu:.1f} s, local {loc_cpu:.1f} "
            f"s; on {CORES} cores the Ray command takes >= {ray_cpu / CORES:.1f} s however "
            f"well its processes overlap: the ratio is at most {ceiling(loc, ray_cpu):.2f}"
        )
        if i == 0:
            print(
                f"  a fresh Ray worker imports for {worker_imports():.1f} s of CPU; each command's "
                "workers are new processes (warm-up overlaps their imports with the driver's)"
            )


def measure_in_driver(repeats: int, ray_address: str, tracking_uri: str, steps: str) -> None:
    """The four setups through lmctrack.api in this one process, as a notebook runs sweeps one
    after another: one Ray job, so its workers start once and stay (and the driver imports
    once), leaving the per-training costs of Ray and of the tracking server."""
    import lmctrack as lmc

    os.environ.update(services.RAY_LOOPBACK)  # before this process joins the Ray head
    folders = projects(SETUPS, ray_address, tracking_uri)
    times: dict[str, list[float]] = {name: [] for name, _, _ in SETUPS}
    cpus: dict[str, list[float]] = {name: [] for name, _, _ in SETUPS}
    sent: dict[str, list[int]] = {name: [] for name, _, _ in SETUPS}
    own: dict[str, list[float]] = {name: [] for name, _, _ in SETUPS}
    for r in range(repeats + 1):  # the first round untimed: Ray's workers start in it
        for name, _, _ in SETUPS[:: 1 if r % 2 == 0 else -1]:
            sets = {"seeds.init": next(_SEEDS), "train.steps": steps}
            with chdir(folders[name]), Requests() as requests_sent:
                began, cpu, mine = time.perf_counter(), machine_cpu(), driver_cpu()
                lmc.instability(params=folders[name] / "params.yaml", sets=sets)
                wall, cpu = time.perf_counter() - began, machine_cpu() - cpu
                mine = driver_cpu() - mine
            if r > 0:
                times[name].append(wall)
                cpus[name].append(cpu)
                own[name].append(mine)
                sent[name].append(requests_sent.count)
    print(
        f"in one driver (lmctrack.api.instability, {repeats} interleaved rounds after an untimed "
        f"one; {TRAININGS} trainings to T = {steps}; wall s; CPU s medians of the machine and of "
        "the driver process; HTTP requests):"
    )
    median = {name: statistics.median(x) for name, x in times.items()}
    for name, x in times.items():
        print(
            f"{row(name, x)}; CPU {statistics.median(cpus[name]):.1f}, driver "
            f"{statistics.median(own[name]):.1f}; requests {statistics.median(sent[name]):.0f}"
        )
    local, ray = median[SETUPS[0][0]], median[SETUPS[-1][0]]
    print(f"  throughput Ray + server / local = {local / ray:.2f}; {halves(median)}")
    print(
        "  Ray + server's CPU on the machine's cores bounds that ratio from above whatever "
        f"overlaps: {ceiling(local, statistics.median(cpus[SETUPS[-1][0]])):.2f}"
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
    parser.add_argument(
        "--in-driver",
        action="store_true",
        help="also run the four setups' sweeps in this process through lmctrack.api, at the first T",
    )
    parser.add_argument(
        "--split",
        action="store_true",
        help="also time the mixed setups (local + server, Ray + sqlite) at the first T",
    )
    # one server process per spare core: on two cores shared with Ray and the driver, one
    parser.add_argument("--server-workers", type=int, default=max(1, CORES // 2))
    parser.add_argument(
        "--server",
        choices=list(services.FRONTS),
        default="uvicorn",
        help="the HTTP server in front of MLflow's app (uvicorn: MLflow's default)",
    )
    args = parser.parse_args()
    counts = [8] if args.quick else [int(n) for n in args.writers.split(",")]
    repeats, each = (1, 3) if args.quick else (args.repeats, args.each)
    print(machine())
    artifacts = scratch("server") / "artifacts"
    artifacts.mkdir()
    with ExitStack() as stack:
        db = stack.enter_context(services.postgres())
        url = stack.enter_context(
            services.mlflow_server(db, artifacts, args.server_workers, args.server, auth=False)
        ).url
        address, _ = stack.enter_context(services.ray_head(cpus=CORES))
        print(
            f"services: PostgreSQL, mlflow server ({args.server_workers} {args.server} workers) at {url}, "
        )
        print(f"          Ray head with {CORES} CPUs at {address}")
        measure_sweeps(repeats, address, url, args.steps.split(","), args.split)
        if args.in_driver:
            measure_in_driver(repeats, address, url, args.steps.split(",")[0])
        measure_writers(url, counts, each)
    print(machine().replace("at start", "at the end"))


if __name__ == "__main__":
    main()
