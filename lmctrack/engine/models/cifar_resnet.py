"""open_lth's CIFAR ResNet-20 (He et al. 2016): 272,474 parameters at width 16 on CIFAR-10.

A 3x3 conv + BN + ReLU, three stages of three basic blocks with width, 2*width and 4*width
channels (stride 2 at the start of stages 2 and 3, where the shortcut is a 1x1 conv + BN), global
average pooling and the output layer `fc`, which is pruned (open_lth's ResNet convention).
State_dict names match open_lth's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmctrack.engine.models.base import Network, is_image

BLOCKS_PER_STAGE = 3  # depth 20 = 2 + 6 * 3


class BasicBlock(nn.Module):
    """Two 3x3 convs with BatchNorm around a residual connection."""

    def __init__(self, f_in: int, f_out: int, downsample: bool) -> None:
        super().__init__()
        stride = 2 if downsample else 1
        self.conv1 = nn.Conv2d(f_in, f_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(f_out)
        self.conv2 = nn.Conv2d(f_out, f_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(f_out)
        self.shortcut = (
            nn.Sequential(nn.Conv2d(f_in, f_out, 1, stride=2, bias=False), nn.BatchNorm2d(f_out))
            if downsample
            else nn.Sequential()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet20(Network):
    """ResNet-20 for small images; `width` is the first stage's channel count (default 16)."""

    prune_output = True
    default_width = 16
    input_needs = "images of shape (channels, height, width), e.g. CIFAR-10 (3, 32, 32)"

    def __init__(self, num_classes: int, input_shape: tuple[int, ...], width: int | None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(input_shape[0], width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        blocks, current = [], width
        for stage, filters in enumerate((width, 2 * width, 4 * width)):
            for index in range(BLOCKS_PER_STAGE):
                blocks.append(BasicBlock(current, filters, downsample=stage > 0 and index == 0))
                current = filters
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(current, num_classes)

    @classmethod
    def accepts(cls, input_shape: tuple[int, ...]) -> bool:
        return is_image(input_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks(F.relu(self.bn(self.conv(x))))
        return self.fc(out.mean((2, 3)))  # global average pool; deterministic on CUDA
