"""The MLflow UI server for lmctrack's store, opening experiments on their training runs.

MLflow 3.17's UI chooses an experiment's view from the browser's workflow type (the URL's
`?workflowType=`, else localStorage `mlflow.workflowType_v1`, else "genai"), not from the
experiment's `mlflow.experimentKind` tag (mlflow/mlflow#24498): a fresh browser lands on the GenAI
overview. This server is MLflow's own (`mlflow server`, same options), whose page first makes
"machine_learning" the default workflow type of this server's origin (BROWSER_DEFAULTS); a choice
the user made in the sidebar's GenAI / Model training toggle is kept. Each lmctrack experiment's
page opens on the columns and charts of its shared view (store.views), until the user changes
them.

Run as `python -m lmctrack.store.ui <mlflow server options>`; Store.ui_command builds the argv.
"""

from __future__ import annotations

import json
import sys

from lmctrack.config import schema
from lmctrack.store import views
from lmctrack.store.location import TAG_PREFIX

KIND = TAG_PREFIX + schema.KIND

# The browser's defaults for this origin, set before MLflow's scripts read them, and only where
# unset, so the user's own choices stand: the model-training view, and the assistant panel closed
# (it opens by itself on a first visit and covers half the runs table).
BROWSER_DEFAULTS = {
    "mlflow.workflowType_v1": "machine_learning",
    "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": True,
}


def defaults_script(defaults: dict) -> str:
    """A script setting each of `defaults` in localStorage where unset."""
    return (
        f"<script>try{{for(const [k,v] of Object.entries({json.dumps(defaults)}))"
        "localStorage.getItem(k)===null&&localStorage.setItem(k,JSON.stringify(v))}"
        "catch(e){}</script>"
    )


MLFLOW_APP = "mlflow.server.fastapi_app:app"
APP = "lmctrack.store.ui:create_app"


def create_app():
    """MLflow's ASGI app with BROWSER_DEFAULTS added to its page (uvicorn's worker calls this)."""
    from mlflow.server import app as pages
    from mlflow.server.fastapi_app import app

    pages.after_request(_with_browser_defaults)
    return app


def _with_browser_defaults(response):
    """MLflow's page (index.html, the one HTML it serves) with the script at the top of <head>."""
    if response.status_code != 200 or response.mimetype != "text/html":
        return response
    response.direct_passthrough = False  # a file response: read its body to edit it
    page = response.get_data(as_text=True)
    if "<head>" in page:
        script = defaults_script({**BROWSER_DEFAULTS, **experiment_views()})
        response.set_data(page.replace("<head>", "<head>" + script, 1))
    return response


def experiment_views() -> dict[str, object]:
    """Each experiment's shared lmctrack view, under the localStorage key of its page, with its
    sweeps and IMPs expanded: the charts plot the runs the table shows (forks, IMP trainings)."""
    from mlflow.server.handlers import _get_tracking_store

    store = _get_tracking_store()
    return {
        views.BROWSER_KEY.format(experiment_id=e.experiment_id): {
            **json.loads(e.tags[views.VIEW_TAG]),
            "runsExpanded": dict.fromkeys(_expanded(store, e.experiment_id), True),
        }
        for e in store.search_experiments(max_results=1000)
        if views.VIEW_TAG in e.tags
    }


def _expanded(store, experiment_id: str) -> list[str]:
    """The experiment's sweep and IMP runs (their forks and trainings nested in them)."""
    from mlflow.entities import ViewType

    runs = store.search_runs([experiment_id], "", ViewType.ACTIVE_ONLY, max_results=50000)
    return [run.info.run_id for run in runs if run.data.tags.get(KIND) in views.EXPANDED]


def main() -> None:
    """`mlflow server` whose uvicorn worker serves create_app() instead of MLflow's app."""
    import mlflow.server
    from mlflow.cli import cli

    build = mlflow.server._build_uvicorn_command

    def uvicorn_command(opts, host, port, workers, app, env_file=None, is_factory=False):
        if app == MLFLOW_APP:
            app, is_factory = APP, True
        return build(opts, host, port, workers, app, env_file, is_factory)

    mlflow.server._build_uvicorn_command = uvicorn_command
    cli.main(["server", *sys.argv[1:]], prog_name="lmctrack ui")


if __name__ == "__main__":
    main()
