"""Dataset distillation: learn a few synthetic examples per class that train a network well.

Two published methods, pure PyTorch: trajectory matching (MTT, Cazenavette et al. 2022; the one
the 2023 sparse-LMC follow-up drove IMP with) and distribution matching (DM, Zhao & Bilen 2023;
cheap, no experts). The result is written as a `tensors` dataset file that `imp.prune_data` and
`lmctrack imp --prune-data FILE` accept, and judged the standard way (`evaluate_quality`).
"""

from lmctrack.engine.distill.dm import DmParams, distill_dm, distribution_matching_loss, embed
from lmctrack.engine.distill.mtt import (
    MttParams,
    Trajectory,
    distill_mtt,
    expert_snapshot_steps,
    train_expert,
    trajectory_matching_loss,
)
from lmctrack.engine.distill.quality import Quality, evaluate_quality, evaluation_recipe
from lmctrack.engine.distill.synthetic import (
    Distilled,
    SyntheticParams,
    synthetic_dataset,
    write_distilled,
)

__all__ = [
    "Distilled",
    "DmParams",
    "MttParams",
    "Quality",
    "SyntheticParams",
    "Trajectory",
    "distill_dm",
    "distill_mtt",
    "distribution_matching_loss",
    "embed",
    "evaluate_quality",
    "evaluation_recipe",
    "expert_snapshot_steps",
    "synthetic_dataset",
    "train_expert",
    "trajectory_matching_loss",
    "write_distilled",
]
