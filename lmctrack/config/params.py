"""params.yaml, validated: every section is a pydantic model that rejects unknown keys.

Also the canonical hash that identifies equal work. The Step type ('2000it', '160ep') lives in
lmctrack.config.steps and is re-exported here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, get_args

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from lmctrack.config import schema
from lmctrack.config.overrides import apply, describe, overrides
from lmctrack.config.steps import Step, StepField
from lmctrack.config.steps import iterations_per_epoch as iterations_per_epoch  # re-exported
from lmctrack.config.user import (
    CROSS_ENTROPY,
    QuietDefaults,
    data_name,
    loss_name,
    optimizer_name,
    schedule_name,
)
from lmctrack.errors import LmcError, existing_file


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _switch_words(cls, value: Any, info: ValidationInfo) -> Any:
        """YAML reads a bare on/off (yes/no, true/false) as a boolean: for a setting whose choices
        include "on" and "off", the boolean means that word."""
        if isinstance(value, bool) and info.field_name is not None:
            choices = get_args(cls.model_fields[info.field_name].annotation)
            if "on" in choices and "off" in choices:
                return "on" if value else "off"
        return value


class DataConfig(Section, QuietDefaults):
    """Which dataset; real datasets are read from `root` and never downloaded. Also the user's own
    data: `package.module:factory` (called with `kwargs`) or a `lmctrack.datasets` plugin name."""

    quiet: ClassVar[dict[str, Any]] = {"kwargs": {}, "validation": None}
    name: Annotated[str, AfterValidator(data_name)] = "mnist1d"
    kwargs: dict[str, Any] = Field(default_factory=dict, description="of a dataset factory")
    root: str = "data"
    num_samples: int = Field(20000, gt=0, description="MNIST-1D: examples generated (train+test)")
    augment: bool | None = Field(None, description="None: the reference convention per dataset")
    path: str | None = Field(None, description="'tensors': safetensors with x_train, y_train")
    validation: float | None = Field(
        None, gt=0, lt=1, description="fraction of the training data held out (greedy soups)"
    )


class ModelConfig(Section, QuietDefaults):
    """A built-in network, a `lmctrack.models` plugin, `torchvision:<builder>`, or the user's own
    class or factory as `package.module:Attr`, called with `kwargs`."""

    quiet: ClassVar[dict[str, Any]] = {"kwargs": {}, "init": "reference", "checkpoint": None}
    name: str = "mnist1d_cnn"
    width: int | None = Field(
        None, gt=0, description="channel / hidden width where the model has one"
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="of its class or factory")
    init: Literal["reference", "default"] = Field(
        "reference", description="reference: open_lth's init of W0; default: the module's own"
    )
    checkpoint: str | None = Field(
        None, description="W0 from this file: safetensors or a torch state_dict (fine-tuning)"
    )


class PruneConfig(Section):
    """Which tensors IMP prunes besides the derived set (every conv / linear weight but the output
    layer's): fnmatch patterns on tensor or module names, e.g. 'fc' or 'layer4.*.weight'."""

    include: list[str] = Field(default_factory=list, description="also prune these tensors")
    exclude: list[str] = Field(default_factory=list, description="never prune these tensors")


class TrainConfig(Section, QuietDefaults):
    """The recipe: optimizer, learning-rate schedule and loss by name or import path (keys added
    after the first release are left out of the hash at their defaults)."""

    quiet: ClassVar[dict[str, Any]] = {
        "optimizer_kwargs": {},
        "schedule_kwargs": {},
        "label_smoothing": 0.0,
        "clip_grad_norm": None,
        "loss": CROSS_ENTROPY,
    }
    optimizer: Annotated[str, AfterValidator(optimizer_name)] = Field(
        "sgd", description="sgd, adam, adamw or 'package.module:Class' (e.g. torch.optim:AdamW)"
    )
    optimizer_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="more arguments of the optimizer, e.g. betas"
    )
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(100, gt=0)
    steps: StepField = Field(default_factory=lambda: Step(it=3000))
    schedule: Annotated[str, AfterValidator(schedule_name)] = Field(
        "constant",
        description="constant, step, linear_decay, cosine, or 'package.module:attr': a function "
        "(step, total) -> lr factor, or a torch lr_scheduler class",
    )
    schedule_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="arguments of an lr_scheduler class"
    )
    milestones: list[StepField] = Field(default_factory=list)
    gamma: float = Field(0.1, gt=0)
    warmup: StepField = Field(default_factory=Step)
    final_lr: float = Field(0.0, ge=0, description="linear_decay, cosine: learning rate at T")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="of the cross-entropy loss")
    clip_grad_norm: float | None = Field(
        None, gt=0, description="clip the gradients' total norm to this before each step"
    )
    loss: Annotated[str, AfterValidator(loss_name)] = Field(
        CROSS_ENTROPY, description="cross_entropy or 'package.module:fn' (logits, labels) -> loss"
    )
    rewind_steps: list[StepField] = Field(default_factory=list, description="states Wk to register")
    eval_every: StepField | None = None
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where networks train")

    @model_validator(mode="after")
    def _trains(self) -> TrainConfig:
        if self.steps == Step():
            raise ValueError("train.steps is 0: a training needs at least one step, e.g. 3000it")
        if self.eval_every is not None and self.eval_every == Step():
            raise ValueError("train.eval_every is 0: give a positive step such as 500it, or null")
        if self.label_smoothing and self.loss != CROSS_ENTROPY:
            raise ValueError(
                "train.label_smoothing applies to the cross-entropy loss only; smooth inside "
                f"{self.loss} or remove train.label_smoothing"
            )
        return self


class SeedConfig(Section):
    """Init decides W0; data order and augmentation are the SGD noise, each its own seed."""

    init: int = 0
    data_order: int = 0
    augment: int = 0


class InstabilityConfig(Section, QuietDefaults):
    quiet: ClassVar[dict[str, Any]] = {"optimizer_state": "restart"}
    rewind_steps: list[StepField] = Field(default_factory=lambda: [Step(it=0)])
    inits: int = Field(3, gt=0)
    copies: int = Field(3, ge=2, description="copies per state; every pair is interpolated")
    alphas: int = Field(30, ge=2, description="points on a path, both ends included")
    splits: list[Literal["test", "train"]] = Field(default_factory=lambda: ["test", "train"])
    bn: Literal["interpolate", "reset", "repair"] = "reset"
    reset_schedule: bool = False
    optimizer_state: Literal["restart", "carry"] = Field(
        "restart",
        description="copies of Wk start with a fresh optimizer (the paper) or carry the "
        "training's optimizer state at k",
    )
    track_every: StepField | None = None
    stable_threshold: float = Field(
        schema.STABLE_THRESHOLD, gt=0, description="barrier below this is stable"
    )
    eval_limit: int | None = Field(
        None, gt=0, description="examples per split evaluated on the path (None: all)"
    )
    bn_limit: int | None = Field(
        None,
        gt=0,
        description="train examples to recompute BatchNorm statistics or measure REPAIR's "
        "(None: all)",
    )
    candidates: list[StepField] | None = Field(
        None, description="find-k: rewind steps searched (None: 0 and 2^i it up to T/2)"
    )
    confidence: float = Field(
        0.95, gt=0, lt=1, description="find-k: level of the one-sided bounds that decide"
    )
    max_copies: int | None = Field(
        None,
        ge=2,
        description="find-k: most copies of one Wk a probe forks, one added at a time "
        "(None: inits x copies, the grid's trainings at one k)",
    )

    @model_validator(mode="after")
    def _tracks(self) -> InstabilityConfig:
        if self.track_every is not None and self.track_every == Step():
            raise ValueError("instability.track_every is 0: give a positive step, or null")
        return self


class ImpConfig(Section):
    rewind: StepField = Field(default_factory=Step, description="rewind step k, e.g. 500it")
    levels: int = Field(5, ge=1, description="pruning levels (density (1 - fraction)^L)")
    fraction: float = Field(0.2, gt=0, lt=1)
    one_shot: bool = Field(False, description="prune to imp.density at once")
    density: float | None = Field(None, gt=0, lt=1, description="one-shot: weights kept")
    strategy: Literal["global", "layerwise"] = "global"
    criterion: str = Field(
        "magnitude", description="prune by: magnitude, random (prune.CRITERIA) or 'pkg.mod:fn'"
    )
    matching_threshold: float = Field(
        schema.MATCHING_THRESHOLD, ge=0, description="accuracy drop below this matches"
    )
    prune_data: DataConfig | None = None
    replicates: int = Field(
        3, ge=1, description="independent IMP runs from Wk, each with its own SGD noise per level"
    )
    reinit_start: Literal["rewind", "zero"] = Field(
        "rewind", description="random reinit trains from step k (paper, Fig. 22) or from 0"
    )
    same_basin: bool = Field(True, description="interpolate consecutive levels' W_T (replicate 0)")
    baseline_levels: list[int] | None = Field(
        None, description="levels at which the random baselines train (None: every level)"
    )


class SparseConfig(Section):
    """The sparse sweep (Figures 6, 7, 9): IMP at every rewind step, its subnetworks forked."""

    rewind_steps: list[StepField] | None = Field(None, description="None: instability.rewind_steps")
    inits: int = Field(1, gt=0, description="initializations; samples are inits x pairs")
    copies: int = Field(3, ge=2, description="copies per subnetwork; every pair is interpolated")
    levels: list[int] = Field(
        default_factory=list, description="IMP levels forked at every k (empty: the last level)"
    )


class RunnerConfig(Section):
    """Where trainings run; the workflows do not know which."""

    backend: Literal["local", "ray"] = "local"
    address: str | None = Field(None, description="ray: 'auto', 'ray://host:10001', None: local")
    cpus: float = Field(1.0, gt=0, description="ray: CPUs per training")
    gpus: float = Field(0.0, ge=0, description="ray: GPUs per training (fractions share one)")
    batch_copies: Literal["auto", "on", "off"] = Field(
        "off", description="train a fork's copies as one stacked model"
    )
    checkpoints: str | None = Field(
        None, description="ray: a folder every node mounts, for resume checkpoints"
    )


class StoreConfig(Section):
    tracking_uri: str | None = Field(None, description="None: sqlite store in the project folder")


class AlignConfig(Section):
    """Networks from different inits compared modulo a permutation of their hidden units (Git
    Re-Basin), and the `lmctrack connect` sweeps."""

    method: Literal["weight", "activation"] = Field("weight", description="units matched by")
    seed: int = Field(0, description="weight matching: seed of the order of its layer updates")
    inits: int = Field(2, ge=2, description="connect: networks from init seeds base, base+1, ...")
    widths: list[Annotated[int, Field(gt=0)]] = Field(
        default_factory=list, description="connect: model.width of each network of the width sweep"
    )
    data_limit: int | None = Field(
        5000, gt=0, description="train examples activation matching reads (None: all)"
    )


class ExpertConfig(Section):
    """How MTT's experts train on the real data: plain SGD, as in the reference (the student
    imitates it); they are ordinary trainings registered at every epoch."""

    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    batch_size: int = Field(256, gt=0)


class DistillConfig(Section):
    """`lmctrack distill`: a few synthetic examples per class (MTT or DM; lmctrack.engine.distill)
    and their quality: test accuracy of a network trained only on them vs on a random real
    subset."""

    method: Literal["mtt", "dm"] = Field("mtt", description="distillation by")
    images_per_class: int = Field(10, ge=1)
    init: Literal["real", "noise"] = "real"
    seed: int = 0
    iterations: int | None = Field(None, gt=0, description="None: 200 for mtt, 500 for dm")
    lr_img: float | None = Field(None, gt=0, description="None: 10 for mtt, 1 for dm")
    syn_steps: int = Field(20, gt=0, description="mtt: student steps per iteration")
    expert_epochs: int = Field(2, gt=0, description="mtt: M, the epochs the student retraces")
    max_start_epoch: int = Field(10, gt=0, description="mtt: start epoch t < this")
    lr_lr: float = Field(1e-7, ge=0, description="mtt: learning rate of the student's lr")
    lr_init: float | None = Field(None, gt=0, description="mtt: None: the experts' lr")
    batch_syn: int | None = Field(None, gt=0, description="mtt: None: the whole synthetic set")
    experts: int = Field(3, gt=0, description="mtt: expert trajectories (init seeds 0, 1, ...)")
    expert: ExpertConfig = Field(default_factory=ExpertConfig)
    batch_real: int = Field(256, gt=0, description="dm: real examples per class and iteration")
    eval_steps: StepField = Field(default_factory=lambda: Step(ep=300))
    eval_lr: float = Field(0.01, gt=0)
    eval_seeds: int = Field(3, gt=0, description="quality: networks per training set")


class FollowupConfig(Section):
    """`lmctrack followup`: real-data vs distilled-data IMP from the same Wk (2023 follow-up),
    kept small by default: few levels, one replicate, two copies, a small Hessian sample."""

    levels: int = Field(2, ge=1, description="IMP levels of both searches (density 0.8^L)")
    replicates: int = Field(1, ge=1)
    level: int | None = Field(None, ge=1, description="level forked on the real data (None: last)")
    copies: int = Field(2, ge=2, description="copies per subnetwork; every pair is interpolated")
    hessian_samples: int = Field(20, gt=0)
    hessian_limit: int = Field(500, gt=0, description="train examples of the Hessian's loss")
    plane_grid: int = Field(7, ge=3)


class Params(Section):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    seeds: SeedConfig = Field(default_factory=SeedConfig)
    instability: InstabilityConfig = Field(default_factory=InstabilityConfig)
    imp: ImpConfig = Field(default_factory=ImpConfig)
    prune: PruneConfig = Field(default_factory=PruneConfig)
    sparse: SparseConfig = Field(default_factory=SparseConfig)
    align: AlignConfig = Field(default_factory=AlignConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    followup: FollowupConfig = Field(default_factory=FollowupConfig)
    runner: RunnerConfig = Field(default_factory=RunnerConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)

    @model_validator(mode="after")
    def _one_shot_needs_density(self) -> Params:
        if self.imp.one_shot and self.imp.density is None:
            raise ValueError("imp.one_shot needs imp.density (the fraction of weights to keep)")
        return self


Sets = Mapping[str, Any] | Sequence[str] | None


def load_params(path: Path | None, sets: Sets = (), base: dict | None = None) -> Params:
    """Read params.yaml (or `base`, or the defaults, when path is None) and apply the overrides:
    typed `{"section.key": value}` (lmctrack.config.overrides), or `section.key=value` strings."""
    tree: dict[str, Any] = json.loads(json.dumps(base)) if base else {}
    source = "defaults" if base is None else "params"
    if path is not None:
        source = f"params file {path}"
        existing_file(path, f"params file {path}", "pass --params with an existing YAML file")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise LmcError(f"{path}: malformed YAML{where}; fix the syntax and re-run") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise LmcError(
                f"{path}: expected sections (data:, model:, train:, ...) at the top level"
            )
        tree = loaded or {}
    typed = overrides(sets)
    apply(tree, typed)
    try:
        return Params.model_validate(tree)
    except ValidationError as e:
        raise LmcError(describe(e, source, typed)) from None


def resolve(params: Path | str | Params | None, sets: Sets = None) -> Params:
    """Params from a file (default ./params.yaml when present) or an object, with overrides."""
    if isinstance(params, Params):
        return load_params(None, sets, base=params.model_dump(mode="json")) if sets else params
    path = Path(params) if params is not None else None
    if path is None and Path("params.yaml").is_file():
        path = Path("params.yaml")
    return load_params(path, sets)


def config_hash(*sections: BaseModel | dict | str | None) -> str:
    """A short canonical hash: equal work gets equal hashes whatever the key order or spelling."""
    payload = [s.model_dump(mode="json") if isinstance(s, BaseModel) else s for s in sections]
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
