"""Make docs/ui.png: the MLflow UI of a real lmctrack store, as a fresh browser opens it.

A tiny project in a temporary folder (MNIST-1D with 1000 examples, the 1-D CNN, T = 100 it) runs a
reduced instability sweep (one init, two copies of each Wk, k = 0, 10, 20, 50) and an IMP from W20
(three levels) through the CLI, then `lmctrack ui`'s server is opened in headless Chromium with
an empty profile, on the experiment's charts: the barrier against k and accuracy against density,
beside the runs (the sweep's forks nested under it).

    python docs/screenshot.py [--out docs/ui.png] [--keep FOLDER]    # a few minutes on 2 cores
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import closing
from pathlib import Path

import yaml

PARAMS = {
    "data": {"name": "mnist1d", "num_samples": 1000, "root": "data"},
    "model": {"name": "mnist1d_cnn"},
    "train": {  # SGD with lmctrack's default lr, momentum and batch size
        "steps": "100it",
        "rewind_steps": ["0it", "10it", "20it", "50it"],
        "device": "cpu",
    },
    "instability": {
        "rewind_steps": ["0it", "10it", "20it", "50it"],
        "inits": 1,
        "copies": 2,
        "alphas": 5,
        "splits": ["test"],
    },
    "imp": {"rewind": "20it", "levels": 3, "replicates": 1},
    "store": {"tracking_uri": "sqlite:///.lmctrack/mlflow.db"},
}
STEPS = [
    ["data", "mnist1d", "--root", "data", "--samples", "1000"],
    ["train", "--out", "out/train"],
    ["instability", "--out", "out/instability"],
    ["imp", "--run-id", "out/train/train.json", "--out", "out/imp"],
]


def make_store(folder: Path) -> None:
    """The project and its store, made by the CLI as a user makes them."""
    (folder / ".lmctrack").mkdir(parents=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(PARAMS, sort_keys=False))
    for step in STEPS:
        print("lmctrack", *step, flush=True)
        subprocess.run([sys.executable, "-m", "lmctrack", *step], cwd=folder, check=True)


def serve(folder: Path, port: int) -> tuple[subprocess.Popen, str]:
    """`lmctrack ui`'s server on the project's store, once it answers, and the experiment's id."""
    from lmctrack.store import Store

    store = Store(f"sqlite:///{folder / '.lmctrack' / 'mlflow.db'}")
    experiment = store.client.get_experiment_by_name("mnist1d_cnn_mnist1d").experiment_id
    server = subprocess.Popen(store.ui_command(port), start_new_session=True)
    for _ in range(360):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                return server, experiment
        except OSError:
            time.sleep(0.5)
    os.killpg(server.pid, signal.SIGTERM)
    raise SystemExit("the MLflow server did not answer within 3 minutes")


def screenshot(url: str, out: Path) -> None:
    chromium = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)
    if chromium is None:
        raise SystemExit("no chromium on PATH (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:  # a fresh browser: lmctrack's view, no clicks
        subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                "--window-size=1400,820",
                "--virtual-time-budget=60000",
                f"--screenshot={out.resolve()}",
                url,
            ],
            check=True,
            capture_output=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("ui.png"))
    parser.add_argument("--keep", type=Path, help="make the project here and keep it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or Path(scratch) / "project"
        if not (folder / ".lmctrack" / "mlflow.db").exists():
            make_store(folder)
        with closing(socket.socket()) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server, experiment = serve(folder, port)
        try:
            url = f"http://127.0.0.1:{port}/#/experiments/{experiment}/runs?compareRunsMode=CHART"
            screenshot(url, args.out)
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)
    print(args.out)


if __name__ == "__main__":
    main()
