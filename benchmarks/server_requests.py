"""What one registered state costs the tracking server: the HTTP requests of the reduced
instability sweep (tests/conftest.py's tiny params: 2 inits x 2 copies x 2 rewind steps, 14
registered states), run with local processes into a real `mlflow server` on a sqlite database in
a temporary folder, on 127.0.0.1.

Every request lmctrack's client sends (MLflow's REST calls and artifact transfers all go through
requests.Session) is counted in this process, by method and path; the registered states are
counted in the registry afterwards. The sweeps run one after another on fresh seeds, the first
into an empty store (it also creates the experiments), so nothing is reused.

Two servers, one after the other (--files picks one): `direct`, the deployment for a cluster,
where the server does not proxy artifacts and the clients write the files into its artifact root
themselves (a shared file system here; an s3:// root works the same way), so what the server gets
is the bookkeeping alone (runs, metrics, lineage, versions); and `proxied`, where every file is
one more request to the server (MLflow's artifact proxy takes one file per request).

With --inits N the sweep has N inits instead of 2 (7 states each): what a command costs once
(experiments, claims, reaping, the searches for copies) then weighs less per state.

    python benchmarks/server_requests.py [--sweeps 2] [--files direct|proxied|both] [--inits 2]
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from contextlib import chdir
from pathlib import Path
from urllib.parse import urlparse

import requests
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "deploy"))
sys.path.insert(0, str(ROOT / "tests"))
import services  # noqa: E402
from common import machine, scratch  # noqa: E402
from conftest import TINY_SAMPLES, tiny_params  # noqa: E402

from lmctrack.workflows.data_files import write_mnist1d  # noqa: E402

SEED_STRIDE = 10  # more than the sweep's inits: no two sweeps share an init
# the ids inside artifact paths, so that one file's upload counts with the others of its kind
_IDS = re.compile(r"/(?:[0-9a-f]{32}|m-[0-9a-f]{32}|\d+)(?=/|$)")


def endpoint(method: str, url: str) -> str:
    """`METHOD /path` with ids and file names folded: the endpoint, not the resource."""
    path = _IDS.sub("/<id>", urlparse(url).path)
    if "/mlflow-artifacts/artifacts/" in path:
        path = path.split("/mlflow-artifacts/artifacts/")[0] + "/mlflow-artifacts/artifacts/..."
    return f"{method.upper()} {path}"


class Requests:
    """The HTTP requests this process sends, by endpoint, while the block runs."""

    def __init__(self) -> None:
        self.sent: Counter[str] = Counter()
        self._send = requests.Session.request

    def __enter__(self) -> Requests:
        def counted(session, method, url, *args, **kwargs):
            self.sent[endpoint(method, url)] += 1
            return self._send(session, method, url, *args, **kwargs)

        requests.Session.request = counted
        return self

    def __exit__(self, *exc: object) -> None:
        requests.Session.request = self._send

    @property
    def count(self) -> int:
        return sum(self.sent.values())


def registered(tracking_uri: str) -> int:
    """The states the server's registry holds (read outside any counted block)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    return len(client.search_model_versions(max_results=10000))


def sweep(folder: Path, tracking_uri: str, seed: int, inits: int) -> tuple[Requests, int]:
    """One reduced instability sweep through lmctrack.api; its requests and the new states."""
    import lmctrack as lmc

    before = registered(tracking_uri)
    sets = {"seeds.init": seed, "instability.inits": inits}
    with chdir(folder), Requests() as sent:
        lmc.instability(params=folder / "params.yaml", sets=sets)  # settles
    return sent, registered(tracking_uri) - before


def report(label: str, sent: Requests, states: int) -> None:
    per_state = sent.count / max(states, 1)
    print(f"{label}: {sent.count} requests, {states} registered states, {per_state:.1f} per state")
    for name, n in sent.sent.most_common():
        print(f"  {n:>5}  {n / max(states, 1):5.2f}/state  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweeps", type=int, default=2, help="sweeps on fresh seeds, one by one")
    parser.add_argument(
        "--files",
        choices=["direct", "proxied", "both"],
        default="both",
        help="direct: clients write files into the artifact root; proxied: through the server",
    )
    parser.add_argument("--inits", type=int, default=2, help="the sweep's inits (reduced: 2)")
    args = parser.parse_args()
    print(machine())
    data_root = scratch("data")
    write_mnist1d(data_root, TINY_SAMPLES)
    modes = ["direct", "proxied"] if args.files == "both" else [args.files]
    last = {mode: measure(mode, data_root, args.sweeps, args.inits) for mode in modes}
    print(
        "requests per registered state, the last sweep: "
        + ", ".join(f"{last[mode]:.1f} with files {mode}" for mode in modes)
    )


def measure(mode: str, data_root: Path, sweeps: int, inits: int) -> float:
    """The sweeps into a new server with files `mode`; the last sweep's requests per state."""
    folder, server = scratch(f"project-{mode}"), scratch(f"server-{mode}")
    artifacts = server / "artifacts"
    artifacts.mkdir()
    backend = f"sqlite:///{server / 'mlflow.db'}"
    with services.mlflow_server(
        backend, artifacts, proxied=mode == "proxied", auth=False
    ) as mlflow_server:
        params = {**tiny_params(data_root), "store": {"tracking_uri": mlflow_server.url}}
        (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        files = f"clients write files into {artifacts}" if mode == "direct" else "files proxied"
        print(f"\nmlflow server on sqlite at {mlflow_server.url} ({files}); local processes train")
        for i in range(sweeps):
            seed = 100 + i * max(SEED_STRIDE, inits)
            sent, states = sweep(folder, mlflow_server.url, seed, inits)
            report(f"sweep {i + 1}{' (empty store)' if i == 0 else ''}", sent, states)
    return sent.count / max(states, 1)


if __name__ == "__main__":
    main()
