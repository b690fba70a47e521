"""Time weight matching and activation matching on this machine (ResNet-20 weight
matching should take seconds).

Two networks from different inits (untrained: matching does the same work on any weights);
activation matching reads 2 batches of 250 random CIFAR-shaped images.

    python benchmarks/align.py
"""

from __future__ import annotations

import time

import torch

from lmctrack.config.params import ModelConfig
from lmctrack.engine.align import activation_matching, permutation_spec, weight_matching
from lmctrack.engine.models import build_model

# (network, model.width, label): ResNet-20 at width multipliers 1 and 4, VGG-16 as in the paper
CASES = (
    ("cifar_resnet_20", 16, "1x"),
    ("cifar_resnet_20", 64, "4x"),
    ("cifar_vgg_16", 64, "1x"),
)
SHAPE = (3, 32, 32)


def main() -> None:
    torch.set_num_threads(1)
    batches = [torch.randn(250, *SHAPE, generator=torch.Generator().manual_seed(i)) for i in (0, 1)]
    print(
        f"{'network':<16} {'width':>5} {'params':>11} {'groups':>6} {'weight s':>9} {'act. s':>7}"
    )
    for name, width, label in CASES:
        a, b = (build_model(ModelConfig(name=name, width=width), 10, SHAPE, s) for s in (0, 1))
        spec = permutation_spec(a, SHAPE)
        wa, wb = a.state_dict(), b.state_dict()
        began = time.perf_counter()
        weight_matching(spec, wa, wb)
        weight_s = time.perf_counter() - began
        began = time.perf_counter()
        activation_matching(a, wa, wb, batches, spec)
        activation_s = time.perf_counter() - began
        params = sum(p.numel() for p in a.parameters())
        row = f"{name:<16} {label:>5} {params:>11,} {len(spec.sizes):>6}"
        print(f"{row} {weight_s:>9.2f} {activation_s:>7.2f}")


if __name__ == "__main__":
    main()
