"""What a run cost, recorded when it ends so that the UI can compare what each state cost: wall
seconds, CPU seconds (this process and the worker processes it waited for), the device, and the
peak GPU memory where CUDA was used.

Peak GPU memory is a per-process counter: a run that starts resets it, after folding the peak so
far into every run still open, so nested runs each get their own peak and parents keep theirs.
"""

from __future__ import annotations

import os
import sys
import time

from lmctrack.config.schema import COST_CPU, COST_DEVICE, COST_GPU_PEAK, COST_WALL

WALL, CPU, GPU_PEAK, DEVICE = COST_WALL, COST_CPU, COST_GPU_PEAK, COST_DEVICE

_open: list[Meter] = []


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _cuda():
    """torch.cuda when this process has used CUDA, else None (CUDA is never initialised here)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return None
    return torch.cuda


class Meter:
    """The cost of one run, from its start to finish()."""

    def __init__(self) -> None:
        self._wall = time.monotonic()
        self._cpu = _cpu_seconds()
        self._gpu_peak = 0
        _fold_gpu_peak(reset=True)
        _open.append(self)

    def finish(self) -> tuple[dict[str, float], dict[str, str]]:
        """The run's cost as metrics and tags; the meter stops."""
        _fold_gpu_peak(reset=False)
        if self in _open:
            _open.remove(self)
        metrics = {WALL: time.monotonic() - self._wall, CPU: _cpu_seconds() - self._cpu}
        cuda = _cuda()
        if cuda is None or self._gpu_peak == 0:
            return metrics, {DEVICE: "cpu"}
        metrics[GPU_PEAK] = self._gpu_peak / 2**20
        return metrics, {DEVICE: f"cuda ({cuda.get_device_name()})"}


def _fold_gpu_peak(reset: bool) -> None:
    cuda = _cuda()
    if cuda is None:
        return
    peak = cuda.max_memory_allocated()
    for meter in _open:
        meter._gpu_peak = max(meter._gpu_peak, peak)
    if reset:
        cuda.reset_peak_memory_stats()
