"""The default distillation end to end: MNIST-1D, 10 examples per class, the default network.

Times training the MTT experts (with lmctrack.engine.train.train) against the matching itself, runs
the cheap method (DM) too, and reports the standard quality figure for both: test accuracy of the
network trained from scratch only on the distilled set vs on a random real subset of the same size,
mean ± std over 3 seeds, one evaluation recipe for all.

    python benchmarks/distill.py [--quick] [--method mtt|dm|both]

Measured (2 shared cores, load average 11 to 14): experts 3 x 11 epochs 43.7 s (18%), MTT
matching 200 iterations 194.8 s (82%), DM 500 iterations 48.8 s; test accuracy over 3 seeds:
MTT 31.4 ± 2.8%, DM 31.9 ± 0.8%, random real subset of 100 examples 22.7 ± 0.9%.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
from common import default_params, machine

from lmctrack.config.params import TrainConfig
from lmctrack.engine.data import load_dataset
from lmctrack.engine.distill import (
    DmParams,
    MttParams,
    distill_dm,
    distill_mtt,
    evaluate_quality,
    evaluation_recipe,
    train_expert,
)
from lmctrack.engine.models import build_model
from lmctrack.engine.train import Noise

# The reference trains experts with plain SGD (no momentum): the student imitates that.
EXPERT_RECIPE = TrainConfig(lr=0.05, momentum=0.0, batch_size=256, steps="11ep", device="cpu")
EXPERTS = 3
MTT = MttParams(lr_init=EXPERT_RECIPE.lr)
DM = DmParams()
EVAL_STEPS = "300ep"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (about a minute)")
    parser.add_argument("--method", choices=["mtt", "dm", "both"], default="both")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(machine())
    params = default_params()
    dataset = load_dataset(params.data)
    model_cfg = params.model
    mtt, dm, experts_wanted, eval_steps = MTT, DM, EXPERTS, EVAL_STEPS
    if args.quick:
        mtt = dataclasses.replace(MTT, iterations=10)
        dm = dataclasses.replace(DM, iterations=50)
        experts_wanted, eval_steps = 1, "100ep"
    recipe = evaluation_recipe(steps=eval_steps)
    print(
        f"data: {dataset.name}, {dataset.num_examples('train')} training examples; "
        f"model: {model_cfg.name}; evaluation: {eval_steps} of SGD lr {recipe.lr}, 3 seeds"
    )
    results = []
    if args.method in ("mtt", "both"):
        epochs = mtt.epochs_needed()
        began = time.perf_counter()
        experts = [
            train_expert(
                build_model(model_cfg, dataset.num_classes, dataset.input_shape, init_seed=s),
                dataset,
                EXPERT_RECIPE,
                Noise(s, s),
                epochs,
            )
            for s in range(experts_wanted)
        ]
        expert_seconds = time.perf_counter() - began
        distilled = distill_mtt(model_cfg, dataset, experts, mtt)
        total = expert_seconds + distilled.seconds
        print(
            f"MTT: {experts_wanted} experts x {epochs} epochs {expert_seconds:.1f} s "
            f"({100 * expert_seconds / total:.0f}%), matching {mtt.iterations} iterations "
            f"{distilled.seconds:.1f} s ({100 * distilled.seconds / total:.0f}%); loss "
            f"{_mean(distilled.losses[:20]):.3f} -> {_mean(distilled.losses[-20:]):.3f} (first/last "
            f"20 iterations), learned lr {distilled.lr:.4f}"
        )
        results.append(("mtt", distilled))
    if args.method in ("dm", "both"):
        distilled = distill_dm(model_cfg, dataset, dm)
        print(
            f"DM: matching {dm.iterations} iterations {distilled.seconds:.1f} s; loss "
            f"{_mean(distilled.losses[:20]):.2f} -> {_mean(distilled.losses[-20:]):.2f}"
        )
        results.append(("dm", distilled))
    for method, distilled in results:
        began = time.perf_counter()
        quality = evaluate_quality(distilled, dataset, model_cfg, recipe)
        print(f"{method}: {quality.summary()} ({time.perf_counter() - began:.0f} s)")


def _mean(values: list[float]) -> float:
    return sum(values) / max(len(values), 1)


if __name__ == "__main__":
    main()
