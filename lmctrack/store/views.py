"""The view an lmctrack experiment opens on in the MLflow UI: the columns and charts that answer
the paper's questions (is Wk stable? is the subnetwork matching?), not 184 columns to tick.

MLflow 3.17 keeps an experiment page's columns and charts in the browser's localStorage (key
BROWSER_KEY); its own way to hand a view to others is an experiment tag `mlflow.sharedViewState.
<key>` that a link `?viewStateShareKey=<key>` opens. The store writes that tag when it creates an
experiment (so the link works in any browser), and `lmctrack ui` (store.ui) copies it into a fresh
browser's localStorage, where the user's own choices later replace it.
"""

from __future__ import annotations

import json

from lmctrack.config import schema

# The UI opens an experiment of this kind on its training runs (MLflow 3 otherwise may open the
# GenAI overview: traces, token usage).
KIND_TAG = "mlflow.experimentKind"
KIND = "custom_model_development"
SHARE_KEY = "lmctrack"
VIEW_TAG = f"mlflow.sharedViewState.{SHARE_KEY}"
# where MLflow's experiment page keeps its state for one experiment (MLflowLocalStorage 1.1)
BROWSER_KEY = 'MLflowLocalStorage-1.1-ExperimentPage-["{experiment_id}"]-ReactComponentState'

PARAMS = (schema.K, schema.INIT_SEED, schema.DENSITY, schema.LEVEL, schema.CRITERION)
METRICS = (
    f"{schema.metric('test', schema.ERROR_BARRIER)}.mean",
    f"{schema.metric('test', schema.ERROR_BARRIER)}.std",
    schema.metric("test", schema.STABLE),
    schema.TEST_ACCURACY,
    schema.IMP_MATCHING,
)
_SECTION = "lmctrack-paper"  # the charts' section id
# the run kinds whose nested runs the charts plot: expanded in a fresh browser's table
EXPANDED = (schema.KIND_INSTABILITY, schema.KIND_SPARSE, schema.KIND_IMP, schema.KIND_FIND_K)


def _column(group: str, name: str) -> str:
    """A runs-table column as MLflow names it, e.g. params.`k`."""
    return f"{group}.`{name}`"


def _scatter(uuid: str, x: str, y: str, title: str) -> dict:
    """A scatter chart of a param against a metric over the runs (MLflow's SCATTER card)."""
    return {
        "uuid": uuid,
        "type": "SCATTER",
        "runsCountToCompare": 100,
        "metricSectionId": _SECTION,
        "deleted": False,
        "isGenerated": False,
        "displayName": title,
        "xaxis": {"key": x, "type": "PARAM"},
        "yaxis": {"key": y, "type": "METRIC"},
    }


def view_state() -> dict:
    """The experiment page's state: MLflow's defaults, the paper's columns and two charts."""
    barrier = METRICS[0]
    columns = [_column("params", p) for p in PARAMS] + [_column("metrics", m) for m in METRICS]
    return {
        "searchFilter": "",
        "orderByKey": "attributes.start_time",
        "orderByAsc": False,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "datasetsFilter": [],
        "modelVersionFilter": "All Runs",
        "selectedColumns": ["attributes.`Models`", *columns],
        "columnOrder": [],
        "columnWidths": {},
        "runsHiddenMode": "SHOW_ALL",
        "compareRunCharts": [
            _scatter("lmctrack-barrier-vs-k", schema.K, barrier, "error barrier vs k"),
            _scatter(
                "lmctrack-accuracy-vs-density",
                schema.DENSITY,
                schema.TEST_ACCURACY,
                "test accuracy vs density",
            ),
        ],
        "compareRunSections": [
            {
                "uuid": _SECTION,
                "name": "Linear mode connectivity",
                "display": True,
                "isReordered": False,
                "deleted": False,
                "isGenerated": False,
            }
        ],
        "isAccordionReordered": False,
    }


def experiment_tags() -> dict[str, str]:
    """What every lmctrack experiment carries: its kind and the shared view."""
    return {KIND_TAG: KIND, VIEW_TAG: json.dumps(view_state())}
