"""What the registry knows about a state (StateInfo, its lineage) and how its URIs are spelled:
shared by the registry (store.registry) and the loading of states (store.loading)."""

from __future__ import annotations

import re
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
    info: StateInfo
    parents: list[LineageNode]
