"""The MNIST-1D repository's 1-D CNN (`ConvBase`), the embedded default network.

Three stride-2 convolutions (kernels 5, 3, 3, padding 1) with ReLU, then the output layer `fc`.
It trains at thousands of steps per minute on a CPU, and like the paper's CIFAR networks it is
unstable at initialisation and stable after ~100 steps of SGD. The output layer is not pruned
(it follows LeNet, the paper's other small network).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import ClassVar

import torch
from torch import nn

from lmctrack.engine.models.base import Network

KERNELS = (5, 3, 3)


class Mnist1dCnn(Network):
    """conv1d(1 -> width) -> conv1d(width -> width) x 2, flatten, linear; width 25 by default."""

    default_width = 25
    batchnorm: ClassVar[bool] = False
    input_needs = "1-D signals of shape (length,) or (1, length), length >= 3, e.g. MNIST-1D (40,)"

    def __init__(self, num_classes: int, input_shape: tuple[int, ...], width: int | None) -> None:
        super().__init__()
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels, length = 1, input_shape[-1]
        for i, kernel in enumerate(KERNELS, start=1):
            layers[f"conv{i}"] = nn.Conv1d(channels, width, kernel, stride=2, padding=1)
            if self.batchnorm:
                layers[f"bn{i}"] = nn.BatchNorm1d(width)
            layers[f"relu{i}"] = nn.ReLU()
            channels, length = width, (length + 2 - kernel) // 2 + 1
        self.features = nn.Sequential(layers)
        self.fc = nn.Linear(width * length, num_classes)

    @classmethod
    def accepts(cls, input_shape: tuple[int, ...]) -> bool:
        return input_shape[:-1] in ((), (1,)) and input_shape[-1] >= 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x.reshape(x.shape[0], 1, -1)).flatten(1))


class Mnist1dCnnBn(Mnist1dCnn):
    """The same CNN with BatchNorm after each convolution, to exercise the BatchNorm policies."""

    batchnorm = True
