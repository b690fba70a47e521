"""`lmctrack lineage` of a level-5 IMP subnetwork's W_T on a tiny project (real trainings, a real
sqlite store): the graph it is, each registered state once, within 80 columns, and as JSON nodes
and edges; and the lookup imports no torch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from test_cli import invoke, ok

import lmctrack as lmc
from lmctrack.config import schema

# End to end: real trainings and a subprocess (seconds).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(new_project):
    """IMP to level 5 (one replicate) rewinding to W20 of one training."""
    project = new_project("lineage", imp={"rewind": "20it", "levels": 5, "replicates": 1})
    with project.entered():
        yield project


@pytest.fixture(scope="module")
def w_t(project) -> str:
    """The level-5 subnetwork trained to T: m5 ⊙ W_T, whose masks descend through every level."""
    trained = ok("train", "-q")
    result = invoke("imp", "--run-id", trained["run_id"], "--levels", "5", "-q")
    assert result.exit_code == 0, result.output
    (state,) = lmc.states(params=project.params_file, role=schema.SPARSE, level=5)
    return state.uri


def test_each_state_is_printed_once_and_the_lines_fit_80_columns(project, w_t):
    result = invoke("lineage", w_t)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    graph = lmc.lineage(w_t, params=project.params_file).graph()
    nodes = [n["uri"] for n in graph["nodes"]]
    assert len(nodes) >= 12  # W0, W20, W_T and every level's states
    for uri in nodes:  # in full once; a shared ancestor is referred to after
        assert sum(uri in line.split() for line in lines) == 1, uri
    assert any(line.endswith(", above)") for line in lines)
    assert max(len(line) for line in lines) <= 80
    assert lines[0].startswith(lmc.lineage(w_t, params=project.params_file).info.tags["state"])


def test_json_gives_the_graph_as_nodes_and_edges(project, w_t):
    graph = json.loads(invoke("lineage", w_t, "--json").stdout)
    uris = [n["uri"] for n in graph["nodes"]]
    assert graph["root"] == w_t == uris[0] and len(set(uris)) == len(uris)
    edges = {(e["parent"], e["child"]) for e in graph["edges"]}
    assert len(edges) == len(graph["edges"]) and all(p in uris and c in uris for p, c in edges)
    w0 = next(n["uri"] for n in graph["nodes"] if n["tags"][schema.ROLE] == schema.INIT)
    assert not any(child == w0 for _, child in edges) and any(p == w0 for p, _ in edges)
    tree = lmc.lineage(w_t, params=project.params_file)
    assert {(p.info.uri, n.info.uri) for n in tree.walk() for p in n.parents} == edges


def test_a_lookup_imports_no_torch(project, w_t):
    code = (
        "import sys; from lmctrack.cli import app; "
        f"app(['lineage', '{w_t}'], standalone_mode=False); "
        "sys.exit('torch' in sys.modules)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert w_t in run.stdout.split()
