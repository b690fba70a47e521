"""Commands on the store and the data folder: the MLflow UI, datasets (lineage: cli.lineage)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lmctrack.cli.options import ParamsOpt, SetOpt, app, data_app, guarded
from lmctrack.errors import LmcError


def _store(params: Path | None, sets: list[str] | None):
    from lmctrack import api
    from lmctrack.config.overrides import parse_sets

    return api.open_store(params, parse_sets(sets or ()))


@app.command()
@guarded
def ui(
    port: Annotated[int, typer.Option("--port", help="port on 127.0.0.1")] = 5000,
    params: ParamsOpt = None,
    set_: SetOpt = None,
) -> None:
    """Start the MLflow UI on 127.0.0.1 for this project's store."""
    import signal
    import subprocess

    if not 0 < port < 65536:
        raise LmcError(f"--port {port} is not a TCP port; use 1..65535, e.g. 5000")
    _check_free(port)
    store = _store(params, set_)
    typer.echo(f"MLflow UI for {store.tracking_uri} at http://127.0.0.1:{port}", err=True)
    server = subprocess.Popen(store.ui_command(port))
    stopped = []

    def stop(*_) -> None:  # `kill` of lmctrack alone must not leave the server running
        stopped.append(True)
        server.terminate()

    signal.signal(signal.SIGTERM, stop)
    try:
        code = server.wait()
    except KeyboardInterrupt:  # Ctrl-C reached the server too: let it shut down, not an error
        server.wait()
        raise typer.Exit(0) from None
    if stopped:
        raise typer.Exit(128 + signal.SIGTERM)
    # The server runs until stopped: ending on its own (MLflow exits 0 on some failures) is one.
    raise LmcError(
        f"the MLflow UI server stopped by itself (exit code {code}); see its log above, "
        f"and check that port {port} is free or pick another --port"
    )


def _check_free(port: int) -> None:
    import socket

    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            raise LmcError(f"port {port} on 127.0.0.1 is in use; pick another --port") from None


@data_app.command("mnist1d")
@guarded
def data_mnist1d(
    root: Annotated[Path, typer.Option("--root", help="data folder")] = Path("data"),
    samples: Annotated[int, typer.Option("--samples", help="examples (train + test)")] = 20000,
) -> None:
    """Generate MNIST-1D locally into ROOT/mnist1d/ (deterministic)."""
    from lmctrack import api

    typer.echo(str(api.mnist1d(root, samples)))


@data_app.command("import")
@guarded
def data_import(
    name: Annotated[
        str, typer.Argument(help="mnist | fashion_mnist | cifar10 | cifar100 | imagenet")
    ],
    source: Annotated[Path, typer.Argument(help="local folder or archive holding the dataset")],
    root: Annotated[Path, typer.Option("--root", help="data folder")] = Path("data"),
) -> None:
    """Copy a local dataset into ROOT in torchvision's layout and `dvc add` it."""
    from lmctrack import api

    typer.echo(str(api.import_dataset(name, source, root)))
