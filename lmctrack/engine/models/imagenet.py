"""The paper's ImageNet networks, torchvision's ResNet-50 and Inception-v3, never pretrained.

They subclass torchvision's classes so that state_dict names are torchvision's, and build_model
replaces torchvision's initialisation with the reference one. Following open_lth's ResNet
convention, their output layer `fc` is pruned. Inception-v3 is built without the auxiliary
classifier, and its standard input is (3, 299, 299) (75x75 is the smallest it takes). This module
imports torchvision, which is slow, so the registry imports it only when one of these is asked for.
"""

from __future__ import annotations

from torchvision.models import Inception3, ResNet
from torchvision.models.resnet import Bottleneck

from lmctrack.engine.models.base import Network, is_image


class ResNet50(Network, ResNet):
    """torchvision's resnet50 (25.6M parameters with 1000 classes)."""

    prune_output = True
    input_needs = "RGB images of shape (3, height, width) of at least 32x32, e.g. (3, 224, 224)"

    def __init__(self, num_classes: int, input_shape: tuple[int, ...], width: int | None) -> None:
        super().__init__(Bottleneck, [3, 4, 6, 3], num_classes=num_classes)

    @classmethod
    def accepts(cls, input_shape: tuple[int, ...]) -> bool:
        return is_image(input_shape, min_size=32, channels=3)


class InceptionV3(Network, Inception3):
    """torchvision's inception_v3 without the auxiliary classifier (23.8M parameters)."""

    prune_output = True
    input_needs = "RGB images of shape (3, 299, 299) (at least 75x75)"

    def __init__(self, num_classes: int, input_shape: tuple[int, ...], width: int | None) -> None:
        super().__init__(num_classes=num_classes, aux_logits=False, init_weights=False)

    @classmethod
    def accepts(cls, input_shape: tuple[int, ...]) -> bool:
        return is_image(input_shape, min_size=75, channels=3)
