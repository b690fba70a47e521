"""Algorithm 2: iterative magnitude pruning with rewinding to step k, and its baselines.

Level 0 is the dense network trained from Wk. Each level prunes the lowest-magnitude remaining
prunable weights of the last W_T globally (20% by default), rewinds the rest to Wk, and trains
the subnetwork (Wk, m) to T again. Each mask is registered as the subnetwork (Wk, m) it defines,
so `lmctrack fork --from MASK_URI` measures its instability directly. The random-pruning and
random-reinitialization baselines train the same sparsities; the matching verdict compares each
subnetwork's test accuracy with the dense network's (drop < 0.2%).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from lmctrack.config import config_hash
from lmctrack.runner import TrainJob, run_jobs
from lmctrack.state import State
from lmctrack.train import Noise
from lmctrack.workflows.common import PARAMS_ARTIFACT, Context, discard_checkpoints
from lmctrack.workflows.interpolate import interpolate_states
from lmctrack.workflows.train import TrainedRun

IMP_ARTIFACT = "imp.json"


@dataclass
class Level:
    """One IMP level: the mask (registered as the subnetwork (Wk, m)) and its trained W_T."""

    level: int
    density: float
    mask_uri: str
    trained_uri: str
    test_error: float


def _evaluate_uri(ctx: Context, uri: str) -> float:
    from lmctrack.evaluate import evaluate, load_into

    model = load_into(ctx.template(), ctx.store.load_state(uri))
    return evaluate(model, ctx.dataset, "test", device=ctx.device).error


def _train_one(ctx: Context, key: str, label: str, state: State, start: int, seed) -> State:
    """Train a (sparse) state to T with the run's noise; resumable through its checkpoint."""
    job = TrainJob(
        key=key,
        label=label,
        model=ctx.params.model,
        train=ctx.params.train,
        noise=Noise(seed.data_order, seed.augment),
        start=start,
        stop=ctx.total_steps,
        weights=state.weights,
        mask=state.mask,
        checkpoint=ctx.store.checkpoint_dir(key) / "train.safetensors",
    )
    result = run_jobs([job], ctx.dataset, ctx.device, ctx.board)[0]
    return State(result.weights, state.mask)


def sparsity_tags(level: int, mask) -> dict[str, str]:
    from lmctrack.prune import density, layer_densities

    return {
        "level": str(level),
        "density": f"{density(mask):.6f}",
        "layer_densities": json.dumps({k: round(v, 6) for k, v in layer_densities(mask).items()}),
    }


def run_imp(
    ctx: Context,
    run: TrainedRun,
    k: int,
    search: Context | None = None,
    with_baselines: bool = True,
) -> dict:
    """IMP from the dense run's Wk; `search` is another dataset that drives the mask search.

    `with_baselines=False` skips the random baselines and the same-basin check (the sparse sweep only
    needs the masks).
    """
    from lmctrack.models import prunable_names
    from lmctrack.prune import full_mask, magnitude_prune, prune_to_density

    cfg = ctx.params.imp
    search = search or ctx
    wk_uri = run.at(k)
    wk = ctx.store.load_state(wk_uri)
    seed = ctx.params.seeds
    levels_n = 1 if cfg.one_shot else cfg.levels
    # Level n depends on Wk, the pruning settings and the search data (by content, not by where
    # its file is), not on how many levels follow it: `--levels 3` after `--levels 2` reuses
    # levels 1 and 2.
    pruning = cfg.model_dump(
        mode="json", exclude={"levels", "rewind", "matching_threshold", "prune_data"}
    )
    chain = ctx.training_hash(wk_uri, pruning, search.dataset_fingerprint, "imp")
    key = config_hash(chain, levels_n, with_baselines)
    finished = ctx.store.find_run(ctx.model_name, key)
    if finished is not None:
        result = json.loads(ctx.store.run_artifact(finished, IMP_ARTIFACT).read_text())
        return {**result, "reused": True}
    dense_error = _evaluate_uri(ctx, run.final)
    mask = full_mask(wk.weights, prunable_names(ctx.template()))
    levels: list[Level] = []
    with ctx.store.run(
        ctx.model_name,
        f"imp k={k}" + (" one-shot" if cfg.one_shot else ""),
        params={"source": wk_uri, "k": k, **cfg.model_dump(mode="json")},
        tags={"config_hash": key, "kind": "imp"},
    ) as imp_run:
        imp_run.log_json(ctx.params.model_dump(mode="json"), PARAMS_ARTIFACT)
        # Level 0: the dense network trained from Wk with the run's own noise is the run's W_T.
        last_trained = run.final if search is ctx else None
        if last_trained is None:  # IMP on other data: level 0 is Wk trained on that data
            searched = _train_one(search, f"{chain}-search0", "search level 0", wk, k, seed)
            last_weights = searched.weights
            last_trained = imp_run.save_state(
                searched,
                model_name=ctx.model_name,
                role="search",
                step=ctx.total_steps,
                tags={"level": "0", "state": "W_T (prune data)", "rewind_step": str(k)},
                parents=[wk_uri],
                dataset=(search.params.data.name, search.dataset_fingerprint),
            )
            discard_checkpoints(ctx, f"{chain}-search0")
        else:
            last_weights = ctx.store.load_state(last_trained).weights
        for level in range(1, levels_n + 1):
            level_key = f"{chain}-level{level}"
            done = ctx.store.find_run(ctx.model_name, level_key)
            if done is not None:  # an interrupted IMP resumes after its last finished level
                by_role = {info.tags["role"]: info for info in ctx.store.run_states(done)}
                mask_uri, trained_uri = by_role["mask"].uri, by_role["sparse"].uri
                mask = ctx.store.load_state(mask_uri).mask
                trained = ctx.store.load_state(trained_uri)
                tags = sparsity_tags(level, mask)
                error = float(ctx.store.run_metrics(done)["test_error"])
                if search is not ctx:
                    last_trained = by_role["search"].uri
                    last_weights = ctx.store.load_state(last_trained).weights
            else:
                if cfg.one_shot:
                    mask = prune_to_density(last_weights, mask, cfg.density, cfg.strategy)
                else:
                    mask = magnitude_prune(last_weights, mask, cfg.fraction, cfg.strategy)
                tags = sparsity_tags(level, mask)
                with ctx.store.run(
                    ctx.model_name,
                    f"imp level {level}",
                    parent=imp_run,
                    tags={"kind": "imp-level", "config_hash": level_key},
                ) as lvl:
                    lvl.log_json(ctx.params.model_dump(mode="json"), PARAMS_ARTIFACT)
                    mask_uri = lvl.save_state(
                        State(wk.weights, mask),
                        model_name=ctx.model_name,
                        role="mask",
                        step=k,
                        tags={**tags, "state": f"(W{k}, m{level})", "rewind_step": str(k)},
                        parents=[wk_uri] + ([last_trained] if last_trained else []),
                    )
                    sub = State(wk.weights, mask)
                    if search is not ctx:
                        searched = _train_one(
                            search, f"{level_key}-search", f"search level {level}", sub, k, seed
                        )
                        last_weights = searched.weights
                        last_trained = lvl.save_state(
                            searched,
                            model_name=ctx.model_name,
                            role="search",
                            step=ctx.total_steps,
                            tags={**tags, "state": "W_T (prune data)"},
                            parents=[mask_uri],
                            dataset=(search.params.data.name, search.dataset_fingerprint),
                        )
                    trained = _train_one(ctx, level_key, f"imp level {level}", sub, k, seed)
                    trained_uri = lvl.save_state(
                        trained,
                        model_name=ctx.model_name,
                        role="sparse",
                        step=ctx.total_steps,
                        tags={**tags, "state": "W_T", "rewind_step": str(k)},
                        parents=[mask_uri],
                        dataset=(ctx.params.data.name, ctx.dataset_fingerprint),
                    )
                    error = _evaluate_uri(ctx, trained_uri)
                    lvl.log_metrics({"test_error": error, "density": float(tags["density"])})
                discard_checkpoints(ctx, level_key)
                discard_checkpoints(ctx, f"{level_key}-search")
            if search is ctx:
                last_weights, last_trained = trained.weights, trained_uri
            levels.append(Level(level, float(tags["density"]), mask_uri, trained_uri, error))
        baselines = run_baselines(ctx, imp_run, run, k, levels) if with_baselines else []
        basins = same_basin(ctx, imp_run, run.final, levels) if with_baselines else []
        rows = table_rows(dense_error, levels, baselines, cfg.matching_threshold)
        for row in rows:
            imp_run.log_metrics(
                {
                    f"{name}_accuracy": row[name]
                    for name in ("imp", "random_prune", "random_reinit")
                    if row[name] is not None
                }
                | {"delta": row["delta"]},
                step=row["level"],
            )
        imp_run.log_table(rows, "imp_table.json")
        result = {
            "run_id": imp_run.id,
            "source": wk_uri,
            "k": k,
            "dense_test_error": dense_error,
            "levels": [vars(level) for level in levels],
            "baselines": baselines,
            "same_basin": basins,
            "rows": rows,
            "matching_rule": f"test accuracy drop vs dense < {cfg.matching_threshold:.2%}",
        }
        _write_plots(ctx, imp_run, rows, k)
        imp_run.log_json(result, IMP_ARTIFACT)
    return {**result, "reused": False}


def random_pruned(ctx: Context, mask_uri: str, seed: int, strategy: str = "layerwise") -> State:
    """The random-pruning baseline of a subnetwork: the same per-layer sparsity, shuffled."""
    from lmctrack.prune import random_prune

    sub = ctx.store.load_state(mask_uri)
    return State(sub.weights, random_prune(sub.mask, seed, strategy))


def reinitialized(ctx: Context, mask_uri: str, init_seed: int) -> State:
    """The random-reinitialization baseline: the IMP mask on a fresh initialization."""
    from lmctrack.models import build_model

    sub = ctx.store.load_state(mask_uri)
    ds = ctx.dataset
    fresh = build_model(ctx.params.model, ds.num_classes, ds.input_shape, init_seed).state_dict()
    return State({k: v.detach().clone() for k, v in fresh.items()}, sub.mask)


def run_baselines(ctx: Context, parent, run: TrainedRun, k: int, levels: list[Level]) -> list[dict]:
    """Train random pruning (from Wk) and random reinit (from step 0) at every level, at once; a
    baseline that an earlier IMP run trained for the same mask is reused."""
    seed = ctx.params.seeds
    specs = []
    for lv in levels:
        for kind, start, baseline_seed in (
            ("random_prune", k, seed.init + 7919 * lv.level),
            ("random_reinit", 0, seed.init + 104729 + lv.level),
        ):
            key = ctx.training_hash(lv.mask_uri, kind, baseline_seed, "baseline")
            done = ctx.store.find_run(ctx.model_name, key)
            specs.append((kind, lv, start, baseline_seed, key, done))
    todo = {
        key: (random_pruned if kind == "random_prune" else reinitialized)(ctx, lv.mask_uri, s)
        for kind, lv, _, s, key, done in specs
        if done is None
    }
    jobs = [
        TrainJob(
            key=key,
            label=f"{kind} level {lv.level}",
            model=ctx.params.model,
            train=ctx.params.train,
            noise=Noise(seed.data_order, seed.augment),
            start=start,
            stop=ctx.total_steps,
            weights=todo[key].weights,
            mask=todo[key].mask,
        )
        for kind, lv, start, _, key, done in specs
        if done is None
    ]
    results = dict(zip(todo, run_jobs(jobs, ctx.dataset, ctx.device, ctx.board)))
    out = []
    for kind, lv, start, _, key, done in specs:
        if done is None:
            done = _register_baseline(ctx, parent, kind, lv, start, key, todo[key], results[key])
        base, trained = ctx.store.run_states(done)
        out.append(
            {
                "kind": kind,
                "level": lv.level,
                "state": base.uri,
                "trained": trained.uri,
                "test_error": float(ctx.store.run_metrics(done)["test_error"]),
            }
        )
    return out


def _register_baseline(
    ctx: Context, parent, kind: str, lv: Level, start: int, key: str, state: State, result
) -> str:
    """Register a trained baseline: its starting state (mask or reinit) and its W_T."""
    with ctx.store.run(
        ctx.model_name,
        f"{kind} level {lv.level}",
        parent=parent,
        tags={"kind": kind, "config_hash": key},
    ) as child:
        child.log_json(ctx.params.model_dump(mode="json"), PARAMS_ARTIFACT)
        base_uri = child.save_state(
            state,
            model_name=ctx.model_name,
            role="mask" if kind == "random_prune" else "reinit",
            step=start,
            tags={**sparsity_tags(lv.level, state.mask), "baseline": kind},
            parents=[lv.mask_uri],
        )
        trained_uri = child.save_state(
            State(result.weights, state.mask),
            model_name=ctx.model_name,
            role="trained",
            step=ctx.total_steps,
            tags={**sparsity_tags(lv.level, state.mask), "baseline": kind, "state": "W_T"},
            parents=[base_uri],
            dataset=(ctx.params.data.name, ctx.dataset_fingerprint),
        )
        child.log_metrics({"test_error": _evaluate_uri(ctx, trained_uri)})
    return child.id


def table_rows(
    dense_error: float, levels: list[Level], baselines: list[dict], threshold: float
) -> list[dict]:
    """Table 2: full, IMP, random prune, random reinit accuracy, delta and the matching verdict."""
    rows = []
    for lv in levels:
        by_kind = {b["kind"]: 1 - b["test_error"] for b in baselines if b["level"] == lv.level}
        delta = (1 - dense_error) - (1 - lv.test_error)
        rows.append(
            {
                "level": lv.level,
                "density": lv.density,
                "full": 1 - dense_error,
                "imp": 1 - lv.test_error,
                "random_prune": by_kind.get("random_prune"),
                "random_reinit": by_kind.get("random_reinit"),
                "delta": delta,
                "matching": matching(delta, threshold),
            }
        )
    return rows


def matching(accuracy_drop: float, threshold: float = 0.002) -> bool:
    """A subnetwork matches when its test accuracy is less than 0.2% below the dense network's."""
    return accuracy_drop < threshold


def same_basin(ctx: Context, parent, dense_final: str, levels: list[Level]) -> list[dict]:
    """Do consecutive IMP levels retrain into the same basin? Interpolate W_T of n and n+1."""
    chain = [dense_final] + [lv.trained_uri for lv in levels]
    out = []
    for n in range(len(chain) - 1):
        a, b = ctx.store.load_state(chain[n]), ctx.store.load_state(chain[n + 1])
        path, distances = interpolate_states(ctx, a, b, mask_mode="each")
        summary = {**path.summary(), **{f"distance.{k}": float(v) for k, v in distances.items()}}
        parent.log_metrics({f"basin.{k}": v for k, v in summary.items()}, step=n)
        out.append(
            {
                "levels": [n, n + 1],
                "a": chain[n],
                "b": chain[n + 1],
                "bn": path.bn,
                "summary": summary,
            }
        )
    return out


def _write_plots(ctx: Context, imp_run, rows: list[dict], k: int) -> None:
    """Figure 5/8 style: test accuracy vs density for IMP and the two random baselines."""
    from lmctrack.plots import plot_imp_density

    points = [
        {"method": label, "density": row["density"], "mean": row[key], "std": 0.0, "n": 1}
        for row in rows
        for key, label in (
            ("imp", "IMP"),
            ("random_prune", "random pruning"),
            ("random_reinit", "random reinit"),
        )
        if row[key] is not None
    ]
    title = f"{ctx.model_name}: IMP rewinding to {k}it vs random baselines"
    kwargs = {"metric": "test accuracy", "dense": rows[0]["full"] if rows else None}
    figure = plot_imp_density(points, ctx.scratch() / f"imp_k{k}.png", title, **kwargs)
    imp_run.log_file(figure, "plots")
    if ctx.out is not None:
        plot_imp_density(points, ctx.out / "imp.png", title, **kwargs)
