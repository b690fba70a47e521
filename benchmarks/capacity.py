"""One tracking server's capacity as a cluster sees it: the server and its database on a core of
their own, the writers (what a cluster's workers do when a training ends) on another.

PostgreSQL and `mlflow server` (deploy/services.py) are started by this process while its CPU
affinity is the server core only (what `taskset -c 0` sets), so every process of theirs (the
postmaster and its backends, uvicorn and its workers) inherits that core; then this process
moves to the writer core, and benchmarks/cluster.py's writers are forked from it: for each N,
N processes register through lmctrack's Store a run and one state with lineage each (its W0 as
parent, the dataset, a work key), `--each` times, all started together. Printed per N:
registrations per second, p50 / p95 latency of one registration (run, state, all of it stored),
what the registry holds afterwards (versions, distinct keys, lineage), and how busy each core
was meanwhile (from /proc/stat), which says whose core was the bottleneck.

The artifacts go straight to the artifact root (`--no-serve-artifacts`: the clients write the
files, the server gets the bookkeeping), as a cluster should run it; --proxied-at N measures N
writers once more against a second server that proxies the files, for comparison.

    python benchmarks/capacity.py [--writers 1,4,16,32] [--each 5] [--proxied-at 16]
                                  [--server-workers 1] [--server uvicorn|gunicorn] [--restart]
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import ExitStack, contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "deploy"))
import services  # noqa: E402
from common import machine, scratch  # noqa: E402
from server_writers import Writers, writers  # noqa: E402


def affinities(server: services.MlflowServer) -> list[str]:
    """The cores the server's processes (its process group) and PostgreSQL's may run on: what
    the pinning did, checked."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            pid = int(entry.name)
            if os.getpgid(pid) == server.pid or b"postgres" in (entry / "cmdline").read_bytes():
                found.add(",".join(map(str, sorted(os.sched_getaffinity(pid)))))
        except OSError:
            continue  # it ended meanwhile
    return sorted(found)


@contextmanager
def pinned(core: int):
    """This process (and what it starts meanwhile) on `core` alone, then back."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def measure(url: str, n: int, each: int, server_core: int, writer_core: int) -> Writers:
    result = writers(url, n, each)
    print(
        f"  {result.line()}; busy: server core {result.busy[server_core]:.0%}, writer core "
        f"{result.busy[writer_core]:.0%}",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", default="1,4,16,32")
    parser.add_argument("--each", type=int, default=5, help="registrations per writer")
    parser.add_argument("--proxied-at", type=int, default=0, help="N writers, files proxied")
    parser.add_argument("--server-workers", type=int, default=1)
    parser.add_argument(
        "--restart",
        action="store_true",
        help="a new server process before each N (the same database): does the server slow "
        "down as it serves, or as the registry grows?",
    )
    parser.add_argument("--server", choices=list(services.FRONTS), default="uvicorn")
    args = parser.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        raise SystemExit("capacity.py needs two cores: one for the server, one for the writers")
    server_core, writer_core = cores[:2]
    print(machine())
    folder = scratch("server")
    for name in ("direct", "proxied"):
        (folder / name).mkdir()
    with ExitStack() as stack:
        with pinned(server_core):
            db = stack.enter_context(services.postgres())
            direct = stack.enter_context(
                services.mlflow_server(
                    db,
                    folder / "direct",
                    args.server_workers,
                    args.server,
                    proxied=False,
                    auth=False,
                )
            )
            proxied = None
            if args.proxied_at:
                proxied = stack.enter_context(
                    services.mlflow_server(
                        db, folder / "proxied", args.server_workers, args.server, auth=False
                    )
                )
        stack.enter_context(pinned(writer_core))
        print(
            f"PostgreSQL and mlflow server ({args.server_workers} {args.server} worker(s)) on "
            f"core {server_core} (their processes' cores: {affinities(direct)}); "
            f"writers on core {writer_core}"
        )
        print(f"files written by the clients to the artifact root, each writer {args.each} x:")
        for i, n in enumerate(int(x) for x in args.writers.split(",")):
            if args.restart and i:
                with pinned(server_core):
                    direct.stop()
                    direct.start()
            measure(direct.url, n, args.each, server_core, writer_core)
        if proxied is not None:
            print("files proxied through the server:")
            measure(proxied.url, args.proxied_at, args.each, server_core, writer_core)
    print(machine().replace("at start", "at the end"))


if __name__ == "__main__":
    main()
