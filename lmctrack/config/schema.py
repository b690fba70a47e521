"""The words lmctrack's modules share, each defined once: tag keys, roles, run kinds, metric names,
the definitions every number carries, and the verdict rules (stable, matching, earliest k).

Workflows, the CLI, plots and the report import these names instead of repeating literals, so a
new analysis adds its words here and nowhere else.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# --- roles of registered states (version tag "role") -------------------------------------------
INIT = "init"  # W0
REWIND = "rewind"  # Wk, 0 < k < T
TRAINED = "trained"  # W_T (dense, a copy, or a baseline's)
MASK = "mask"  # the subnetwork (Wk, m) an IMP level or the random-pruning baseline defines
SPARSE = "sparse"  # m ⊙ W_T: an IMP subnetwork trained to T
REINIT = "reinit"  # the random-reinitialization baseline's starting state
SEARCH = "search"  # a subnetwork trained on the data that drives IMP's mask search
ALIGNED = "aligned"  # a state whose hidden units were permuted to match another

# --- version and run tag keys (the store prefixes them with "lmctrack.") ----------------------
ROLE = "role"
STEP = "step"
STATE = "state"  # the paper's name: W0, Wk, W_T, (Wk, m)
CONFIG_HASH = "config_hash"
KIND = "kind"
LEVEL = "level"
DENSITY = "density"
LAYER_DENSITIES = "layer_densities"
REWIND_STEP = "rewind_step"
REPLICATE = "replicate"
METHOD = "method"
COPY = "copy"
INIT_SEED = "init_seed"
DATA_ORDER_SEED = "data_order_seed"
AUGMENT_SEED = "augment_seed"
RESET_SCHEDULE = "reset_schedule"
OPTIMIZER_STATE = "optimizer_state"  # a copy's optimizer at k: restart | carry
CARRY = "carry"  # instability.optimizer_state: copies start with the training's state at k
START_STEP = "start_step"
TRAIN_RUN = "train_run"  # on a run that added rewind states: the training run it extends
W0_SOURCE = "w0_source"  # W0 read from the user's checkpoint: the file's path
W0_SHA256 = "w0_sha256"  # and its sha256
OUTPUT_LAYER = "output_layer"  # kept, or replaced by a seeded one for another class count

# --- run params: one name per concept across run kinds, so every run lines up in one table ------
K = "k"  # the rewind step in iterations (of Wk, of the subnetwork (Wk, m))
COPY_SEED = "copy_seed"  # a copy's SGD noise seed
CRITERION = "criterion"  # how a subnetwork was found: imp, random_prune, random_reinit
BN = "bn"
REPLICATES = "replicates"
COPIES = "copies"
NETWORK = "network"
DATA = "data"
# also INIT_SEED, LEVEL and DENSITY (the version tags' names)

# --- run kinds (run tag "kind") ------------------------------------------------------------------
KIND_TRAIN = "train"
KIND_TRAIN_MORE = "train-more"
KIND_FORK = "fork"
KIND_COPY = "copy"
KIND_PAIR = "pair"
KIND_INTERPOLATE = "interpolate"
KIND_IMP = "imp"
KIND_IMP_TRAINING = "imp-training"
KIND_INSTABILITY = "instability"
KIND_SPARSE = "sparse-instability"
KIND_FIND_K = "find-k"  # the search for the earliest stable rewind step

# --- IMP methods: the paper's subnetworks and its two baselines --------------------------------
IMP = "imp"
RANDOM_PRUNE = "random_prune"
RANDOM_REINIT = "random_reinit"
METHODS = (IMP, RANDOM_PRUNE, RANDOM_REINIT)
METHOD_LABELS = {IMP: "IMP", RANDOM_PRUNE: "random pruning", RANDOM_REINIT: "random reinit"}

# --- the paper's thresholds: the defaults of instability.stable_threshold, imp.matching_threshold
STABLE_THRESHOLD = 0.02  # Section 2: an error barrier below 2% is stable
MATCHING_THRESHOLD = 0.002  # Section 4: an accuracy drop below 0.2% is matching

# --- metric names ------------------------------------------------------------------------------
ERROR_BARRIER = "error_barrier"
LOSS_BARRIER = "loss_barrier_linear"
STABLE = "stable"  # the verdict on a barrier, beside its statistics
STATS = ("mean", "std", "median", "n")  # a Stats' numbers, in a metric's name: <name>.<stat>
SPLITS = ("test", "train")
ERROR, LOSS = "error", "loss"
TEST_ERROR = "test_error"  # a trained network's test error (IMP levels, baselines)
TEST_ACCURACY = "test_accuracy"  # 1 - test_error: what Figures 5 and 8 plot against density
STEPS_PER_SECOND = "steps_per_second"  # a training's speed
WK_TEST_ERROR = "Wk.test_error.mean"  # Figure 11: the test error of Wk itself, over the inits
IMP_ACCURACY_DROP = "imp.accuracy_drop"  # dense minus IMP test accuracy, per level
IMP_MATCHING = "imp.matching"  # the matching verdict at that level
TEST_ACCURACY_MEAN = "test_accuracy.mean"  # per method (IMP, a baseline), per level
TRACKED = "tracked"  # Appendix C: a barrier between copies during their training
BASIN = "basin"  # the same-basin check between consecutive IMP levels
DISTANCE = "distance"  # Appendix B: L2 distances (W0 to Wk, Wk to W_T, A to B)
# a path's ends and peak, per split: E(0), E(1), sup_a E(a), L(0), L(1)
ERROR_ALPHA0, ERROR_ALPHA1, ERROR_MAX = "error_alpha0", "error_alpha1", "error_max"
LOSS_ALPHA0, LOSS_ALPHA1 = "loss_alpha0", "loss_alpha1"
# what a run cost (store.cost)
COST_WALL, COST_CPU = "cost.wall_seconds", "cost.cpu_seconds"
COST_GPU_PEAK, COST_DEVICE = "cost.gpu_peak_memory_mb", "cost.device"


def metric(split: str, quantity: str) -> str:
    """A metric's name, always with its split (or group): e.g. 'test.error_barrier'."""
    return f"{split}.{quantity}"


def evaluation(split: str, quantity: str) -> str:
    """The name of a training's periodic evaluation: e.g. 'test_error', 'train_loss'."""
    return f"{split}_{quantity}"


def final_error(split: str) -> str:
    """The error of a training's W_T on a split: e.g. 'final_test_error'."""
    return evaluation(f"final_{split}", ERROR)


DEFINITIONS = {
    ERROR_BARRIER: "sup_a E(a) - mean(E(0), E(1)) over the path (Frankle et al. 2020: instability)",
    LOSS_BARRIER: "max_a L(a) - ((1-a) L(0) + a L(1)) (Entezari et al. 2022)",
    "path": "W(a) = (1 - a) W_A + a W_B, a evenly spaced in [0, 1] including both ends",
    "stable": "the mean error barrier over the samples is below instability.stable_threshold",
    "matching": "the mean test accuracy of the subnetwork's replicates is less than "
    "imp.matching_threshold below the mean of the dense network's replicates",
    "earliest_k": "per sample, the first rewind step from which the verdict holds at every later "
    "step; the median over samples (Figure 9)",
}


# --- statistics and verdicts --------------------------------------------------------------------


@dataclass(frozen=True)
class Stats:
    """Mean and std (the paper's plotted lines), median (Figure 9) and n of a set of samples."""

    mean: float
    std: float
    median: float
    n: int

    @classmethod
    def of(cls, values: Iterable[float]) -> Stats:
        v = list(values)
        if not v:
            raise ValueError("statistics of no samples")
        std = statistics.pstdev(v) if len(v) > 1 else 0.0
        return cls(statistics.fmean(v), std, statistics.median(v), len(v))


def barrier_metrics(split: str, barrier: Stats, stable: bool) -> dict[str, float | bool]:
    """The error barrier over samples at one split and its verdict, named as their metrics:
    e.g. test.error_barrier.mean (.std, .median, .n) and test.stable."""
    name = metric(split, ERROR_BARRIER)
    numbers: dict[str, float | bool] = {f"{name}.{s}": getattr(barrier, s) for s in STATS}
    return {**numbers, metric(split, STABLE): stable}


def stable_label(threshold: float) -> str:
    """The stability threshold's words on a plot or in a table: e.g. 'stable below 2%'."""
    return f"stable below {threshold:.0%}"


def stable(barrier: float, threshold: float) -> bool:
    """The paper's rule: a state is stable when its error barrier is below the threshold (2%)."""
    return barrier < threshold


def matching(accuracy_drop: float, threshold: float) -> bool:
    """The paper's rule: a subnetwork matches when its accuracy drop vs dense is below 0.2%."""
    return accuracy_drop < threshold


def within_one_std(sparse: Stats, dense: Stats) -> bool:
    """Appendix A's looser reading: the subnetwork's mean lies within one std of the dense mean."""
    return sparse.mean >= dense.mean - dense.std


def earliest(verdicts: Sequence[tuple[int, bool]]) -> int | None:
    """The first step k from which the verdict holds at k and every later step (None: never)."""
    ordered = sorted(verdicts)
    for i, (k, _) in enumerate(ordered):
        if all(ok for _, ok in ordered[i:]):
            return k
    return None


def median_or_none(values: Sequence[int | None]) -> float | None:
    """Figure 9's median over samples; a sample that never holds counts as later than all."""
    known = [v for v in values if v is not None]
    if len(known) * 2 <= len(values):  # the median sample never holds
        return None
    ranked = sorted(known) + [None] * (len(values) - len(known))
    mid = len(ranked) // 2
    if len(ranked) % 2:
        return float(ranked[mid])
    low, high = ranked[mid - 1], ranked[mid]
    return None if high is None else (low + high) / 2


# --- alignment (Git Re-Basin, Ainsworth et al. 2022; REPAIR, Jordan et al. 2022) -------------
KIND_ALIGN = "align"
KIND_TRANSPORT = "transport"
KIND_CONNECT = "connect"
ALIGN_METHOD = "align_method"  # weight | activation
ALIGN_SEED = "align_seed"
MAX_LOGIT_DIFF = "max_logit_diff"  # the function check of a permuted state
PERMUTATION = "permutation"  # the permutation's artifact file on the run that registered it
MASK_SOURCE = "mask_source"  # a transported mask: the subnetwork it was found in
WIDTH = "width"
# The three paths between networks from different inits: as trained, B permuted to match A,
# and permuted with REPAIR on the path.
NAIVE = "naive"
PERMUTED = "aligned"
PERMUTED_REPAIR = "aligned_repair"  # a metric name part: no "+"
PAIR_KINDS = (NAIVE, PERMUTED, PERMUTED_REPAIR)
DEFINITIONS.update(
    {
        PERMUTED: "the error barrier between A and B with B's hidden units permuted to match A's "
        "(Git Re-Basin); the permuted B computes B's function (checked)",
        PERMUTED_REPAIR: "the aligned path with every hidden channel of W(a) rescaled to the "
        "interpolation of the endpoints' mean and std on training data (REPAIR)",
    }
)


# --- distillation (MTT, Cazenavette et al. 2022; DM, Zhao & Bilen 2023) and the 2023 follow-up --
KIND_DISTILL = "distill"
KIND_FOLLOWUP = "followup"
DISTILLED_FILE = "distilled.safetensors"  # the distilled set: its artifact and default file name
TENSORS = "tensors"  # data.name of a file of tensors: what `imp --prune-data FILE` loads it as
DISTILLED_SHA256 = "distilled_sha256"  # run tag: sha256 of the written file
DISTILLED_FINGERPRINT = "distilled_fingerprint"  # run tag: the dataset digest IMP's search logs
REAL_DATA = "real"  # the follow-up's two mask searches
DISTILLED_DATA = "distilled"
DEFINITIONS.update(
    {
        "distill_quality": "test accuracy of the network trained from scratch only on the "
        "distilled set vs on a random class-balanced real subset of the same size, same init "
        "and recipe; mean ± population std over seeds",
        "more_stable": "the distilled-data subnetwork's mean test error barrier between copies "
        "trained on the real data is below the real-data one's by more than the larger std of "
        "the two (the same density, the same Wk)",
    }
)


# --- the follow-up analyses of registered states: Hessian diagonal, loss-landscape planes -------
KIND_HESSIAN = "hessian"
KIND_PLANE = "plane"  # through three states
KIND_RANDOM_PLANE = "random_plane"  # two random directions around one state
LAYER_MEAN = "layer_mean/"  # Hessian summary: prefix of each parameter tensor's mean entry


# --- model soups (Wortsman et al. 2022): stable copies averaged into one network -------------
SOUP = "soup"  # role of an averaged state, and the metric group of a fork's soup
KIND_SOUP = "soup"
SOUP_METHOD = "soup_method"  # uniform | greedy
SOUP_KEPT = "soup_kept"  # a greedy soup: the ingredients kept, in the order they were added
UNIFORM, GREEDY = "uniform", "greedy"
SOUP_ERROR = "soup.test_error"  # the soup's test error
COPIES_MEAN_ERROR = "copies.test_error.mean"  # the ingredients' (a fork's copies') mean
COPIES_BEST_ERROR = "copies.test_error.best"
SOUP_VS_MEAN = "soup.minus_mean_copy"  # soup's test error minus the copies' mean
SOUP_MATCHING = "soup.matching"  # the second verdict: the soup matches the mean copy
DEFINITIONS.update(
    {
        "soup": "the uniform soup of a fork's copies: the mean of their weights (masks kept), "
        "BatchNorm statistics re-estimated on training data (Wortsman et al. 2022)",
        "soup_matching": "the soup's test error is at most imp.matching_threshold above the mean "
        "of its copies' test errors",
    }
)


def soup_metrics(soup_error: float, copy_errors: Sequence[float]) -> dict[str, float]:
    """The soup's test error beside its ingredients' mean and best, and the soup minus the mean."""
    mean = statistics.fmean(copy_errors)
    return {
        SOUP_ERROR: soup_error,
        COPIES_MEAN_ERROR: mean,
        COPIES_BEST_ERROR: min(copy_errors),
        SOUP_VS_MEAN: soup_error - mean,
    }


def soup_matches(soup_error: float, mean_copy_error: float, threshold: float) -> bool:
    """The second verdict: averaging the copies costs at most `threshold` of test error."""
    return soup_error - mean_copy_error <= threshold
