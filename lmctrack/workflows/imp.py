"""Algorithm 2: iterative magnitude pruning with rewinding to step k, replicated, with baselines.

Every level trains m ⊙ Wk to T under fresh SGD noise, the dense level 0 included (line 5), and
each replicate draws its own noise per level, so no two trainings share batches. Each mask is
registered as the subnetwork (Wk, m) it defines (`lmctrack fork --from MASK_URI` measures its
instability). The random-pruning and random-reinitialization baselines train the same
sparsities from step k; matching is decided over replicates (schema.DEFINITIONS).
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass

from lmctrack import schema
from lmctrack.config import config_hash
from lmctrack.results import Imp, to_dict
from lmctrack.workflows import jobs
from lmctrack.workflows.baselines import baselines
from lmctrack.workflows.common import Context
from lmctrack.workflows.imp_chain import Chain, MaskSearch, SameData, prune, train_level
from lmctrack.workflows.imp_table import same_basin, table, write_plots

IMP_ARTIFACT = "imp.json"


def imp(
    ctx: Context, wk_uri: str, search: MaskSearch | None = None, *, with_baselines: bool = True,
    replicates: int | None = None,
) -> Imp:  # fmt: skip
    """Algorithm 2 from the registered state Wk, `imp.replicates` times; a finished identical
    IMP is reused, an interrupted one resumes after its last finished level."""
    return imps(ctx, [wk_uri], search, with_baselines=with_baselines, replicates=replicates)[0]


def imps(
    ctx: Context, wk_uris: list[str], search: MaskSearch | None = None, *,
    with_baselines: bool = True, replicates: int | None = None,
) -> list[Imp]:  # fmt: skip
    """Algorithm 2 from each Wk (e.g. every rewind step of a sweep), `replicates` times each;
    all chains advance level by level together, so each level's trainings run at once."""
    cfg, search = ctx.params.imp, search or SameData()
    replicates = replicates or cfg.replicates
    works = [Work.of(ctx, uri, search, with_baselines, replicates) for uri in wk_uris]
    with jobs.claimed(ctx, [w.key for w in works]), ExitStack() as open_runs:
        done = {w.key: jobs.reused(ctx, w.key, IMP_ARTIFACT, Imp) for w in works}  # done before
        todo = [w for w in works if done[w.key] is None]
        runs = [open_runs.enter_context(w.recorded(ctx)) for w in todo]
        chains = [
            [Chain.dense(ctx, w, ctx.store.load_state(w.source), run, r) for r in range(replicates)]
            for w, run in zip(todo, runs, strict=True)
        ]  # lines 1-3: W0 trained to Wk (registered by `train`); line 2: m = 1
        every = [chain for per_work in chains for chain in per_work]
        for level in range(cfg_levels(cfg) + 1):  # line 4: level 0 is the dense network
            train_level(ctx, every, level)  # line 5: train m ⊙ Wk to T under fresh noise
            if level < cfg_levels(cfg):  # line 6: prune the lowest-magnitude remaining weights
                search.search(ctx, every, level)
                for chain in every:
                    chain.mask = prune(cfg, chain.pruned_from, chain.mask)
        for w, run, per_work in zip(todo, runs, chains, strict=True):
            trainings = [t for chain in per_work for t in chain.trained]
            if with_baselines:
                trainings += baselines(ctx, run, w.chain, w.source, per_work[0].wk, trainings)
            single = len(works) == 1
            done[w.key] = tabulate(
                ctx, run, w, replicates, trainings, per_work[0], with_baselines, single
            )
    return [done[w.key] for w in works]


def cfg_levels(cfg) -> int:
    """How many times IMP prunes: once for one-shot pruning, else `levels`."""
    return 1 if cfg.one_shot else cfg.levels


@dataclass
class Work:
    """What names an IMP: its chain key (levels do not depend on how many follow them, so
    `--levels 3` after `--levels 2` reuses levels 0-2) and the key of the whole request."""

    source: str
    k: int
    levels: int
    chain: str
    key: str
    label: str

    @classmethod
    def of(
        cls, ctx: Context, wk_uri: str, search: MaskSearch, with_baselines: bool, replicates: int
    ) -> Work:
        cfg = ctx.params.imp
        k = int(ctx.store.describe(wk_uri).tags.get(schema.STEP, 0))
        pruning = cfg.model_dump(
            mode="json",
            include={"fraction", "one_shot", "density", "strategy", "reinit_start"},
        ) | ctx.params.prune.model_dump(mode="json", exclude_defaults=True)
        chain = ctx.training_hash(wk_uri, pruning, search.fingerprint(ctx), "imp")
        levels = cfg_levels(cfg)
        key = config_hash(chain, levels, replicates, with_baselines)
        label = f"imp k={k}" + (" one-shot" if cfg.one_shot else f" {levels} levels")
        return cls(wk_uri, k, levels, chain, key, label)

    def recorded(self, ctx: Context):
        """The IMP's run, with Wk as its input."""
        return jobs.recorded(
            ctx, self.label, key=self.key, kind=schema.KIND_IMP, inputs=[self.source]
        )


def tabulate(
    ctx: Context,
    run,
    work: Work,
    replicates: int,
    trainings: list,
    first: Chain,
    with_baselines: bool,
    single: bool = True,
) -> Imp:
    """The IMP's result: Table 2, the same-basin check (of one chain), Figure 5, logged."""
    result = Imp(
        run_id=run.id,
        source=work.source,
        k=work.k,
        replicates=replicates,
        trainings=trainings,
        rows=table(ctx, trainings),
        same_basin=same_basin(ctx, run, first) if with_baselines else [],
        matching_rule=(
            schema.DEFINITIONS["matching"] + f" ({ctx.params.imp.matching_threshold:.1%})"
        ),
    )
    # one IMP's figure for DVC; a sweep's many IMPs would overwrite one another's
    write_plots(ctx, run, result, ctx.out if single else None)
    run.log_json(to_dict(result), IMP_ARTIFACT)
    return result
