"""The steps of Algorithm 2 for a set of chains: train a level, search the next mask, prune.

A Chain is one replicate of IMP from one Wk; chains from several Wk (a sweep's rewind steps) and
replicates advance level by level together, so each level's trainings run at once. Each training is its own unit of work (a key, a
checkpoint, a run), so an interrupted IMP resumes after its last finished level. The mask search
is an object: `SameData` prunes each level's own W_T (the paper); `OtherData` trains the
subnetwork on another dataset (e.g. distilled data) and prunes that, while the subnetworks are
still trained and evaluated on the real data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Protocol

import torch

from lmctrack.config import schema
from lmctrack.config.params import Params, config_hash
from lmctrack.engine.state import Mask, State
from lmctrack.engine.train import Noise
from lmctrack.results.paper import Trained
from lmctrack.workflows import jobs
from lmctrack.workflows.common import Context

Weights = dict[str, torch.Tensor]


@dataclass
class Chain:
    """One replicate of IMP from one Wk: its mask, the weights the next mask is pruned from, its
    trainings, and the IMP run they nest under."""

    replicate: int
    wk_uri: str
    wk: State
    k: int
    key: str  # the IMP's chain key: Wk, pruning settings, search data
    parent: object  # the IMP's run
    mask: Mask
    last: State | None = None  # the W_T of its latest level
    pruned_from: Weights | None = None
    pruned_from_uri: str | None = None
    trained: list[Trained] = field(default_factory=list)

    @classmethod
    def dense(cls, ctx: Context, work, wk: State, parent, replicate: int) -> Chain:
        """Line 2: m = 1 for the prunable weights."""
        from lmctrack.engine.models import prunable_names
        from lmctrack.engine.prune import full_mask

        mask = full_mask(wk.weights, prunable_names(ctx.template(), ctx.params.prune))
        return cls(replicate, work.source, wk, work.k, work.chain, parent, mask)

    def level_key(self, level: int, *what: str) -> str:
        return config_hash(self.key, self.replicate, level, *what)


def prune(ctx: Context, chain: Chain, level: int) -> Mask:
    """Line 6: remove `fraction` of the remaining weights, those imp.criterion scores lowest
    (the paper: smallest |W_T|), or, one-shot, keep `density` of them at once. A criterion that
    draws (random) draws for this Wk, replicate and level alone."""
    from lmctrack.engine.prune import criterion, prune_fraction, prune_to_density

    cfg = ctx.params.imp
    score, weights, mask = criterion(cfg.criterion), chain.pruned_from, chain.mask
    seed = jobs.noise_seed(chain.key, chain.replicate, level, "prune")
    if cfg.one_shot:
        return prune_to_density(weights, mask, cfg.density, cfg.strategy, score, seed)
    return prune_fraction(weights, mask, cfg.fraction, cfg.strategy, score, seed)


def pruning_settings(params: Params, *fields: str) -> dict:
    """What decides IMP's masks, for work keys: these imp fields, imp.criterion unless it is
    magnitude (so keys made before criteria existed, and the runs stored under them, still hold)
    and prune's non-default settings. An unknown criterion is refused here, before any work."""
    from lmctrack.engine.prune import MAGNITUDE, criterion

    criterion(params.imp.criterion)
    chosen = {*fields, *(["criterion"] if params.imp.criterion != MAGNITUDE else [])}
    return params.imp.model_dump(mode="json", include=chosen) | params.prune.model_dump(
        mode="json", exclude_defaults=True
    )


def sparsity_tags(level: int, mask: Mask | None) -> dict[str, str]:
    from lmctrack.engine.prune import density, layer_densities

    if mask is None:
        return {schema.LEVEL: str(level), schema.DENSITY: "1.0"}
    return {
        schema.LEVEL: str(level),
        schema.DENSITY: f"{density(mask):.6f}",
        schema.LAYER_DENSITIES: json.dumps(
            {k: round(v, 6) for k, v in layer_densities(mask).items()}
        ),
    }


def sparse_params(ctx: Context, wk_uri: str, **subnetwork) -> dict:
    """A subnetwork training's run params: W0's init seed and the `subnetwork`'s k, density,
    level and criterion."""
    return ctx.run_params(init_seed=ctx.init_seed(wk_uri), **subnetwork)


def accuracy(error: float) -> dict[str, float]:
    """A trained subnetwork's test error and accuracy, as its run's metrics."""
    return {schema.TEST_ERROR: error, schema.TEST_ACCURACY: 1.0 - error}


def train_level(ctx: Context, chains: list[Chain], level: int) -> None:
    """Line 5 for every chain at once: train m ⊙ Wk from k to T, each under its own noise u', and
    register the subnetwork (Wk, m) and its W_T (level 0: the dense W_T)."""
    keys = [c.level_key(level) for c in chains]
    seeds = [
        jobs.noise_seed(ctx.params.seeds.data_order, c.replicate, level, schema.IMP) for c in chains
    ]
    subnets = [State(c.wk.weights, c.mask if level else None) for c in chains]
    with jobs.claimed(ctx, keys):
        todo = [
            jobs.training(
                ctx, key, f"IMP k={c.k} r{c.replicate} level {level}", sub, start=c.k,
                noise=Noise(s, s),
            )
            for c, key, s, sub in zip(chains, keys, seeds, subnets, strict=True)
            if jobs.finished(ctx, key) is None
        ]  # fmt: skip
        results = jobs.train_all(ctx, todo)
        for chain, key, seed, sub in zip(chains, keys, seeds, subnets, strict=True):
            if key in results:
                trained = State(results[key].weights, sub.mask)
                record = _register_level(ctx, key, chain, level, sub, trained, seed)
            else:
                record, trained = _adopt_level(ctx, jobs.finished(ctx, key))
            chain.trained.append(record)
            chain.last = trained


def _register_level(
    ctx: Context, key: str, chain: Chain, level: int, sub: State, trained: State, seed: int
) -> Trained:
    k, wk_uri = chain.k, chain.wk_uri
    tags = {
        **sparsity_tags(level, sub.mask),
        schema.REPLICATE: str(chain.replicate),
        schema.METHOD: schema.IMP,
        schema.REWIND_STEP: str(k),
        **jobs.noise_tags(seed),
    }
    density = float(tags[schema.DENSITY])
    with jobs.recorded(
        ctx,
        f"IMP r{chain.replicate} level {level}",
        key=key,
        kind=schema.KIND_IMP_TRAINING,
        parent=chain.parent,
        params=sparse_params(ctx, wk_uri, k=k, density=density, level=level, criterion=schema.IMP),
        tags={schema.LEVEL: str(level), schema.REPLICATE: str(chain.replicate)},
    ) as run:
        start = wk_uri
        if sub.mask is not None:
            parents = [wk_uri] + ([chain.pruned_from_uri] if chain.pruned_from_uri else [])
            named = {**tags, schema.STATE: f"(W{k}, m{level})"}
            start = jobs.register_start(
                ctx, run, sub, schema.MASK, k, named, parents, f"{key}:mask"
            )
        role = schema.SPARSE if sub.mask is not None else schema.TRAINED
        named = {**tags, schema.STATE: "W_T"}
        uri = jobs.register_trained(ctx, run, trained, named, [start], f"{key}:W_T", role)
        error = ctx.error(trained)
        run.log_metrics({**accuracy(error), schema.DENSITY: density})
    return Trained(schema.IMP, chain.replicate, level, density, start, uri, seed, k, error)


def _adopt_level(ctx: Context, run_id: str) -> tuple[Trained, State]:
    """A level that an earlier (maybe interrupted) IMP finished: read it back."""
    infos = {info.tags[schema.ROLE]: info for info in ctx.store.run_states(run_id)}
    trained_info = infos.get(schema.SPARSE) or infos[schema.TRAINED]
    start = infos[schema.MASK].uri if schema.MASK in infos else trained_info.parents[0]
    t = trained_info.tags
    record = Trained(
        method=schema.IMP,
        replicate=int(t[schema.REPLICATE]),
        level=int(t[schema.LEVEL]),
        density=float(t[schema.DENSITY]),
        start=start,
        trained=trained_info.uri,
        noise_seed=int(t[schema.DATA_ORDER_SEED]),
        start_step=int(t[schema.REWIND_STEP]),
        test_error=float(ctx.store.run_metrics(run_id)[schema.TEST_ERROR]),
    )
    return record, ctx.store.load_state(trained_info.uri)


class MaskSearch(Protocol):
    """What the next mask is pruned from; its fingerprint names the data it searches with."""

    def fingerprint(self, ctx: Context) -> str: ...

    def search(self, ctx: Context, chains: list[Chain], level: int) -> None: ...


class SameData:
    """The paper's IMP: prune each level's own W_T."""

    def fingerprint(self, ctx: Context) -> str:
        return ctx.dataset_fingerprint

    def search(self, ctx: Context, chains: list[Chain], level: int) -> None:
        for chain in chains:
            chain.pruned_from = chain.last.weights
            chain.pruned_from_uri = chain.trained[-1].trained


@dataclass
class OtherData:
    """IMP driven by another dataset (the 2023 follow-up: distilled data): each level's
    subnetwork (Wk, m) is trained on that data, registered (role `search`), and pruned."""

    data: Context

    def fingerprint(self, ctx: Context) -> str:
        return self.data.dataset_fingerprint

    def search(self, ctx: Context, chains: list[Chain], level: int) -> None:
        keys = [c.level_key(level, "search") for c in chains]
        seeds = [
            jobs.noise_seed(ctx.params.seeds.data_order, c.replicate, level, schema.SEARCH)
            for c in chains
        ]
        with jobs.claimed(ctx, keys):
            todo = [
                jobs.training(
                    self.data,
                    key,
                    f"search k={c.k} r{c.replicate} level {level}",
                    State(c.wk.weights, c.mask if level else None),
                    start=c.k,
                    noise=Noise(s, s),
                )
                for c, key, s in zip(chains, keys, seeds, strict=True)
                if jobs.finished(ctx, key) is None
            ]
            results = jobs.train_all(self.data, todo)
            for chain, key, seed in zip(chains, keys, seeds, strict=True):
                if key in results:
                    uri = self._register(ctx, chain, level, key, seed, results[key])
                else:
                    uri = ctx.store.run_states(jobs.finished(ctx, key))[-1].uri
                chain.pruned_from_uri = uri
                chain.pruned_from = ctx.store.load_state(uri).weights

    def _register(self, ctx: Context, chain: Chain, level: int, key, seed, result) -> str:
        """The subnetwork trained on the search data: role `search`, child of its (Wk, m)."""
        mask = chain.mask if level else None
        tags = {
            **sparsity_tags(level, mask),
            schema.REPLICATE: str(chain.replicate),
            schema.STATE: "W_T (prune data)",
            schema.DATA_ORDER_SEED: str(seed),
        }
        label = f"search r{chain.replicate} level {level}"
        with jobs.recorded(ctx, label, key=key, kind=schema.SEARCH, parent=chain.parent) as run:
            state, parents = State(result.weights, mask), [chain.trained[-1].start]
            return jobs.register_trained(
                ctx, run, state, tags, parents, f"{key}:W_T", schema.SEARCH, self.data
            )


def mask_search(ctx: Context) -> MaskSearch:
    """IMP's mask search for these params: on the real data, or on imp.prune_data (e.g. a
    distilled set), whose inputs and classes must be the network's."""
    from lmctrack.errors import LmcError
    from lmctrack.workflows.common import make_context

    cfg = ctx.params
    if cfg.imp.prune_data is None:
        return SameData()
    data = cfg.model_copy(update={"data": cfg.imp.prune_data})
    search = make_context(data, board=ctx.board, store=ctx.store)
    got, want = search.dataset, ctx.dataset
    if (got.input_shape, got.num_classes) != (want.input_shape, want.num_classes):
        shape = ", ".join(map(str, want.input_shape))
        raise LmcError(
            f"the prune data has inputs {got.input_shape} and {got.num_classes} classes but the "
            f"network takes {want.input_shape} with {want.num_classes} classes; give x_train of "
            f"shape (N, {shape}) and labels 0..{want.num_classes - 1}"
        )
    return OtherData(search)
