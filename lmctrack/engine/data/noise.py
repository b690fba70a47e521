"""The two kinds of SGD noise as seeded streams: which examples iteration t trains on (data order)
and how they are augmented, each a function of its seed and t alone (see lmctrack.engine.data)."""

from __future__ import annotations

import hashlib

import torch

from lmctrack.config.params import iterations_per_epoch
from lmctrack.errors import LmcError

Device = torch.device | str
ORDER, AUGMENT = 0, 1  # stream tags of the two kinds of SGD noise


def derive_seed(*parts: int) -> int:
    """One 63-bit seed from several integers, so (seed, 1) and (seed + 1, 0) give unrelated
    streams."""
    digest = hashlib.sha256(",".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def seeded_generator(*parts: int) -> torch.Generator:
    """A CPU generator seeded with derive_seed(*parts)."""
    return torch.Generator().manual_seed(derive_seed(*parts))


class EpochOrder:
    """The examples of each iteration: slices of a per-epoch permutation (the last one smaller)."""

    def __init__(
        self, num_examples: int, batch_size: int, data_order_seed: int, device: Device = "cpu"
    ):
        if batch_size <= 0:
            raise LmcError(f"batch size {batch_size} is not positive; set train.batch_size >= 1")
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.seed = data_order_seed
        self.device = torch.device(device)
        self.iterations_per_epoch = iterations_per_epoch(num_examples, batch_size)
        self._epoch = -1
        self._perm = torch.empty(0, dtype=torch.long)

    def epoch(self, e: int) -> torch.Tensor:
        """The order of epoch e (cached: consecutive iterations reuse it)."""
        if e != self._epoch:
            perm = torch.randperm(
                self.num_examples, generator=seeded_generator(ORDER, self.seed, e)
            )
            self._perm, self._epoch = perm.to(self.device), e
        return self._perm

    def batch(self, t: int) -> torch.Tensor:
        """Indices of the examples that iteration t trains on."""
        e, b = divmod(t, self.iterations_per_epoch)
        return self.epoch(e)[b * self.batch_size : (b + 1) * self.batch_size]


def random_crop_flip(
    x: torch.Tensor, fill: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Batched random crop (padding 1/8 of the side, 4 pixels at 32x32) plus horizontal flip.

    `fill` is a black pixel per channel after normalisation: the reference pads images with zeros
    before normalising. Offsets and flips are drawn on the CPU generator, whatever x's device.
    """
    b, c, h, w = x.shape
    pad = max(1, h // 8)
    padded = x.new_empty(b, c, h + 2 * pad, w + 2 * pad)
    padded[:] = fill.to(x.device, x.dtype).view(1, -1, 1, 1)
    padded[:, :, pad : pad + h, pad : pad + w] = x
    top = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
    left = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
    flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
    # Two gathers (rows, then columns); a flip is the column index read backwards.
    span_h, span_w = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    rows = (top[:, None] + span_h).view(b, 1, h, 1).expand(b, c, h, w + 2 * pad)
    cols = left[:, None] + torch.where(flip[:, None], w - 1 - span_w, span_w)
    return padded.gather(2, rows).gather(3, cols.view(b, 1, 1, w).expand(b, c, h, w))
