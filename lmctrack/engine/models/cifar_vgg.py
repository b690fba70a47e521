"""open_lth's VGG-16 for CIFAR-10: 3x3 convs with bias + BN + ReLU, 2x2 max-pools, one linear layer.

On (3, 32, 32) the features end at 2x2; open_lth average-pools them (AvgPool2d(2)) into the 512
inputs of the output layer `fc`. Adaptive average pooling to 1x1 does the same there and also
takes other image sizes of at least 16x16. The output layer is not pruned (open_lth's VGG
convention). State_dict names match open_lth's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmctrack.engine.models.base import Network, is_image

PLAN = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
REFERENCE_WIDTH = 64  # the first entry of PLAN; `width` scales every entry by width / 64


class ConvModule(nn.Module):
    """conv3x3 (with bias) -> BatchNorm -> ReLU."""

    def __init__(self, f_in: int, f_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(f_in, f_out, 3, padding=1)
        self.bn = nn.BatchNorm2d(f_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class CifarVgg16(Network):
    """VGG-16; `width` is the first conv's channel count (default 64, the paper's network)."""

    default_width = REFERENCE_WIDTH
    input_needs = "images of shape (channels, height, width) of at least 16x16, e.g. (3, 32, 32)"

    def __init__(self, num_classes: int, input_shape: tuple[int, ...], width: int | None) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        current = input_shape[0]
        for spec in PLAN:
            if spec == "M":
                layers.append(nn.MaxPool2d(2, stride=2))
            else:
                filters = max(1, round(spec * width / REFERENCE_WIDTH))
                layers.append(ConvModule(current, filters))
                current = filters
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(current, num_classes)

    @classmethod
    def accepts(cls, input_shape: tuple[int, ...]) -> bool:
        return is_image(input_shape, min_size=2 ** PLAN.count("M"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.layers(x).mean((2, 3)))  # global average pool; deterministic on CUDA
