"""Reaching a tracking server and being let in: the account's credentials, the server's answer
to a login it refuses (401) or a request the account lacks the permission for (403), and one
that does not answer at all, each as one LmcError that names what to fix.

Credentials are the ones MLflow's client reads from the environment (MLFLOW_TRACKING_USERNAME
and MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN). A tracking URI that carries them
(`http://user:password@host:5000`) has them moved there, and the store knows it by the URI
without them: nothing lmctrack records or prints can then hold the password.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import unquote, urlsplit, urlunsplit

import requests
from mlflow.exceptions import MlflowException

from lmctrack.errors import LmcError

USERNAME, PASSWORD = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"
_PROBE_SECONDS = 5.0
_REFUSED = {"UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403}
_FIX = "deploy/README.md, Accounts and permissions"


class Refused(LmcError):
    """The server refused this account a request (401 or 403)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def without_credentials(uri: str) -> str:
    """`uri` without its user and password, which go to the environment of MLflow's client
    (this process's, and so its local workers'; nothing is written anywhere)."""
    if not uri.startswith(("http://", "https://")):
        return uri
    parts = urlsplit(uri)
    if parts.username is None:
        return uri
    os.environ[USERNAME] = unquote(parts.username)
    if parts.password is not None:
        os.environ[PASSWORD] = unquote(parts.password)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=host))


def account() -> str:
    """The account this process sends requests as, in words."""
    if name := os.environ.get(USERNAME):
        return f"account '{name}'"
    return "a token" if os.environ.get("MLFLOW_TRACKING_TOKEN") else "no account"


def _permission(call: str) -> str:
    """The permission a request needs on a basic-auth server (mlflow.server.auth), by the
    MlflowClient method that sends it."""
    registry = "model_version" in call or "registered_model" in call
    where = "registered model" if registry else "experiment"
    if call.startswith("delete_"):
        return f"MANAGE on the {where} (EDIT cannot delete)"
    if call.startswith(("get_", "search_", "list_", "download")):
        return f"READ on the {where}"
    return f"EDIT on the {where}"


def _status(error: BaseException) -> int | None:
    """401 or 403 when that is the server's answer to the request behind `error`."""
    if isinstance(error, MlflowException):
        return _REFUSED.get(str(error.error_code))
    response = getattr(error, "response", None)
    status = getattr(response, "status_code", None)
    return status if status in (401, 403) else None


def refused(error: BaseException, uri: str, call: str) -> Refused | None:
    """The one-line error for a refused login or permission, else None."""
    status = _status(error)
    if status == 401:
        return Refused(
            f"the MLflow tracking server {uri} refused the login of {account()} (401); set "
            f"{USERNAME} and {PASSWORD} to an account of that server ({_FIX})",
            status,
        )
    if status == 403:
        return Refused(
            f"the MLflow tracking server {uri} refused {account()} permission for {call} "
            f"(403: it needs {_permission(call)}); ask the server's admin to grant it ({_FIX}) "
            "or use an account that has it; nothing of this request was stored",
            status,
        )
    return None


def signed_in() -> bool:
    """Whether this process sends an account's credentials (a server that checks permissions)."""
    return bool(os.environ.get(USERNAME) or os.environ.get("MLFLOW_TRACKING_TOKEN"))


def may_register(client, uri: str, name: str) -> None:
    """Before the first run of experiment `name`: the account may register states in the
    registered model of that name, where every workflow of the experiment registers them. A
    write it may not make is refused here, in one line, before anything is recorded, not after
    a training (a run left FAILED). Probed by setting a constant tag, the one write that needs
    the same EDIT and changes nothing after the first time; a model not yet there is made by the
    first registration, which any account may."""
    if not client.search_registered_models(f"name = '{name}'", max_results=1):
        return
    try:
        client.set_registered_model_tag(name, "lmctrack.registry", "lmctrack states")
    except Refused as e:
        if e.status != 403:
            raise
        raise Refused(
            f"the MLflow tracking server {uri} refused {account()} EDIT on the registered model "
            f"'{name}', where this command registers its states (403); ask the server's admin "
            f"for it (python deploy/users.py URL grant ACCOUNT registered_model '{name}' EDIT; "
            f"{_FIX}) or use an account that has it; nothing was recorded",
            403,
        ) from None


def probe_server(uri: str) -> None:
    """One short request to an HTTP tracking server's /health, so that an unreachable server is
    one line in seconds instead of minutes of retries."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=_PROBE_SECONDS):
            return
    except urllib.error.HTTPError:
        return  # it answers: an older server without /health, or one behind a proxy
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise LmcError(
            f"cannot reach the MLflow tracking server {uri} ({reason}); check that the server "
            "is running and reachable, or fix MLFLOW_TRACKING_URI / store.tracking_uri"
        ) from None


def _unanswered(error: BaseException) -> str | None:
    """Why a tracking server did not answer (refused, timed out), when that is what `error`
    comes down to; None for any other error (the server answered it)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, requests.ConnectionError | requests.Timeout):
            reason = seen.args[0] if seen.args else seen
            return str(getattr(reason, "reason", reason)).rsplit(": ", 1)[-1]
        seen = seen.__cause__ or seen.__context__
    return None


@contextmanager
def answering(tracking_uri: str, call: str) -> Iterator[None]:
    """A tracking server that stays unreachable through all of MLflow's retries (about a
    minute: a restart is ridden out), or that refuses the account `call`, becomes one LmcError
    that names it."""
    try:
        yield
    except LmcError:
        raise
    except Exception as e:
        if (refusal := refused(e, tracking_uri, call)) is not None:
            raise refusal from None
        reason = _unanswered(e)
        if reason is None:
            raise
        raise LmcError(
            f"the MLflow tracking server {tracking_uri} stopped answering ({reason}); check "
            "that it is running and reachable, then re-run the command (finished work is reused)"
        ) from None
