"""Algorithm 2: iterative magnitude pruning with rewinding to step k, replicated, with baselines.

Every level trains m ⊙ Wk to T under fresh SGD noise, the dense level 0 included (line 5), and
each replicate draws its own noise per level, so no two trainings share batches. Each mask is
registered as the subnetwork (Wk, m) it defines (`lmctrack fork --from MASK_URI` measures its
instability). The random-pruning and random-reinitialization baselines train the same
sparsities from step k; matching is decided over replicates (schema.DEFINITIONS).
"""

from __future__ import annotations

import json
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
    cfg, search = ctx.params.imp, search or SameData()
    replicates = replicates or cfg.replicates
    work = Work.of(ctx, wk_uri, search, with_baselines, replicates)
    with jobs.claimed(ctx, [work.key]):  # an identical request running now: wait, reuse
        if (done := reused(ctx, work)) is not None:
            return done
        wk = ctx.store.load_state(wk_uri)  # lines 1-3: W0 trained to Wk, registered by `train`
        chains = [Chain.dense(ctx, wk, r) for r in range(replicates)]  # line 2: m = 1
        with jobs.recorded(ctx, work.label, key=work.key, kind=schema.KIND_IMP) as run:
            run.log_input_states([wk_uri])
            for level in range(work.levels + 1):  # line 4: level 0 is the dense network
                train_level(ctx, run, work.chain, wk_uri, wk, chains, level)  # line 5: m ⊙ Wk to T
                if level < work.levels:  # line 6: prune the lowest-magnitude remaining weights
                    search.search(ctx, run, work.chain, wk, chains, level)
                    for chain in chains:
                        chain.mask = prune(cfg, chain.pruned_from, chain.mask)
            trainings = [t for chain in chains for t in chain.trained]
            if with_baselines:
                trainings += baselines(ctx, run, work.chain, wk_uri, wk, trainings)
            result = tabulate(ctx, run, work, replicates, trainings, chains[0], with_baselines)
        return result


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
        )
        chain = ctx.training_hash(wk_uri, pruning, search.fingerprint(ctx), "imp")
        levels = 1 if cfg.one_shot else cfg.levels
        key = config_hash(chain, levels, replicates, with_baselines)
        label = f"imp k={k}" + (" one-shot" if cfg.one_shot else f" {levels} levels")
        return cls(wk_uri, k, levels, chain, key, label)


def reused(ctx: Context, work: Work) -> Imp | None:
    run_id = jobs.finished(ctx, work.key)
    if run_id is None:
        return None
    data = json.loads(ctx.store.run_artifact(run_id, IMP_ARTIFACT).read_text())
    return Imp.from_dict({**data, "reused": True})


def tabulate(
    ctx: Context,
    run,
    work: Work,
    replicates: int,
    trainings: list,
    first: Chain,
    with_baselines: bool,
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
    write_plots(ctx, run, result)
    run.log_json(to_dict(result), IMP_ARTIFACT)
    return result
