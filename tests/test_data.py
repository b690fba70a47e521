"""The data layer: seeded batches (order, epochs, augmentation), real on-disk formats, imports."""

from __future__ import annotations

import itertools
import os
import pickle
import random
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from datafiles import (
    make_cifar_files,
    make_image_folder,
    make_mnist_files,
    make_tensors_file,
)

from lmctrack.config.params import DataConfig
from lmctrack.engine.data import (
    MNIST_STATS,
    ORDER,
    Split,
    StreamedImageDataset,
    TensorDataset,
    dataset_fingerprint,
    generate_mnist1d,
    load_dataset,
    seeded_generator,
)
from lmctrack.errors import LmcError
from lmctrack.workflows.data_files import import_dataset, write_mnist1d

torch.set_num_threads(1)


def take(batches, n):
    return [(x.clone(), y.clone()) for x, y in itertools.islice(batches, n)]


def same(a, b) -> bool:
    return len(a) == len(b) and all(
        torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b)
    )


def ids_dataset(n: int = 10) -> TensorDataset:
    """Example i has input [i] and label i, so a batch shows which examples it holds."""
    split = Split(torch.arange(n).float()[:, None], torch.arange(n))
    return TensorDataset("ids", split, split, num_classes=n)


def image_dataset(n: int = 12, augment: bool = True) -> TensorDataset:
    """Random 3x8x8 images labelled by their index; black pixels normalise to `fill`."""
    x = torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    split = Split(x, torch.arange(n))
    return TensorDataset("img", split, split, n, augment, fill=torch.tensor([-1.0, -2.0, -3.0]))


def crops_and_flips(img: torch.Tensor, fill: torch.Tensor) -> list[torch.Tensor]:
    """Every image the CIFAR augmentation may produce from img (padding 1 pixel at 8x8)."""
    c, h, w = img.shape
    padded = fill.view(c, 1, 1).expand(c, h + 2, w + 2).clone()
    padded[:, 1:-1, 1:-1] = img
    crops = [padded[:, i : i + h, j : j + w] for i in range(3) for j in range(3)]
    return crops + [crop.flip(2) for crop in crops]


# ---- the seeding contract -----------------------------------------------------------------------


def test_same_seeds_same_batches_other_data_order_seed_other_order():
    ds = ids_dataset()
    first = take(ds.train_batches(4, data_order_seed=1, augment_seed=2), 9)
    assert same(first, take(ds.train_batches(4, 1, 2), 9))
    other = take(ds.train_batches(4, data_order_seed=2, augment_seed=2), 9)
    assert not same(first, other)
    assert not same(first, take(ds.train_batches(4, 1, 2), 9)[1:] + first[:1])


def test_batch_at_step_t_does_not_depend_on_start_step():
    for ds in (ids_dataset(), image_dataset()):
        from_zero = take(ds.train_batches(5, 3, 4), 12)
        assert same(take(ds.train_batches(5, 3, 4, start_step=7), 5), from_zero[7:12])


def test_epochs_are_seeded_permutations_and_the_last_batch_is_smaller():
    ds = ids_dataset(10)
    batches = take(ds.train_batches(4, data_order_seed=5, augment_seed=0), 6)
    assert [len(y) for _, y in batches] == [4, 4, 2, 4, 4, 2]
    for epoch in range(2):
        seen = torch.cat([y for _, y in batches[3 * epoch : 3 * epoch + 3]])
        expected = torch.randperm(10, generator=seeded_generator(ORDER, 5, epoch))
        assert torch.equal(seen, expected)
    assert not torch.equal(batches[0][1], batches[3][1])  # each epoch has its own order
    assert ds.iterations_per_epoch(4) == 3


def test_no_augmentation_unless_configured():
    ds = image_dataset(augment=False)
    for x, y in take(ds.train_batches(4, 0, 0), 6):
        assert torch.equal(x, ds.train.x[y])
    with pytest.raises(LmcError, match="needs image inputs"):
        load_dataset(DataConfig(name="mnist1d", num_samples=100, augment=True))


def test_augmentation_is_a_crop_and_flip_seeded_by_the_augment_seed():
    ds = image_dataset(augment=True)
    batches = take(ds.train_batches(4, data_order_seed=0, augment_seed=7), 6)
    changed = 0
    for x, y in batches:
        for img, i in zip(x, y):
            original = ds.train.x[i]
            assert any(torch.equal(img, c) for c in crops_and_flips(original, ds.fill))
            changed += not torch.equal(img, original)
    assert changed > 12
    assert same(batches, take(ds.train_batches(4, 0, 7), 6))
    other = take(ds.train_batches(4, data_order_seed=0, augment_seed=8), 6)
    assert all(torch.equal(ya, yb) for (_, ya), (_, yb) in zip(batches, other))
    assert not all(torch.equal(xa, xb) for (xa, _), (xb, _) in zip(batches, other))


def test_eval_batches_keep_file_order_and_honour_limit():
    ds = ids_dataset(10)
    batches = list(ds.eval_batches("test", batch_size=4, limit=7))
    assert [len(y) for _, y in batches] == [4, 3]
    assert torch.equal(torch.cat([y for _, y in batches]), torch.arange(7))
    assert sum(len(y) for _, y in ds.eval_batches("train", batch_size=3)) == 10
    with pytest.raises(LmcError, match="unknown split 'val'"):
        ds.num_examples("val")


def test_fingerprint_tells_contents_apart():
    a, b = ids_dataset(10), ids_dataset(10)
    assert re.fullmatch(r"[0-9a-f]{16}", dataset_fingerprint(a))
    assert dataset_fingerprint(a) == dataset_fingerprint(b)
    assert dataset_fingerprint(a.to("cpu")) == dataset_fingerprint(b)
    c = ids_dataset(10)
    c.test.x = c.test.x.clone()
    c.test.x[3] = 99.0
    assert dataset_fingerprint(c) != dataset_fingerprint(a)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_data_on_gpu_gives_the_same_batches():
    cpu = take(image_dataset().train_batches(4, 1, 2), 6)
    gpu_ds = image_dataset().to("cuda")
    assert gpu_ds.train.x.is_cuda
    gpu = [(x.cpu(), y.cpu()) for x, y in take(gpu_ds.train_batches(4, 1, 2, device="cuda"), 6)]
    assert same(cpu, gpu)


# ---- embedded datasets ------------------------------------------------------------------------


def test_mnist1d_generation_is_deterministic_and_leaves_global_rngs_alone():
    np.random.seed(123)
    random.seed(123)
    expected_np, expected_py = np.random.rand(), random.random()
    np.random.seed(123)
    random.seed(123)
    first = generate_mnist1d(100)
    assert np.random.rand() == expected_np and random.random() == expected_py
    second = generate_mnist1d(100)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert first["x_train"].shape == (80, 40) and first["x_test"].shape == (20, 40)
    with pytest.raises(LmcError, match="num_samples=5"):
        generate_mnist1d(5)


def test_mnist1d_file_round_trip(tmp_path):
    path = write_mnist1d(tmp_path, 100)
    assert path == tmp_path / "mnist1d" / "mnist1d_100.safetensors"
    from_file = load_dataset(DataConfig(name="mnist1d", root=str(tmp_path), num_samples=100))
    in_memory = load_dataset(DataConfig(name="mnist1d", root=str(tmp_path / "x"), num_samples=100))
    assert dataset_fingerprint(from_file) == dataset_fingerprint(in_memory)
    assert from_file.input_shape == (40,) and from_file.num_classes == 10
    assert from_file.num_examples("train") == 80 and not from_file.augment
    assert abs(float(from_file.train.x.mean())) < 1e-5
    assert abs(float(from_file.train.x.std()) - 1) < 1e-5
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(LmcError, match="lmctrack data mnist1d"):
        load_dataset(DataConfig(name="mnist1d", root=str(tmp_path), num_samples=100))


def test_digits_shapes_and_fixed_split():
    ds = load_dataset(DataConfig(name="digits"))
    assert ds.input_shape == (1, 8, 8) and ds.num_classes == 10 and not ds.augment
    assert ds.num_examples("train") + ds.num_examples("test") == 1797
    assert ds.num_examples("test") == 1797 // 5
    assert ds.train.x.dtype == torch.float32 and ds.train.y.dtype == torch.int64
    assert dataset_fingerprint(ds) == dataset_fingerprint(load_dataset(DataConfig(name="digits")))
    assert load_dataset(DataConfig(name="digits", augment=True)).augment


def test_tensors_dataset(tmp_path):
    path = make_tensors_file(tmp_path / "d.safetensors", n_train=10, n_test=4)
    ds = load_dataset(DataConfig(name="tensors", path=str(path)))
    assert ds.input_shape == (3, 8, 8) and ds.num_classes == 5
    assert (ds.num_examples("train"), ds.num_examples("test")) == (10, 4)
    no_test = make_tensors_file(tmp_path / "t.safetensors", n_train=6, n_test=None)
    ds = load_dataset(DataConfig(name="tensors", path=str(no_test)))
    assert torch.equal(next(ds.eval_batches("test"))[0], next(ds.eval_batches("train"))[0])
    with pytest.raises(LmcError, match="data.path is not set"):
        load_dataset(DataConfig(name="tensors"))
    with pytest.raises(LmcError, match=re.escape(str(tmp_path / "none.safetensors"))):
        load_dataset(DataConfig(name="tensors", path=str(tmp_path / "none.safetensors")))


# ---- torchvision formats read from root -------------------------------------------------------


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10", "cifar100", "imagenet"])
def test_missing_dataset_names_the_folder_and_the_fix(tmp_path, name):
    with pytest.raises(LmcError) as info:
        load_dataset(DataConfig(name=name, root=str(tmp_path)))
    message = str(info.value)
    assert f"not found under {tmp_path / name}:" in message
    assert f"lmctrack data import {name} SRC" in message and "\n" not in message


@pytest.mark.parametrize(
    ("name", "folder"), [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")]
)
def test_mnist_idx_files_through_torchvision(tmp_path, name, folder):
    arrays = make_mnist_files(tmp_path / name / folder / "raw", n_train=12, n_test=6)
    ds = load_dataset(DataConfig(name=name, root=str(tmp_path)))
    assert ds.input_shape == (1, 28, 28) and ds.num_classes == 10 and not ds.augment
    assert (ds.num_examples("train"), ds.num_examples("test")) == (12, 6)
    assert torch.equal(ds.test.y, torch.from_numpy(arrays["t10k_labels"]).long())
    if name == "mnist":
        (mean,), (std,) = MNIST_STATS
        raw = torch.from_numpy(arrays["train_images"]).float().div(255).unsqueeze(1)
        assert torch.allclose(ds.train.x, (raw - mean) / std)


def test_truncated_idx_file_is_unreadable_not_a_traceback(tmp_path):
    raw = tmp_path / "mnist" / "MNIST" / "raw"
    make_mnist_files(raw)
    (raw / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 5)
    with pytest.raises(LmcError, match=f"unreadable files in {re.escape(str(raw))}"):
        load_dataset(DataConfig(name="mnist", root=str(tmp_path)))


@pytest.mark.parametrize(
    ("name", "subdir"), [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")]
)
def test_cifar_python_pickles(tmp_path, name, subdir):
    arrays = make_cifar_files(tmp_path / name / subdir, per_file=3, cifar100=name == "cifar100")
    ds = load_dataset(DataConfig(name=name, root=str(tmp_path)))
    assert ds.input_shape == (3, 32, 32) and ds.augment
    assert ds.num_classes == (100 if name == "cifar100" else 10)
    assert ds.num_examples("train") == len(arrays["train_labels"])
    assert torch.equal(ds.test.y, torch.from_numpy(arrays["test_labels"]).long())
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    raw = torch.from_numpy(arrays["train_images"]).float().div(255)
    assert torch.allclose(ds.train.x, (raw - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1))
    assert torch.allclose(ds.fill, -mean / std)
    assert not load_dataset(DataConfig(name=name, root=str(tmp_path), augment=False)).augment


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_cifar_reader_refuses_pickles_that_run_code(tmp_path):
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    make_cifar_files(folder)
    (folder / "data_batch_3").write_bytes(pickle.dumps({"data": _Exploit()}, protocol=2))
    with pytest.raises(LmcError, match="refusing to load posix.system"):
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path)))


@pytest.mark.slow
def test_imagenet_streamed_from_image_folders(tmp_path):
    make_image_folder(tmp_path / "imagenet", classes=3, per_class=4)
    ds = load_dataset(DataConfig(name="imagenet", root=str(tmp_path)))
    assert isinstance(ds, StreamedImageDataset) and ds.augment
    assert ds.num_classes == 3 and ds.input_shape == (3, 224, 224)
    assert ds.num_examples("train") == 12 and ds.to("cpu") is ds

    def small(augment: bool, workers: int) -> StreamedImageDataset:
        root = tmp_path / "imagenet"
        return StreamedImageDataset("in", root / "train", root / "val", augment, 16, 18, workers)

    rng_before = torch.get_rng_state()
    batches = take(small(True, 0).train_batches(5, 1, 2), 5)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert [tuple(x.shape) for x, _ in batches] == [(5, 3, 16, 16)] * 2 + [(2, 3, 16, 16)] + [
        (5, 3, 16, 16)
    ] * 2
    assert same(batches, take(small(True, 2).train_batches(5, 1, 2), 5))
    assert same(batches[3:], take(small(True, 0).train_batches(5, 1, 2, start_step=3), 2))
    plain = take(small(False, 0).train_batches(5, 1, 2), 5)
    assert all(torch.equal(ya, yb) for (_, ya), (_, yb) in zip(batches, plain))
    assert not torch.equal(batches[0][0], plain[0][0])
    evals = list(small(True, 0).eval_batches("test", batch_size=4, limit=7))
    assert [len(y) for _, y in evals] == [4, 3]
    assert torch.equal(evals[0][1], torch.tensor([0, 0, 0, 0]))
    before = dataset_fingerprint(ds)
    assert before == dataset_fingerprint(small(False, 0))
    shutil.copy(tmp_path / "imagenet/val/class0/0.png", tmp_path / "imagenet/val/class0/9.png")
    assert dataset_fingerprint(small(False, 0)) != before


# ---- importing local copies -------------------------------------------------------------------


def test_import_mnist_from_gzipped_flat_folder(tmp_path):
    source = tmp_path / "downloads"
    arrays = make_mnist_files(source, compress=True)
    placed = import_dataset("mnist", source, tmp_path / "data")
    assert placed == tmp_path / "data" / "mnist"
    assert (placed / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file()
    ds = load_dataset(DataConfig(name="mnist", root=str(tmp_path / "data")))
    assert torch.equal(ds.train.y, torch.from_numpy(arrays["train_labels"]).long())
    with pytest.raises(LmcError, match="already exists; delete it"):
        import_dataset("mnist", source, tmp_path / "data")


def test_import_cifar10_from_archive(tmp_path):
    make_cifar_files(tmp_path / "src" / "cifar-10-batches-py")
    archive = shutil.make_archive(str(tmp_path / "cifar-10-python"), "gztar", tmp_path / "src")
    placed = import_dataset("cifar10", Path(archive), tmp_path / "data")
    assert (placed / "cifar-10-batches-py" / "test_batch").is_file()
    assert load_dataset(DataConfig(name="cifar10", root=str(tmp_path / "data"))).num_classes == 10


def test_import_rejects_wrong_layouts_and_rolls_back_unreadable_data(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LmcError, match=f"no cifar10 in {re.escape(str(tmp_path / 'empty'))}"):
        import_dataset("cifar10", tmp_path / "empty", tmp_path / "data")
    with pytest.raises(LmcError, match="importable datasets: mnist"):
        import_dataset("mnist1d", tmp_path / "empty", tmp_path / "data")
    broken = tmp_path / "broken"
    make_mnist_files(broken)
    (broken / "t10k-labels-idx1-ubyte").write_bytes(b"junk")
    with pytest.raises(LmcError, match="unreadable"):
        import_dataset("mnist", broken, tmp_path / "data")
    assert not (tmp_path / "data" / "mnist").exists()


@pytest.mark.slow
def test_import_inside_a_dvc_repo_tracks_the_folder(tmp_path):
    repo = tmp_path / "project"
    repo.mkdir()
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=repo, check=True)
    source = tmp_path / "downloads"
    make_mnist_files(source)
    placed = import_dataset("mnist", source, repo / "data")
    assert (repo / "data" / "mnist.dvc").is_file()
    assert "path: mnist" in (repo / "data" / "mnist.dvc").read_text()
    assert placed.is_dir()


class _OpensAFile:
    """Unpickling this creates a file: proof that a pickle was (or was not) loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_torchvision_processed_pt_files_are_never_unpickled(tmp_path):
    make_mnist_files(tmp_path / "mnist" / "MNIST" / "raw")
    processed = tmp_path / "mnist" / "MNIST" / "processed"
    processed.mkdir()
    marker = tmp_path / "unpickled"
    for name in ("training.pt", "test.pt"):
        (processed / name).write_bytes(pickle.dumps(_OpensAFile(marker)))
    ds = load_dataset(DataConfig(name="mnist", root=str(tmp_path)))
    assert ds.num_examples("train") == 12 and not marker.exists()


def test_import_mnist_from_a_zip_archive(tmp_path):
    make_mnist_files(tmp_path / "src" / "MNIST" / "raw", compress=True)
    archive = shutil.make_archive(str(tmp_path / "mnist"), "zip", tmp_path / "src")
    placed = import_dataset("mnist", Path(archive), tmp_path / "data")
    assert (placed / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file()
    assert load_dataset(DataConfig(name="mnist", root=str(tmp_path / "data"))).num_classes == 10


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_archive_member_outside_the_folder_is_a_one_line_error(tmp_path, kind):
    payload = tmp_path / "payload"
    payload.write_bytes(b"x")
    archive = tmp_path / f"evil.{kind}"
    if kind == "tar":
        with tarfile.open(archive, "w") as tf:
            tf.add(payload, arcname="../escaped")
    else:
        with zipfile.ZipFile(archive, "w") as zf:
            zf.write(payload, arcname="../escaped")
    with pytest.raises(LmcError) as err:
        import_dataset("mnist", archive, tmp_path / "data" / "deep")
    message = str(err.value)
    assert "member outside" in message and "../escaped" in message and "\n" not in message
    assert not (tmp_path / "data").exists()
