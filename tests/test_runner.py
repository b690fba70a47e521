"""Concurrent trainings: forked single-thread workers give the weights of sequential training."""

import io

import pytest
import torch
from rich.console import Console

from lmctrack.config import DataConfig, ModelConfig, load_params
from lmctrack.data import load_dataset
from lmctrack.progress import board
from lmctrack.runner import TrainJob, default_workers, run_jobs
from lmctrack.train import Noise

# End to end: real trainings, stores or subprocesses (seconds to minutes each).
pytestmark = pytest.mark.slow


def _jobs() -> list[TrainJob]:
    cfg = load_params(None, ["train.steps=60it", "train.batch_size=50"]).train
    return [
        TrainJob(
            key=f"copy{seed}",
            label=f"copy {seed}",
            model=ModelConfig(name="mnist1d_cnn"),
            train=cfg,
            noise=Noise(seed, seed),
            start=0,
            stop=60,
            snapshot_steps=[30],
        )
        for seed in (1, 2, 3)
    ]


def test_concurrent_copies_equal_sequential_ones_under_a_live_board():
    torch.set_num_threads(1)
    data = load_dataset(DataConfig(name="mnist1d", num_samples=600))
    cpu = torch.device("cpu")
    screen = Console(file=io.StringIO(), force_terminal=True, width=100)
    with board(enabled=True, output=screen) as live:
        together = run_jobs(_jobs(), data, cpu, live, workers=3)
        finished = [live.completed(job.key) for job in _jobs()]
    with board(enabled=False) as quiet:
        alone = run_jobs(_jobs(), data, cpu, quiet, workers=1)
    assert finished == [60, 60, 60]  # progress of every worker reached the parent's board
    for a, b in zip(together, alone, strict=True):
        assert all(torch.equal(a.weights[k], b.weights[k]) for k in a.weights)
        assert all(torch.equal(a.snapshots[30][k], b.snapshots[30][k]) for k in a.weights)
    assert not all(
        torch.equal(together[0].weights[k], together[1].weights[k]) for k in together[0].weights
    )


def test_default_workers_keeps_cores_busy_without_oversubscribing_gpus():
    assert default_workers(1, torch.device("cpu")) == 1
    assert 2 <= default_workers(3, torch.device("cpu")) <= 3
    assert default_workers(100, torch.device("cuda")) == 4
