"""Which analyses run on the model zoos' architectures: on each network, a short train,
a fork of two copies with its barrier, interpolation with `bn: reset`, one IMP level, and
weight-matching alignment with REPAIR on the path; each cell is `ok` (with a number) or the
one-line reason it cannot run. Small inputs (3x32x32 images, 4 classes; tokens of length 12), a
few steps: this measures what works, not accuracy.

    pip install -e '.[zoo]'          # timm
    python benchmarks/zoo.py [--only NAME ...]

A cell that is not an LmcError is a bug and is printed as `BUG <type>: <message>`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

import lmctrack as lmc
from lmctrack.config.params import Params, load_params
from lmctrack.errors import LmcError

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "examples" / "own_network")]  # zoo:, ownnet.

TIMM = "timm:create_model"
IMAGES = "zoo:images"
# name -> (model.name, model.kwargs, data.name)
ZOO = {
    "ResNet-18 (torchvision)": ("torchvision:resnet18", {"num_classes": 4}, IMAGES),
    "MobileNetV3-S (torchvision)": ("torchvision:mobilenet_v3_small", {"num_classes": 4}, IMAGES),
    "EfficientNet-B0 (timm)": (TIMM, {"model_name": "efficientnet_b0", "num_classes": 4}, IMAGES),
    "ConvNeXt-atto (timm)": (TIMM, {"model_name": "convnext_atto", "num_classes": 4}, IMAGES),
    "ViT-tiny/8 (timm)": (
        TIMM,
        {"model_name": "vit_tiny_patch16_224", "num_classes": 4, "img_size": 32, "patch_size": 8},
        IMAGES,
    ),
    "Embedding bag (tokens)": ("ownnet.tokens:BagOfEmbeddings", {}, "ownnet.tokens:sequences"),
}
ANALYSES = ("train", "fork barrier", "interpolate bn=reset", "IMP 1 level", "align + REPAIR")


def images(train: int = 64, test: int = 32) -> tuple[torch.Tensor, ...]:
    """Random 3x32x32 images around one template per class (4 classes); the same every call."""
    generator = torch.Generator().manual_seed(0)
    templates = torch.randn(4, 3, 32, 32, generator=generator)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, 4, (n,), generator=generator)
        return templates[y] + torch.randn(n, 3, 32, 32, generator=generator), y

    return (*split(train), *split(test))


def params(model: str, kwargs: dict, data: str, store: Path) -> Params:
    tree = {
        "data": {"name": data, "kwargs": {"train": 64, "test": 32}},
        "model": {"name": model, "kwargs": kwargs, "init": "default"},
        "train": {
            "optimizer": "adamw",
            "lr": 1e-3,
            "schedule": "cosine",
            "warmup": "2it",
            "batch_size": 16,
            "steps": "12it",
            "rewind_steps": ["0it", "6it"],
            "device": "cpu",
        },
        "instability": {"inits": 1, "copies": 2, "alphas": 3, "splits": ["test"], "bn": "reset"},
        "imp": {"rewind": "6it", "levels": 1, "replicates": 1, "baseline_levels": []},
        "store": {"tracking_uri": f"sqlite:///{store / 'mlflow.db'}"},
    }
    return load_params(None, base=tree)


def cell(step: Callable[[], str]) -> str:
    """What one analysis gave: ok and its number, the LmcError's line, or the bug."""
    began = time.perf_counter()
    try:
        return f"ok {step()} ({time.perf_counter() - began:.0f} s)"
    except LmcError as e:
        return str(e).splitlines()[0]
    except Exception as e:  # a bug: to fix, not to document
        return f"BUG {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def row(name: str, p: Params) -> list[str]:
    state: dict = {}

    def train() -> str:
        state["run"] = run = lmc.train(p)
        state["other"] = lmc.train(p, sets={"seeds.init": 1})
        return f"{len(run.states)} states"

    def fork() -> str:
        state["fork"] = f = lmc.fork(state["run"].at(6), 2, params=p)
        return f"barrier {f.barrier('test').mean:.3f}"

    def interpolate() -> str:
        a, b = state["fork"].copies
        return f"barrier {lmc.interpolate(a, b, params=p).error_barrier('test'):.3f}"

    def imp() -> str:
        return f"density {lmc.imp(state['run'].at(6), params=p).rows[0].density:.2f}"

    def align() -> str:
        a, b = state["run"].final, state["other"].final
        aligned = lmc.align(a, b, method="weight", params=p)
        repaired = lmc.interpolate(a, aligned.uri, params=p, sets={"instability.bn": "repair"})
        return (
            f"logit diff {aligned.max_logit_diff:.1e}, barrier {repaired.error_barrier('test'):.3f}"
        )

    cells = [cell(train)]
    for step in (fork, interpolate, imp, align):
        cells.append(cell(step) if "run" in state else "not trained")
    print(f"{name}: " + " | ".join(cells), flush=True)
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="names in the table (a prefix is enough)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = {}
    with tempfile.TemporaryDirectory(prefix="lmctrack-zoo-") as tmp:
        for i, (name, (model, kwargs, data)) in enumerate(ZOO.items()):
            if args.only and not any(name.startswith(o) for o in args.only):
                continue
            store = Path(tmp) / str(i)
            store.mkdir()
            rows[name] = row(name, params(model, kwargs, data, store))
    print("\n| architecture | " + " | ".join(ANALYSES) + " |")
    print("|---" * (len(ANALYSES) + 1) + "|")
    for name, cells in rows.items():
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
