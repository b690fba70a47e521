"""Algorithm 2: iterative magnitude pruning with rewinding to step k, replicated, with baselines.

Every level trains m ⊙ Wk to T under fresh SGD noise, the dense level 0 included (line 5), and
each replicate draws its own noise per level, so no two trainings share batches. Each mask is
registered as the subnetwork (Wk, m) it defines (`lmctrack fork --from MASK_URI` measures its
instability). The random-pruning and random-reinitialization baselines train the same
sparsities from step k; matching is decided over replicates (schema.DEFINITIONS).
"""

from __future__ import annotations

from dataclasses import dataclass

from lmctrack.config import schema
from lmctrack.config.params import config_hash
from lmctrack.results.paper import Imp
from lmctrack.workflows.baselines import baselines
from lmctrack.workflows.common import Context
from lmctrack.workflows.imp_chain import (
    Chain,
    MaskSearch,
    SameData,
    prune,
    pruning_settings,
    train_level,
)
from lmctrack.workflows.imp_table import same_basin, table, write_plots
from lmctrack.workflows.work import Book, work

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
    with_baselines: bool = True, replicates: int | None = None, parent=None,
) -> list[Imp]:  # fmt: skip
    """Algorithm 2 from each Wk (e.g. every rewind step of a sweep), `replicates` times each;
    all chains advance level by level together, so each level's trainings run at once. A
    finished identical IMP is reused (work.work does the bookkeeping: claims, reuse, runs); new
    IMPs' runs nest under `parent` (a sweep's run) if given."""
    cfg, search = ctx.params.imp, search or SameData()
    replicates = replicates or cfg.replicates
    works = [Work.of(ctx, uri, search, with_baselines, replicates) for uri in wk_uris]
    with work(
        ctx, works, kind=schema.KIND_IMP, artifact=IMP_ARTIFACT, result=Imp, parent=parent
    ) as book:
        # Lines 1, 3: W0 trained to Wk = A^{0->k}(W0, u) by `train` (workflows/training_run.py)
        chains = dense_chains(ctx, book, replicates)  # line 2: m = 1, per replicate
        every = [chain for per_work in chains for chain in per_work]
        for level in range(cfg_levels(cfg) + 1):  # line 4: level 0 is the dense network
            train_level(ctx, every, level)  # line 5: train m ⊙ Wk to T under fresh noise u'
            if level < cfg_levels(cfg):  # line 6: prune the lowest-scoring remaining weights
                search.search(ctx, every, level)
                for chain in every:
                    chain.mask = prune(ctx, chain, level)
        for w, per_work in zip(book.todo, chains, strict=True):  # line 7: return (Wk, m)
            result = tabulate(ctx, book, w, per_work, with_baselines, single=len(works) == 1)
            book.finish(w, result)
    return book.results


def dense_chains(ctx: Context, book: Book[Work, Imp], replicates: int) -> list[list[Chain]]:
    """Line 2 for every IMP still to do: one chain per replicate from Wk with m = 1, its
    trainings nested in the IMP's run."""
    return [
        [
            Chain.dense(ctx, w, ctx.store.load_state(w.source), book.run(w), r)
            for r in range(replicates)
        ]
        for w in book.todo
    ]


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
    params: dict  # the IMP run's (schema's names: k, init_seed, replicates, criterion)

    @classmethod
    def of(
        cls, ctx: Context, wk_uri: str, search: MaskSearch, with_baselines: bool, replicates: int
    ) -> Work:
        cfg = ctx.params.imp
        k = int(ctx.store.describe(wk_uri).tags.get(schema.STEP, 0))
        pruning = pruning_settings(
            ctx.params, "fraction", "one_shot", "density", "strategy", "reinit_start"
        )
        chain = ctx.training_hash(wk_uri, pruning, search.fingerprint(ctx), "imp")
        levels = cfg_levels(cfg)
        key = config_hash(chain, levels, replicates, with_baselines)
        label = f"imp k={k}" + (" one-shot" if cfg.one_shot else f" {levels} levels")
        params = ctx.run_params(
            k=k, init_seed=ctx.init_seed(wk_uri), replicates=replicates, criterion=schema.IMP
        )
        return cls(wk_uri, k, levels, chain, key, label, params)

    @property
    def claims(self) -> list[str]:
        return [self.key]

    @property
    def inputs(self) -> list[str]:
        """The IMP's run reads Wk."""
        return [self.source]


def tabulate(
    ctx: Context,
    book: Book[Work, Imp],
    work: Work,
    chains: list[Chain],
    with_baselines: bool,
    single: bool = True,
) -> Imp:
    """The IMP's result: its chains' trainings and the baselines', Table 2, the same-basin check
    (of one chain), Figure 5, logged on its run."""
    run, first = book.run(work), chains[0]
    trainings = [t for chain in chains for t in chain.trained]
    if with_baselines:
        trainings += baselines(ctx, run, work.chain, work.source, first.wk, trainings)
    result = Imp(
        run_id=run.id,
        source=work.source,
        k=work.k,
        replicates=len(chains),
        trainings=trainings,
        rows=table(ctx, trainings),
        same_basin=same_basin(ctx, run, first) if with_baselines else [],
        matching_rule=(
            schema.DEFINITIONS["matching"] + f" ({ctx.params.imp.matching_threshold:.1%})"
        ),
    )
    # one IMP's figure for DVC; a sweep's many IMPs would overwrite one another's
    write_plots(ctx, run, result, ctx.out if single else None)
    return result
