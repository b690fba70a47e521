"""The cluster's services on one machine's loopback: PostgreSQL, an MLflow tracking server on it
with proxied artifacts, and a Ray head. For the integration tests, the benchmark, and a try-out
(`python deploy/services.py FOLDER` starts all three and prints what to put in params.yaml).
By default, as deployed: the server lets in only its accounts (MLflow's basic-auth app, an admin
whose password comes from MLFLOW_AUTH_ADMIN_PASSWORD or is made here), the Ray head only drivers
with its token (RAY_AUTH_MODE=token, RAY_AUTH_TOKEN from the environment or made here).

Each is a context manager that stops exactly the processes it started (by their id) and binds
to 127.0.0.1 only. A lab's real deployment is compose.yaml or the commands in deploy/README.md.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

HOST = "127.0.0.1"
ADMIN = "admin"
# The basic-auth app's settings (deploy/basic_auth.ini's, with its user database in `folder`):
# a signed-in account reads every experiment and registered model, and edits only its own or
# those it is granted; no default password (the admin's comes from the environment); a checked
# password is trusted for 60 s (else every request hashes it: 14x the time per registration).
AUTH_INI = """[mlflow]
default_permission = READ
database_uri = sqlite:///{folder}/basic_auth.db
admin_username = {admin}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
auth_cache_ttl_seconds = 60
"""
# Ray on one machine: every process binds to and advertises the loopback address, not the
# machine's public one (Ray's single-machine mode, the one it uses on macOS and Windows).
RAY_LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


class Unavailable(RuntimeError):
    """A service's software is not installed here (the tests skip with this one-line reason)."""


def free_ports(n: int) -> list[int]:
    """`n` distinct ports the OS has free now (all held open together, so none repeats)."""
    with ExitStack() as held:
        sockets = [held.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind((HOST, 0))
        return [s.getsockname()[1] for s in sockets]


def free_port() -> int:
    return free_ports(1)[0]


def _wait(ready, what: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{what} did not start within {timeout:g} s:\n{tail}")
        time.sleep(0.5)


def _stop(proc: subprocess.Popen, timeout: float = 60) -> None:
    """SIGTERM to the process group this harness started (its own session), then SIGKILL."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# ---- PostgreSQL --------------------------------------------------------------------------------


def postgres_bin() -> Path:
    """The folder of initdb / pg_ctl of the newest installed PostgreSQL (Debian's layout)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: p.split("/")[4])
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb is None:
        raise Unavailable("PostgreSQL is not installed (apt-get install postgresql)")
    return Path(initdb).parent


@contextmanager
def postgres(database: str = "mlflow") -> Iterator[str]:
    """A PostgreSQL server on a temp data folder, as the postgres user when run as root; yields
    the database URI (trust authentication: loopback only, throwaway data)."""
    bin_dir = postgres_bin()
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="lmcpg-", dir="/tmp"))  # short: socket path limit
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            raise Unavailable("running as root without runuser to start PostgreSQL as postgres")
        try:
            shutil.chown(folder, "postgres", "postgres")
        except (LookupError, OSError):
            raise Unavailable(
                "no postgres user to run PostgreSQL as (apt-get install postgresql)"
            ) from None
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = folder / "data", free_port()

    def pg(tool: str, *args: str) -> None:
        subprocess.run([*as_user, str(bin_dir / tool), *args], check=True, capture_output=True)

    pg("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
    options = f"-p {port} -k {folder} -c listen_addresses={HOST}"
    pg("pg_ctl", "start", "-w", "-D", str(data), "-l", str(folder / "log"), "-o", options)
    try:
        pg("createdb", "-h", HOST, "-p", str(port), "-U", "postgres", database)
        yield f"postgresql://postgres@{HOST}:{port}/{database}"
    finally:
        pg("pg_ctl", "stop", "-w", "-D", str(data), "-m", "fast")
        shutil.rmtree(folder, ignore_errors=True)


# ---- MLflow tracking server --------------------------------------------------------------------


# The HTTP server in front of MLflow's app, with its worker timeout raised (see MlflowServer).
FRONTS = {
    "uvicorn": ("--uvicorn-opts", "--timeout-worker-healthcheck 120"),
    "gunicorn": ("--gunicorn-opts", "--timeout 120"),
}


class MlflowServer:
    """`mlflow server` on the database with proxied artifacts in `artifacts`, on a port of its
    own that stays the same across stop() and start() (a restart, as its clients see one).

    Several workers are supervised by uvicorn, which replaces one that misses a 5 s health check;
    on a loaded machine a worker still importing MLflow misses it, hence the longer limit. The
    server's job execution (MLflow's GenAI jobs: a runner and seven consumer processes, each
    importing MLflow) is off unless the environment turns it on: lmctrack uses no jobs.

    `front` is the HTTP server in front of MLflow's app: uvicorn (MLflow's default, FastAPI
    around the Flask app) or gunicorn (the Flask app alone; benchmarks/cluster.py --server).
    `auth`: MLflow's basic-auth app (AUTH_INI), its admin in `admin` and `credentials`."""

    def __init__(
        self,
        backend_uri: str,
        artifacts: Path,
        workers: int = 1,
        front: str = "uvicorn",
        proxied: bool = True,
        auth: bool = True,
    ) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log = artifacts.parent / f"mlflow-server-{self.port}.log"
        self.env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
        self.admin: tuple[str, str] | None = None
        if auth:
            password = os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD") or secrets.token_urlsafe(16)
            self.admin = (ADMIN, password)
            ini = artifacts.parent / f"basic-auth-{self.port}.ini"
            ini.write_text(AUTH_INI.format(folder=artifacts.parent.resolve(), admin=ADMIN))
            self.env |= {
                "MLFLOW_AUTH_CONFIG_PATH": str(ini),
                "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN,
                "MLFLOW_AUTH_ADMIN_PASSWORD": password,
                # signs the UI's forms (CSRF); the same for every worker of the server
                "MLFLOW_FLASK_SERVER_SECRET_KEY": os.environ.get(
                    "MLFLOW_FLASK_SERVER_SECRET_KEY", secrets.token_hex(16)
                ),
            }
        # proxied: files go through the server; else clients write `artifacts` themselves (a
        # shared file system; an s3:// root works the same way), and the server never sees them
        where = (
            ("--artifacts-destination", str(artifacts))
            if proxied
            else ("--no-serve-artifacts", "--default-artifact-root", str(artifacts))
        )
        self._argv = [
            *(sys.executable, "-m", "mlflow", "server"),
            *("--backend-store-uri", backend_uri),
            *where,
            *("--host", HOST, "--port", str(self.port), "--workers", str(workers)),
            *FRONTS[front],
            *(("--app-name", "basic-auth") if auth else ()),
        ]
        self._proc: subprocess.Popen | None = None

    @property
    def credentials(self) -> dict[str, str]:
        """The environment that makes MLflow's client (and lmctrack) sign in as the admin."""
        if self.admin is None:
            return {}
        return {
            "MLFLOW_TRACKING_USERNAME": self.admin[0],
            "MLFLOW_TRACKING_PASSWORD": self.admin[1],
        }

    def start(self) -> None:
        with self.log.open("a") as out:
            self._proc = proc = subprocess.Popen(
                self._argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        try:
            _wait(lambda: _healthy(self.url) or proc.poll() is not None, "mlflow server",
                  self.log, 120)  # fmt: skip
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {self.log.read_text()[-2000:]}")
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int | None:
        """The server's process id, also its process group's (its workers are in it)."""
        return None if self._proc is None else self._proc.pid

    def stop(self) -> None:
        """Stop it as a lab would (SIGTERM: requests in flight are answered first)."""
        if self._proc is not None:
            _stop(self._proc)


@contextmanager
def mlflow_server(
    backend_uri: str,
    artifacts: Path,
    workers: int = 1,
    front: str = "uvicorn",
    proxied: bool = True,
    auth: bool = True,
) -> Iterator[MlflowServer]:
    """A started MlflowServer (see there), stopped when the block ends."""
    server = MlflowServer(backend_uri, artifacts, workers, front, proxied, auth)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


# ---- Ray ---------------------------------------------------------------------------------------


@contextmanager
def ray_head(cpus: int = 2, auth: bool = True) -> Iterator[tuple[str, subprocess.Popen]]:
    """A Ray head offering `cpus` worker CPUs; yields its address and the `ray start` process
    (whose descendants are the workers). `auth`: Ray's token authentication, with the token of
    RAY_AUTH_TOKEN, made and put there if unset, so that this process and its children are the
    drivers that have it (it is never written to a file)."""
    ray = shutil.which("ray") or str(Path(sys.executable).parent / "ray")
    if not Path(ray).exists():
        raise Unavailable('Ray is not installed (pip install -e ".[cluster]")')
    folder = Path(tempfile.mkdtemp(prefix="lmcray-", dir="/tmp"))
    # Every port Ray would otherwise take at a fixed default (client 10001, agent 52365) is
    # picked free too: a default may be the free port picked for another service, or taken.
    port, client_port, agent_port = free_ports(3)
    address = f"{HOST}:{port}"
    argv = [
        *(ray, "start", "--head", "--block", "--disable-usage-stats"),
        *("--node-ip-address", HOST, "--port", str(port), "--num-cpus", str(cpus)),
        *("--ray-client-server-port", str(client_port)),
        *("--dashboard-agent-listen-port", str(agent_port)),
        *("--include-dashboard", "false", "--temp-dir", str(folder)),
    ]
    # Idle workers kept beyond one per CPU: a driver's warm workers (torch imported) survive
    # while another driver's workers run, as when a test and a command share the head.
    if auth:
        os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(16))
        os.environ["RAY_AUTH_MODE"] = "token"
    env = {"RAY_num_workers_soft_limit": str(4 * cpus), **os.environ, **RAY_LOOPBACK}
    log = folder / "ray-start.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        _wait(lambda: "Ray runtime started" in log.read_text() or proc.poll() is not None,
              "ray head", log, 180)  # fmt: skip
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited: {log.read_text()[-2000:]}")
        yield address, proc
    finally:
        _stop(proc, timeout=10)  # its daemons end in seconds; `ray start` then waits ~30 s
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    base = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="lmcsvc-"))
    (base / "artifacts").mkdir(parents=True, exist_ok=True)
    with postgres() as db, mlflow_server(db, base / "artifacts") as server, ray_head() as (addr, _):
        print(f"store.tracking_uri: {server.url}\nrunner.backend: ray\nrunner.address: {addr}")
        driver = {**server.credentials, **RAY_LOOPBACK, "RAY_AUTH_MODE": "token"}
        driver["RAY_AUTH_TOKEN"] = os.environ["RAY_AUTH_TOKEN"]
        print(f"export {' '.join(f'{k}={v}' for k, v in driver.items())}  # for the driver")
        print("Add users: python deploy/users.py --help. Ctrl-C stops all three.", flush=True)
        with suppress(KeyboardInterrupt):
            signal.pause()
