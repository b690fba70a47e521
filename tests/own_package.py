"""The example package (examples/own_network/ownnet) copied into a temp folder and importable,
as a researcher's own code would be: nothing in lmctrack registers it. Also the fixtures of the
end-to-end modules whose project uses it."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from test_cli import ok

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "own_network"
MODEL = "ownnet.nets:TinyResNet"
DATA = "ownnet.data:blobs"

# A module that fails the ways a user's code can: a factory returning the wrong thing, a network
# whose forward branches on data (torch.fx cannot trace it).
BAD = """
import torch
from torch import nn


def wrong():
    return [1, 2, 3]


class Branching(nn.Module):
    def __init__(self, num_classes, input_shape):
        super().__init__()
        self.hidden = nn.Linear(input_shape[0] * input_shape[1] * input_shape[2], 8)
        self.out = nn.Linear(8, num_classes)

    def forward(self, x):
        h = torch.relu(self.hidden(x.flatten(1)))
        return self.out(h) if h.sum() >= 0 else self.out(-h)
"""

ENTRY_POINTS = """[lmctrack.models]
tinyres = ownnet.nets:TinyResNet

[lmctrack.datasets]
blobs = ownnet.data:blobs
"""


def install(folder: Path, plugin: bool = False) -> Path:
    """Copy the package into folder and put it on sys.path; with `plugin`, also an installed
    distribution's metadata that adds its names to lmctrack's entry-point groups."""
    shutil.copytree(EXAMPLE / "ownnet", folder / "ownnet")
    (folder / "ownnet" / "bad.py").write_text(BAD)
    if plugin:
        info = folder / "ownplug-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ownplug\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(ENTRY_POINTS)
    sys.path.insert(0, str(folder))
    return folder


def uninstall(folder: Path) -> None:
    sys.path.remove(str(folder))
    for name in [m for m in sys.modules if m == "ownnet" or m.startswith("ownnet.")]:
        del sys.modules[name]


def project_fixtures(name: str, sections: dict) -> tuple:
    """A test module's fixtures, module-scoped: `project` (a project `name` with `sections`, the
    package installed, entered as the working directory) and `trained` (what `lmctrack train`
    printed in it). Use: `project, trained = project_fixtures("name", SECTIONS)`."""

    @pytest.fixture(scope="module")
    def project(new_project, tmp_path_factory):
        folder = install(tmp_path_factory.mktemp(f"{name}_e2e"))
        project = new_project(name, **sections)
        with project.entered():
            yield project
        uninstall(folder)

    @pytest.fixture(scope="module")
    def trained(project) -> dict:
        return ok("train", "-q")

    return project, trained
