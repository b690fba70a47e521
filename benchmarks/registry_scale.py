"""The registry at the size of a real study: a store filled with N registered
states of a tiny network in one registered model, and the time of each lookup lmctrack makes.

The states have the shape of instability sweeps: per init, one training run registers W0, four
Wk and W_T (each the parent of the next), and one fork run per Wk registers two copies' W_T
(parent: Wk), all with keys, through lmctrack's Store as the workflows do. Then each lookup is
timed on a fresh Store (nothing cached), median of --repeats:

- lineage of the newest copy's W_T (W_T <- Wk <- ... <- W0);
- lmc.states(role="trained", rewind_step=k) (Store.search_states: a server-side filter);
- the reuse checks before a fork: find_state of a key that exists and of one that does not,
  find_run of a config hash;
- a fork's registration (one run, one keyed state with its parent).

Each should stay under a second and not grow with N. `--ui` also loads the MLflow UI's page of
the registered model in headless Chromium (a fresh profile, through a server on the store) and
prints its wall time and how many versions the page lists. The store: a local sqlite one
(default), or `--server sqlite|postgres`: an `mlflow server` on sqlite or PostgreSQL on 127.0.0.1
(deploy/services.py).

    python benchmarks/registry_scale.py [--states 10000] [--server sqlite|postgres] [--repeats 5]
                                        [--ui]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import zlib
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "deploy"))
import services  # noqa: E402
from common import machine, scratch  # noqa: E402

from lmctrack.config import schema  # noqa: E402
from lmctrack.engine.state import State  # noqa: E402
from lmctrack.store import Store  # noqa: E402

MODEL = "scale_net"
EXPERIMENT = "scale"
KS = (1, 2, 4, 8)  # rewind steps, T = 16
T = 16
COPIES = 2
PER_INIT = 2 + len(KS) * (1 + COPIES)  # W0, W_T, every Wk and its copies


def _state(seed: int) -> State:
    generator = torch.Generator().manual_seed(seed)
    return State({"w": torch.randn(4, 4, generator=generator), "b": torch.zeros(4)})


def _save(run, seed: int, role: str, step: int, parents: list[str], key: str, **tags) -> str:
    tags = {schema.INIT_SEED: str(seed), **{k: str(v) for k, v in tags.items()}}
    return run.save_state(
        _state(zlib.crc32(key.encode())),
        model_name=MODEL,
        role=role,
        step=step,
        tags=tags,
        parents=parents,
        key=key,
    )


def fill_init(store: Store, seed: int) -> str:
    """One init's training and forks; returns the newest copy's W_T."""
    train = f"train{seed}"
    with store.run(EXPERIMENT, train, tags={schema.CONFIG_HASH: train}) as run:
        states = {0: _save(run, seed, schema.INIT, 0, [], f"{train}:step0")}
        for step in (*KS, T):
            role = schema.TRAINED if step == T else schema.REWIND
            parent = [states[max(states)]]
            states[step] = _save(run, seed, role, step, parent, f"{train}:step{step}")
    newest = ""
    for k in KS:
        fork = f"fork{seed}-{k}"
        with store.run(EXPERIMENT, fork, tags={schema.CONFIG_HASH: fork}) as run:
            for c in range(COPIES):
                newest = _save(
                    run, seed, schema.TRAINED, T, [states[k]], f"{fork}:copy{c}", rewind_step=k
                )
    return newest


def timed(uri: str, what: Callable[[Store], object], repeats: int) -> float:
    """Median seconds of `what` on a fresh Store (its own caches empty)."""
    seconds = []
    for _ in range(repeats):
        store = Store(uri)
        began = time.perf_counter()
        what(store)
        store.settle()
        seconds.append(time.perf_counter() - began)
    return statistics.median(seconds)


def fork_registration(store: Store, parent: str) -> None:
    name = f"late-{time.time_ns()}"
    with store.run(EXPERIMENT, name) as run:
        _save(run, 0, schema.TRAINED, T, [parent], f"{name}:copy0", rewind_step=KS[0])


def measure(uri: str, states: int, repeats: int) -> None:
    store = Store(uri)
    inits = max(1, states // PER_INIT)
    began, newest = time.perf_counter(), ""
    for seed in range(inits):
        newest = fill_init(store, seed)
    store.settle()
    filled = time.perf_counter() - began
    total = len(store.search_states(model=MODEL))
    print(
        f"filled {total} states ({inits} inits) in {filled:.0f} s ({filled / total * 1e3:.0f} ms each)"
    )
    last = inits - 1
    lookups = {
        "lineage of a copy's W_T": lambda s: s.lineage(newest),
        f"states(role=trained, rewind_step={KS[1]})": lambda s: s.search_states(
            model=MODEL, role=schema.TRAINED, rewind_step=KS[1]
        ),
        "find_state (a key that exists)": lambda s: s.find_state(f"fork{last}-{KS[0]}:copy0"),
        "find_state (a key that does not)": lambda s: s.find_state("fork-none:copy0"),
        "find_run (a config hash)": lambda s: s.find_run(EXPERIMENT, f"train{last}"),
        "a fork's registration": lambda s: fork_registration(s, newest),
    }
    for name, what in lookups.items():
        seconds = timed(uri, what, repeats)
        print(f"  {name:<40} {seconds * 1e3:8.1f} ms{'' if seconds < 1 else '  (over 1 s)'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--states", type=int, default=10000)
    parser.add_argument("--server", choices=["sqlite", "postgres"], default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ui", action="store_true", help="time the model page in Chromium")
    args = parser.parse_args()
    print(machine())
    folder = scratch("registry")
    with ExitStack() as stack:
        if args.server is None:
            uri = f"sqlite:///{folder / 'mlflow.db'}"
        else:
            (folder / "artifacts").mkdir()
            db = (
                stack.enter_context(services.postgres())
                if args.server == "postgres"
                else f"sqlite:///{folder / 'server.db'}"
            )
            uri = stack.enter_context(
                services.mlflow_server(db, folder / "artifacts", auth=False)
            ).url
        print(f"store: {uri}")
        measure(uri, args.states, args.repeats)
        if args.ui:
            if not uri.startswith("http"):
                uri = stack.enter_context(
                    services.mlflow_server(uri, folder / "artifacts", auth=False)
                ).url
            model_page(uri, folder / "browser")


def model_page(url: str, profile: Path) -> None:
    """The registered model's page as a person opens it: wall time until Chromium has run the
    page's scripts (a virtual-time budget of 20 s), and the version rows it shows."""
    import re
    import shutil
    import subprocess

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        print("  model page in the UI: no chromium installed (apt-get install chromium)")
        return
    began = time.perf_counter()
    page = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
         "--virtual-time-budget=20000", "--dump-dom", f"{url}/#/models/{MODEL}"],
        capture_output=True, text=True, timeout=300,
    ).stdout  # fmt: skip
    seconds = time.perf_counter() - began
    rows = len(re.findall(r">Version \d+<", page))
    print(
        f"  model page in the UI (headless Chromium)  {seconds:6.1f} s, {rows} version rows shown"
    )


if __name__ == "__main__":
    main()
