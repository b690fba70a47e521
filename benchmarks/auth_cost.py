"""What accounts cost a tracking server's clients: the same registrations of a small state (a run,
its state, settled) into a server with MLflow's basic-auth app and one without, on sqlite on
127.0.0.1, in interleaved rounds; prints the medians and their ratio. The basic-auth app checks
the password (a PBKDF2 hash) at every request unless its credential cache is turned on.

    python benchmarks/auth_cost.py [--rounds R] [--each N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy"))
import services  # noqa: E402
from common import machine, scratch  # noqa: E402

from lmctrack.engine.state import State  # noqa: E402
from lmctrack.store import Store  # noqa: E402


def registrations(store: Store, n: int, tag: str) -> float:
    """Seconds per registration, each a run that registers one state, all settled."""
    start = time.perf_counter()
    for i in range(n):
        with store.run("auth-cost", f"{tag}-{i}") as run:
            state = State({"w": torch.randn(10, 40), "b": torch.zeros(10)})
            run.save_state(state, model_name="auth_cost", role="W0", step=0, tags={})
    store.settle()
    return (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--each", type=int, default=10, help="registrations per side per round")
    args = parser.parse_args()
    print(machine())
    with ExitStack() as stack:
        servers = {}
        for auth in (False, True):
            folder = scratch(f"auth-{auth}")
            (folder / "artifacts").mkdir()
            servers[auth] = stack.enter_context(
                services.mlflow_server(
                    f"sqlite:///{folder}/mlflow.db", folder / "artifacts", auth=auth
                )
            )
        os.environ.update(servers[True].credentials)  # the open server ignores them
        stores = {auth: Store(server.url) for auth, server in servers.items()}
        times: dict[bool, list[float]] = {False: [], True: []}
        for r in range(args.rounds):
            for auth in (False, True) if r % 2 == 0 else (True, False):
                times[auth].append(registrations(stores[auth], args.each, f"r{r}"))
    open_s, auth_s = (statistics.median(times[a]) for a in (False, True))
    print(f"per registration: {open_s * 1000:.0f} ms without accounts, {auth_s * 1000:.0f} ms with")
    print(f"with / without: {auth_s / open_s:.2f} ({args.rounds} rounds of {args.each})")


if __name__ == "__main__":
    main()
