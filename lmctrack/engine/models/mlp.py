"""Fully connected ReLU networks: the paper's LeNet-300-100 and the MNIST-1D repository's MLP.

Both flatten any input (MNIST (1, 28, 28), digits (1, 8, 8), MNIST-1D (40,)). Like open_lth's
LeNet, the hidden layers are `fc_layers.i` and the output layer `fc`, which is not pruned: the
MNIST-1D MLP follows LeNet here, as the paper's other fully connected network.
"""

from __future__ import annotations

import math
from itertools import pairwise

import torch
from torch import nn

from lmctrack.engine.models.base import Network


class FullyConnected(Network):
    """input -> hidden sizes (ReLU) -> classes."""

    input_needs = "any input shape (it is flattened)"

    def __init__(self, num_classes: int, input_shape: tuple[int, ...], width: int | None) -> None:
        super().__init__()
        sizes = [math.prod(input_shape), *self.hidden_sizes(width)]
        self.fc_layers = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(sizes))
        self.fc = nn.Linear(sizes[-1], num_classes)

    @classmethod
    def accepts(cls, input_shape: tuple[int, ...]) -> bool:
        return len(input_shape) >= 1 and min(input_shape) >= 1

    def hidden_sizes(self, width: int | None) -> list[int]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for layer in self.fc_layers:
            x = torch.relu(layer(x))
        return self.fc(x)


class LeNet300100(FullyConnected):
    """LeNet-300-100 (paper Table 1): 266,610 parameters on MNIST; its widths are fixed."""

    def hidden_sizes(self, width: int | None) -> list[int]:
        return [300, 100]


class Mnist1dMlp(FullyConnected):
    """The MNIST-1D repository's MLP: two hidden layers of `width` units (default 100)."""

    default_width = 100

    def hidden_sizes(self, width: int | None) -> list[int]:
        return [width, width]
