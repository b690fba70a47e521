"""Typed results of the follow-up analyses of registered states (workflows.analyses): the Hessian
diagonal at a state and loss-landscape planes.

As in lmctrack.results.paper: the workflow builds them, the run keeps them as JSON (results.to_dict
/ from_dict round trip), and the CLI and the 2023 follow-up read their fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lmctrack.results.paper import Flat


@dataclass
class Hessian(Flat):
    """Hutchinson's estimate of diag(H) of the train loss at one state, summarised; the diagonal
    itself is the run's artifact `diagonal` (same tensor names as the state)."""

    uri: str
    samples: int  # Rademacher vectors
    limit: int
    examples: int  # train examples the loss is the mean over: min(limit, the split's size)
    seed: int
    density: float | None  # of the state's mask (None: dense)
    summary: dict[str, float]  # over kept weights: mean, max, min, trace, top_<i>, per-tensor means
    diagonal: str
    definition: str
    run_id: str = ""

    def to_frame(self):
        """One row per summary statistic (a pandas DataFrame)."""
        import pandas as pd

        return pd.DataFrame({"statistic": list(self.summary), "value": list(self.summary.values())})


@dataclass
class PlanePoint:
    """A state on a plane: where it lies and, when that is a grid node, its error and loss."""

    uri: str
    name: str  # its label on the plot, e.g. "W_T v7"
    x: float
    y: float
    error: float | None = None  # None: the state lies off the grid's nodes
    loss: float | None = None


@dataclass
class Landscape:
    """Error and loss on a plane of weight space, logged as a run: `plane` (through three
    states) or `random_plane` (two random directions around one)."""

    kind: str  # "plane" or "random_plane": the run's kind and its files' stem
    title: str
    params: dict[str, Any]  # as logged: the states' URIs, grid, margin or span and seed, split, bn
    split: str
    bn: str
    points: dict[str, PlanePoint]  # role (origin, a, b; or center) -> the state
    xs: list[float]
    ys: list[float]
    error: list[list[float]]  # error[i][j] at (xs[j], ys[i])
    loss: list[list[float]]
    labels: list[str]  # what the x and y axes measure
    summary: dict[str, float]  # grid min / max, each point's error and loss, the geometry
    run_id: str = ""

    def plane(self):
        """The grid as lmctrack.engine.landscape computes and plots it (points by their names)."""
        from lmctrack.engine.landscape import Plane

        points = {p.name: (p.x, p.y) for p in self.points.values()}
        return Plane(
            self.xs, self.ys, self.loss, self.error, points, self.split, self.bn, tuple(self.labels)
        )

    def nodes(self) -> list[dict[str, float]]:
        """One record per grid node: x, y, error, loss (the run's grid table)."""
        return [
            {"x": x, "y": y, "error": self.error[i][j], "loss": self.loss[i][j]}
            for i, y in enumerate(self.ys)
            for j, x in enumerate(self.xs)
        ]

    def plot(self, metric: str = "error"):
        """Filled contours of `metric` ("error" or "loss") with the states marked (a Figure)."""
        from lmctrack.results.plots import plot_plane

        return plot_plane(self.plane(), self.title, metric=metric)

    def to_frame(self):
        """One row per grid node: x, y, error, loss (a pandas DataFrame)."""
        import pandas as pd

        return pd.DataFrame(self.nodes())

    @classmethod
    def from_dict(cls, data: dict) -> Landscape:
        data = dict(data)
        data["points"] = {role: PlanePoint(**p) for role, p in data["points"].items()}
        return cls(**data)
