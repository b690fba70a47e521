"""Stacked copies: each copy trained inside one vmapped network equals its training alone."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import torch
from datafiles import make_image_folder
from rich.console import Console

from lmctrack.config.params import DataConfig, ModelConfig, load_params
from lmctrack.engine.batched import Copy, train_copies
from lmctrack.engine.data import StreamedImageDataset, load_dataset
from lmctrack.engine.interpolate import linear_path
from lmctrack.engine.models import build_model, prunable_names
from lmctrack.engine.prune import full_mask, magnitude_prune
from lmctrack.engine.state import State
from lmctrack.engine.train import Noise, read_checkpoint, save_checkpoint, train
from lmctrack.errors import LmcError
from lmctrack.execution.local import BATCHING_DECISIONS, TrainJob, run_job, run_jobs
from lmctrack.execution.progress import board

CPU = torch.device("cpu")
STEPS = 100


@pytest.fixture(scope="module")
def data(data_root):
    """The tiny MNIST-1D, read from the session's file (generated once: conftest.data_root)."""
    torch.set_num_threads(1)
    return load_dataset(DataConfig(name="mnist1d", num_samples=1000, root=str(data_root)))


def _cfg(**kw):
    base = {"lr": 0.05, "momentum": 0.9, "batch_size": 50, "steps": f"{STEPS}it", **kw}
    return load_params(None, [f"train.{k}={v}" for k, v in base.items()]).train


def _jobs(data, name="mnist1d_cnn", masked=False, stop=STEPS, tmp: Path | None = None, **kw):
    model = ModelConfig(name=name)
    network = build_model(model, 10, data.input_shape, 0)
    w0 = network.state_dict()
    mask = magnitude_prune(w0, full_mask(w0, prunable_names(network)), 0.5)
    return [
        TrainJob(
            key=f"copy{seed}",
            label=f"copy {seed}",
            model=model,
            train=_cfg(**kw),
            noise=Noise(seed, seed),
            start=0,
            stop=stop,
            weights=w0,
            mask=mask if masked else None,
            snapshot_steps=[30],
            checkpoint=None if tmp is None else tmp / f"copy{seed}" / "train.safetensors",
        )
        for seed in (1, 2)
    ]


def _relative_distance(a, b) -> float:
    num = sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in a)
    den = sum(float(b[k].double().pow(2).sum()) for k in a)
    return (num / den) ** 0.5


def _barrier_and_errors(results, name, mask, data):
    a, b = (State(r.weights, mask) for r in results)
    template = build_model(ModelConfig(name=name), 10, data.input_shape, 0)
    path = linear_path(template, a, b, data, alphas=5, bn="reset")
    return path.error_barrier("test"), path.curves["test"]["error"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, masked, optimizer",
    [
        ("mnist1d_cnn", False, "sgd"),
        ("mnist1d_cnn", True, "sgd"),
        ("mnist1d_cnn_bn", False, "sgd"),
        ("mnist1d_cnn", True, "adam"),
        ("mnist1d_cnn", False, "adamw"),  # with label smoothing: both are per copy
    ],
)
def test_stacked_copies_match_their_training_alone(data, name, masked, optimizer):
    kw = {"optimizer": optimizer, "weight_decay": 1e-4, "nesterov": True}
    if optimizer != "sgd":
        kw["lr"] = 0.002
    if optimizer == "adamw":
        kw["label_smoothing"] = 0.1
    jobs = _jobs(data, name, masked, **kw)
    with board(enabled=False) as quiet:
        stacked = run_jobs(jobs, data, CPU, quiet, batch_copies="on")
        alone = run_jobs(jobs, data, CPU, quiet, workers=1)
    for s, a, job in zip(stacked, alone, jobs, strict=True):
        # Float-level differences (other kernels) stay tiny until a ReLU kink separates the two
        # trajectories (seen after ~40 steps of a masked copy); the functions stay equal.
        assert _relative_distance(s.snapshots[30], a.snapshots[30]) < 1e-6
        assert _relative_distance(s.weights, a.weights) < 5e-2
        if name.endswith("_bn"):  # each copy kept its own running statistics
            mean = "features.bn1.running_mean"
            torch.testing.assert_close(s.weights[mean], a.weights[mean], rtol=1e-2, atol=1e-3)
            assert not torch.equal(stacked[0].weights[mean], stacked[1].weights[mean])
        for name_, keep in (job.mask or {}).items():
            assert torch.all(s.weights[name_][~keep] == 0)
    barrier_s, errors_s = _barrier_and_errors(stacked, name, jobs[0].mask, data)
    barrier_a, errors_a = _barrier_and_errors(alone, name, jobs[0].mask, data)
    within = 0.005 + 1e-9  # 0.5%: one example of the 200 in this test split
    assert abs(barrier_s - barrier_a) <= within
    assert errors_s[0] == pytest.approx(errors_a[0], abs=within)
    assert errors_s[-1] == pytest.approx(errors_a[-1], abs=within)
    assert errors_s[0] < 0.8  # they learned something


@pytest.mark.slow  # the runner end to end: trainings scheduled, measured, displayed
def test_stacked_copies_report_progress_and_snapshots_under_a_live_board(data):
    screen = Console(file=io.StringIO(), force_terminal=True, width=100)
    with board(enabled=True, output=screen) as live:
        results = run_jobs(_jobs(data, stop=35), data, CPU, live, batch_copies="on")
        assert [live.completed(k) for k in ("copy1", "copy2")] == [35, 35]
    assert all(sorted(r.snapshots) == [30] and r.steps == 35 for r in results)
    with board(enabled=False) as quiet:
        again = run_jobs(_jobs(data, stop=35), data, CPU, quiet, batch_copies="on")
    for a, b in zip(results, again, strict=True):  # stacked training repeats bit for bit
        assert all(torch.equal(a.weights[k], b.weights[k]) for k in a.weights)


def test_interrupted_stacked_group_resumes_bit_identically(data, tmp_path):
    cfg = _cfg(steps="30it")
    template = build_model(ModelConfig(name="mnist1d_cnn_bn"), 10, data.input_shape, 0)
    w0 = template.state_dict()

    def copies(folder: Path | None, stop_at: int | None = None):
        def progress(step, _metrics):
            if step == stop_at:
                raise KeyboardInterrupt

        return [
            Copy(
                dict(w0),
                Noise(s, s),
                checkpoint=None if folder is None else folder / f"{s}.safetensors",
                progress=progress,
            )
            for s in (1, 2)
        ]

    expected, _ = train_copies(template, data, cfg, copies(None), start=0, stop=30)
    with pytest.raises(KeyboardInterrupt):
        train_copies(
            template, data, cfg, copies(tmp_path, 25), start=0, stop=30, checkpoint_every=10
        )
    assert read_checkpoint(tmp_path / "1.safetensors")[0] == 20
    alone = tmp_path / "alone.safetensors"
    alone.write_bytes((tmp_path / "2.safetensors").read_bytes())
    resumed, logs = train_copies(
        template, data, cfg, copies(tmp_path), start=0, stop=30, checkpoint_every=10
    )
    assert [log.resumed_from for log in logs] == [20, 20]
    for a, b in zip(resumed, expected, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
    # a copy's checkpoint has the unbatched engine's format: the copy can resume alone too
    model = build_model(ModelConfig(name="mnist1d_cnn_bn"), 10, data.input_shape, 0)
    log = train(model, data, cfg, start=0, stop=30, noise=Noise(2, 2), checkpoint=alone)
    assert log.resumed_from == 20
    assert _relative_distance(model.state_dict(), expected[1]) < 1e-4


@pytest.mark.slow  # the runner end to end: trainings scheduled, measured, displayed
def test_copies_with_checkpoints_at_different_steps_train_in_processes(data, tmp_path, capsys):
    jobs = _jobs(data, stop=30, tmp=tmp_path)
    run_job(jobs[0], data, CPU, None)  # copy 1 finished: its checkpoint is at step 30
    with board(enabled=False) as quiet:
        results = run_jobs(jobs, data, CPU, quiet, workers=1, batch_copies="on")
    assert "train in processes: their checkpoints are at different steps" in capsys.readouterr().out
    assert results[0].resumed_from == 30 and results[1].resumed_from is None


@pytest.mark.slow
def test_streamed_data_falls_back_to_processes_with_the_reason(tmp_path, capsys):
    make_image_folder(tmp_path)
    data = StreamedImageDataset("folders", tmp_path / "train", tmp_path / "val", False, 16, 18, 0)
    jobs = [
        TrainJob(
            key=f"c{s}",
            label=f"c{s}",
            model=ModelConfig(name="cifar_resnet_20"),
            train=_cfg(batch_size=4),
            noise=Noise(s, s),
            start=0,
            stop=2,
        )
        for s in (1, 2)
    ]
    with board(enabled=False) as quiet:
        results = run_jobs(jobs, data, CPU, quiet, workers=1, batch_copies="on")
    out = capsys.readouterr().out
    assert "batch_copies=on: 2 copies of cifar_resnet_20" in out
    assert "is streamed from disk" in out and len(out.strip().splitlines()) == 1
    assert all(r.steps == 2 for r in results)


def test_a_recipe_that_is_not_per_copy_trains_in_processes_with_the_reason(data, capsys):
    jobs = _jobs(data, stop=2, clip_grad_norm=1.0)
    with board(enabled=False) as quiet:
        results = run_jobs(jobs, data, CPU, quiet, workers=1, batch_copies="on")
    out = capsys.readouterr().out
    assert "train in processes: train.clip_grad_norm is a norm over each copy's whole" in out
    assert all(r.steps == 2 for r in results)


def test_unknown_batch_mode_is_refused(data):
    with board(enabled=False) as quiet, pytest.raises(LmcError, match="batch_copies='yes'.*auto"):
        run_jobs(_jobs(data), data, CPU, quiet, batch_copies="yes")


@pytest.mark.slow  # the runner end to end: trainings scheduled, measured, displayed
def test_auto_measures_once_and_keeps_the_decision(data, capsys):
    BATCHING_DECISIONS.clear()
    with board(enabled=False) as quiet:
        run_jobs(_jobs(data, stop=20), data, CPU, quiet, workers=1, batch_copies="auto")
        run_jobs(_jobs(data, stop=20), data, CPU, quiet, workers=1, batch_copies="auto")
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(BATCHING_DECISIONS) == 1
    ((stacked_faster, measured),) = BATCHING_DECISIONS.values()
    assert isinstance(stacked_faster, bool) and "stacked took" in measured
    assert len(lines) == 2 and all("batch_copies=auto: 2 copies of mnist1d_cnn" in x for x in lines)


# --- checkpoint files -------------------------------------------------------------------------


def test_damaged_snapshot_is_retaken_or_refused(data, tmp_path):
    job = _jobs(data, stop=40, tmp=tmp_path)[0]
    snapshot = job.checkpoint.parent / "snapshot_30.safetensors"
    snapshot.parent.mkdir(parents=True)
    snapshot.write_bytes(b"\x10\x00\x00")  # a kill mid-write by an older version
    first = run_job(job, data, CPU, None)  # no checkpoint yet: step 30 comes again
    assert sorted(first.snapshots) == [30]
    assert read_checkpoint(job.checkpoint)[0] == 40
    snapshot.write_bytes(snapshot.read_bytes()[:100])
    with pytest.raises(LmcError, match="snapshot .*snapshot_30.safetensors is damaged.*delete"):
        run_job(job, data, CPU, None)  # the checkpoint is past step 30: it cannot be retaken


def test_full_disk_while_checkpointing_is_one_line(tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    path = tmp_path / "train.safetensors"
    path.with_suffix(".tmp").symlink_to("/dev/full")  # every write there fails with ENOSPC
    with pytest.raises(LmcError, match=r"^disk full while writing .*train.safetensors; free"):
        save_checkpoint(path, 1, {"w": torch.ones(3)}, {})
    assert not path.exists() and not path.with_suffix(".tmp").exists()
