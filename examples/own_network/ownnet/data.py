"""A dataset factory: small synthetic images, one noisy template per class, as tensors."""

from __future__ import annotations

import torch


def blobs(
    train: int = 256, test: int = 128, classes: int = 4, size: int = 8, noise: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test): 3 x size x size images; the same tensors every call."""
    generator = torch.Generator().manual_seed(0)
    templates = torch.randn(classes, 3, size, size, generator=generator)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, classes, (n,), generator=generator)
        return templates[y] + noise * torch.randn(n, 3, size, size, generator=generator), y

    return (*split(train), *split(test))


def blob_datasets(
    train: int = 256, test: int = 128
) -> tuple[torch.utils.data.Dataset, torch.utils.data.Dataset]:
    """The same images as a (train, test) pair of Datasets, read item by item by lmctrack."""
    x_train, y_train, x_test, y_test = blobs(train, test)
    return (
        torch.utils.data.TensorDataset(x_train, y_train),
        torch.utils.data.TensorDataset(x_test, y_test),
    )
