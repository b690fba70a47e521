"""Concurrent trainings: forked single-thread workers give the weights of sequential training."""

import io
import os

import pytest
import torch
from rich.console import Console

from lmctrack.config.params import DataConfig, ModelConfig, load_params
from lmctrack.engine.data import load_dataset
from lmctrack.engine.train import Noise
from lmctrack.execution.local import (
    TrainJob,
    default_workers,
    map_in_processes,
    run_jobs,
    usable_cores,
)
from lmctrack.execution.progress import board

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
    cpu, cores = torch.device("cpu"), usable_cores()
    assert default_workers(1, cpu) == 1
    if cores > 1:  # one round instead of a half-empty second
        assert default_workers(cores + 1, cpu) == cores + 1
    assert default_workers(2 * cores, cpu) == cores  # full rounds: one process per core
    assert default_workers(100, cpu) == cores
    assert default_workers(100, torch.device("cuda")) == 4


def _path_in(dataset, device, seeds: tuple[int, int]) -> tuple[int, dict]:
    """The linear path between two random inits, and the process that computed it."""
    from lmctrack.engine.interpolate import linear_path
    from lmctrack.engine.models import build_model
    from lmctrack.engine.state import State

    model = build_model(ModelConfig(name="mnist1d_cnn_bn"), 10, dataset.input_shape, 0)
    a, b = (
        State(
            build_model(ModelConfig(name="mnist1d_cnn_bn"), 10, dataset.input_shape, s).state_dict()
        )
        for s in seeds
    )
    path = linear_path(model, a, b, dataset, alphas=4, splits=("test",), device=device)
    return os.getpid(), path.curves


def test_map_in_processes_gives_the_results_of_one_after_another_in_order():
    """Pairs of a sweep are interpolated in forked workers: the same curves, in call order."""
    data = load_dataset(DataConfig(name="mnist1d", num_samples=600))
    cpu = torch.device("cpu")
    calls = [((s, s + 1),) for s in range(4)]
    pooled = map_in_processes(_path_in, calls, data, cpu)
    alone = [_path_in(data, cpu, *call) for call in calls]
    assert [curves for _, curves in pooled] == [curves for _, curves in alone]
    assert len({str(curves) for _, curves in alone}) == 4  # four different paths
    assert os.getpid() not in {pid for pid, _ in pooled}  # computed in the workers
