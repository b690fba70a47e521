"""What the registry knows about a state (StateInfo, its lineage) and how its URIs are spelled:
shared by the registry (store.registry) and the loading of states (store.loading)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

URI_HELP = "write models:/<name>/<version>, models:/<name>@<alias> or runs:/<run_id>/<path>"
RUNS_URI = re.compile(r"^runs:/(?P<run_id>[^/]+)/(?P<path>.+?)/?$")
CORRUPT = "corrupt"


@dataclass
class StateInfo:
    """What the registry knows about one state version."""

    uri: str  # canonical "models:/<name>/<version>"
    name: str
    version: int
    run_id: str
    tags: dict[str, str]  # lmctrack.* version tags without the prefix (field ones apart)
    parents: list[str]  # parent URIs, canonical
    model_id: str = ""  # the MLflow logged model that holds the files
    source: str = field(default="", repr=False)  # artifact location of the files
    sha256: dict[str, str] = field(default_factory=dict, repr=False)  # file name -> hash
    # what lmctrack.engine.models.build_model needs (name, width, num_classes, input_shape); empty
    # for states registered without it
    architecture: dict = field(default_factory=dict, repr=False)


@dataclass
class LineageNode:
    """A state and the states it came from. A graph, not a tree: a state that several paths share
    (IMP's W_k, under every level) is one node, reached from each."""

    info: StateInfo
    parents: list[LineageNode]

    def walk(self) -> Iterator[LineageNode]:
        """Every state once, depth first: this one, then each parent's ancestry in order."""
        seen: set[str] = set()
        stack = [self]
        while stack:
            node = stack.pop()
            if node.info.uri not in seen:
                seen.add(node.info.uri)
                yield node
                stack.extend(reversed(node.parents))

    def graph(self) -> dict:
        """The lineage as data: its root, every state once, and an edge from each parent to
        each state made from it."""
        nodes = list(self.walk())
        return {
            "root": self.info.uri,
            "nodes": [
                {"uri": n.info.uri, "run_id": n.info.run_id, "tags": n.info.tags} for n in nodes
            ],
            "edges": [
                {"parent": p.info.uri, "child": n.info.uri} for n in nodes for p in n.parents
            ],
        }
