"""Accounts of an authenticated tracking server (MLflow's basic-auth app), as its admin: add a
user, grant one a permission on an experiment or a registered model. Run as the admin
(MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD); a new user's password comes from
LMCTRACK_NEW_PASSWORD, never from the command line (it would stay in the shell's history).

    python deploy/users.py http://HOST:5000 add alice
    python deploy/users.py http://HOST:5000 grant alice experiment instability EDIT
    python deploy/users.py http://HOST:5000 grant bob registered_model mnist1d_cnn READ

Permissions: READ (see), EDIT (record runs, register states), MANAGE (also delete, grant).
A signed-in account reads everything by default (default_permission in basic_auth.ini) and
manages what it creates.
"""

from __future__ import annotations

import argparse
import os

from mlflow import MlflowClient
from mlflow.server.auth.client import AuthServiceClient

KINDS = ("experiment", "registered_model")
PERMISSIONS = ("READ", "USE", "EDIT", "MANAGE")


def add_user(url: str, name: str, password: str) -> None:
    AuthServiceClient(url).create_user(name, password)


def grant(url: str, name: str, kind: str, resource: str, permission: str) -> None:
    """`permission` for user `name` on the experiment or registered model named `resource`."""
    if kind == "experiment":
        experiment = MlflowClient(url).get_experiment_by_name(resource)
        if experiment is None:
            raise SystemExit(f"no experiment '{resource}' on {url}; create it first (a run does)")
        resource = experiment.experiment_id
    AuthServiceClient(url).grant_user_permission(name, kind, resource, permission)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="the tracking server, http://HOST:5000")
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", help="a new user, password from LMCTRACK_NEW_PASSWORD")
    add.add_argument("name")
    given = commands.add_parser("grant", help="a permission on an experiment or model")
    given.add_argument("name")
    given.add_argument("kind", choices=KINDS)
    given.add_argument("resource", help="the experiment's or registered model's name")
    given.add_argument("permission", choices=PERMISSIONS)
    args = parser.parse_args()
    if args.command == "add":
        password = os.environ.get("LMCTRACK_NEW_PASSWORD")
        if not password:
            raise SystemExit("set LMCTRACK_NEW_PASSWORD to the new user's password")
        add_user(args.url, args.name, password)
    else:
        grant(args.url, args.name, args.kind, args.resource, args.permission)


if __name__ == "__main__":
    main()
