"""What every registry network declares, and the reference initialisation.

The paper's procedures need two facts about a network besides its forward pass: which tensors
IMP may prune and which layer is the output layer. Each network class states them, following
the reference implementation (open_lth): prunable = Conv1d/Conv2d/Linear `.weight` tensors,
never biases or BatchNorm; the output layer is pruned for ResNets but not for LeNet and VGG.
"""

from __future__ import annotations

from typing import ClassVar

from torch import nn

PRUNABLE_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)
BATCHNORM_LAYERS = (nn.BatchNorm1d, nn.BatchNorm2d)


class Network(nn.Module):
    """A registry network, built as `cls(num_classes, input_shape, width)`.

    Subclasses declare `input_needs` (the shapes they take, in words, for error messages) and
    `accepts` (the same as a test), and may override the open_lth conventions below.
    """

    output_layer: ClassVar[str] = "fc"
    prune_output: ClassVar[bool] = False
    default_width: ClassVar[int | None] = None  # None: the network has no `model.width` option
    input_needs: ClassVar[str]

    @classmethod
    def accepts(cls, input_shape: tuple[int, ...]) -> bool:
        raise NotImplementedError

    def prunable_names(self) -> list[str]:
        """state_dict names of the tensors IMP prunes, in module order."""
        return [
            f"{name}.weight"
            for name, module in self.named_modules()
            if isinstance(module, PRUNABLE_LAYERS)
            and (self.prune_output or name != self.output_layer)
        ]


def is_image(input_shape: tuple[int, ...], min_size: int = 1, channels: int | None = None) -> bool:
    """Whether input_shape is (channels, height, width) with both sides at least min_size."""
    return (
        len(input_shape) == 3
        and min(input_shape) >= 1
        and min(input_shape[1:]) >= min_size
        and channels in (None, input_shape[0])
    )


def reference_init(model: nn.Module) -> None:
    """open_lth's initialisation: kaiming normal conv/linear weights, BatchNorm gamma ~ U[0,1] and
    beta = 0. Biases keep PyTorch's default (uniform in +-1/sqrt(fan_in)), as open_lth leaves them.
    """
    for module in model.modules():
        if isinstance(module, PRUNABLE_LAYERS):
            nn.init.kaiming_normal_(module.weight)
        elif isinstance(module, BATCHNORM_LAYERS):
            nn.init.uniform_(module.weight, 0.0, 1.0)
            nn.init.zeros_(module.bias)
