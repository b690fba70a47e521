"""A network on integer tokens and its data: sequences whose class is the token that occurs most
often among the first `classes` tokens of the vocabulary (the rest is filler)."""

from __future__ import annotations

import torch
from torch import nn


def sequences(
    train: int = 256, test: int = 128, vocab: int = 32, length: int = 12, classes: int = 4
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test): int64 token ids (n, length); the same every call."""
    generator = torch.Generator().manual_seed(0)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, classes, (n,), generator=generator)
        x = torch.randint(classes, vocab, (n, length), generator=generator)
        signal = torch.rand(n, length, generator=generator) < 0.4
        return torch.where(signal, y[:, None], x), y

    return (*split(train), *split(test))


class BagOfEmbeddings(nn.Module):
    """Embedding, mean over the sequence, one hidden layer, a linear head."""

    def __init__(self, num_classes: int, vocab: int = 32, dim: int = 16, hidden: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.hidden = nn.Linear(dim, hidden)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.hidden(self.embed(tokens).mean(1))))
