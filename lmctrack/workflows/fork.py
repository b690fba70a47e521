"""Algorithm 1: the instability of a state Wk (or a subnetwork (Wk, m)) to SGD noise.

With `reset_schedule` the copies train for all T steps with the learning-rate schedule restarted
at 0 (Figure 4); with `track_every` the copies are also interpolated during training (Appendix C).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations

from lmctrack.config import schema
from lmctrack.config.schema import Stats
from lmctrack.engine.state import State
from lmctrack.engine.train import Noise
from lmctrack.errors import LmcError
from lmctrack.execution.job import JobResult
from lmctrack.results.paper import Fork, Pair
from lmctrack.workflows import jobs
from lmctrack.workflows.common import Context
from lmctrack.workflows.paths import interpolate_pairs, log_pair
from lmctrack.workflows.souping import fork_soup
from lmctrack.workflows.work import Book, work

FORK_ARTIFACT = "fork.json"
MAX_COPIES = 1000  # 499,500 pairs, each a logged run: more is a mistyped count, not a study


def forks(ctx: Context, plans: list[Plan], parent=None) -> list[Fork]:
    """Algorithm 1 for each planned state Wk; a sweep's copies all train in one pool, and all
    its pairs are interpolated at once (as Ray tasks when runner.backend is ray). A finished
    identical fork is reused (work.work does the bookkeeping: claims, reuse, runs, records);
    new forks' runs nest under `parent` (a sweep's run) if given."""
    # Wk = A^{0->k}(W0, u) was trained and registered by `train` (workflows/training_run.py: train_runs)
    with work(
        ctx, plans, kind=schema.KIND_FORK, artifact=FORK_ARTIFACT, result=Fork, parent=parent
    ) as book:
        # Lines 1-2: train copies of Wk to W_T^i, copy i under its own SGD noise u_i.
        trained, copies = train_copies(ctx, book)
        # Line 3: f(W_T^i, W_T^j): the error along the linear path between every pair, its barrier.
        ends = [list(combinations(range(len(c)), 2)) for c in copies]
        paths = iter(
            interpolate_pairs(
                ctx, [(c[i][1], c[j][1]) for c, ij in zip(copies, ends) for i, j in ij]
            )
        )
        for plan, c, ij in zip(book.todo, copies, ends, strict=True):
            pairs = [named(next(paths), plan, c, i, j) for i, j in ij]
            book.finish(plan, record(ctx, book, plan, c, pairs, trained))
    for result in book.results:  # a fork reused from a store older than soups gets its soup
        if result.soup_error is None:
            copies = [ctx.store.load_state(uri) for uri in result.copies]
            result.soup_error = fork_soup(ctx, copies)
    return book.results


def fork(ctx: Context, source: str, **options) -> Fork:
    """`lmctrack fork`: Algorithm 1 from one state; a finished identical fork is reused."""
    return forks(ctx, [plan(ctx, source, **options)])[0]


@dataclass
class Plan:
    """A fork to do: the state Wk (with its mask, if any) and the copies' noise seeds."""

    source: str
    mask: str | None
    k: int
    state: State
    seeds: list[int]
    reset_schedule: bool
    track: list[int]
    key: str
    params: dict  # the fork run's (schema's names: k, init_seed, copies, ...)
    carry: bool
    copy_keys: list[str] = field(default_factory=list)
    trained_by: dict[str, str] = field(default_factory=dict)  # copy key -> the run that made it

    @property
    def start(self) -> int:
        return 0 if self.reset_schedule else self.k

    @property
    def parents(self) -> list[str]:
        return [self.source] + ([self.mask] if self.mask else [])

    @property
    def claims(self) -> list[str]:
        """The fork's key and its copies': an identical fork or copy made meanwhile waits."""
        return [self.key, *self.copy_keys]

    @property
    def inputs(self) -> list[str]:
        return self.parents

    @property
    def label(self) -> str:
        carry = " carry optimizer" if self.carry else ""
        return f"fork k={self.k}" + (" reset schedule" if self.reset_schedule else "") + carry


def plan(
    ctx: Context,
    source: str,
    *,
    seeds: list[int],
    mask: str | None = None,
    reset_schedule: bool = False,
    track_every: int | None = None,
    trained_by: dict[int, str] | None = None,
) -> Plan:
    """Load Wk (and apply a mask), and name the work: the fork's and each copy's key.
    `trained_by` names, by seed, copies that a finished run's own training already is, bit for bit
    (find-k: the run W0 -> W_T is W0's copy under the run's noise); their W_T is taken, not
    retrained. Untracked forks only: the run kept no snapshots."""
    from lmctrack.engine.prune import check_mask

    if len(seeds) > MAX_COPIES:
        pairs = len(seeds) * (len(seeds) - 1) // 2
        raise LmcError(
            f"{len(seeds)} copies make {pairs:,} pairs to train and interpolate; a fork takes "
            f"at most {MAX_COPIES} copies: ask for fewer (--seeds, instability.copies)"
        )
    state = ctx.store.load_state(source)
    if mask is not None:
        state = State(state.weights, ctx.store.load_state(mask).mask, state.optimizer)
        check_mask(state.mask, state.weights)
    k = int(ctx.store.describe(source).tags.get(schema.STEP, 0))
    start = 0 if reset_schedule else k
    track = list(range(start + track_every, ctx.total_steps, track_every)) if track_every else []
    inst = ctx.params.instability
    carry = carried(source, state, k, inst.optimizer_state)
    common = (source, mask, reset_schedule, track, *([schema.CARRY] if carry else []))
    key = ctx.training_hash(*common, seeds, inst.alphas, inst.splits, inst.bn, "fork")
    copy_keys = [ctx.training_hash(*common, seed, "copy") for seed in seeds]
    made = trained_by or {}
    given = {key: made[seed] for seed, key in zip(seeds, copy_keys) if seed in made}
    params = ctx.run_params(
        k=k, init_seed=ctx.init_seed(source), copies=len(seeds), bn=inst.bn, **subnetwork(ctx, mask)
    )
    return Plan(
        source, mask, k, state, seeds, reset_schedule, track, key, params, carry, copy_keys, given
    )


def subnetwork(ctx: Context, mask: str | None) -> dict[str, str]:
    """A subnetwork's defining params from its mask's version: density, level, criterion."""
    if mask is None:
        return {}
    tags = ctx.store.describe(mask).tags
    density = tags.get(schema.DENSITY)
    return {
        schema.DENSITY: None if density is None else float(density),  # as IMP's trainings: 0.8
        schema.LEVEL: tags.get(schema.LEVEL),
        schema.CRITERION: tags.get(schema.METHOD, schema.IMP),
    }


def carried(source: str, state: State, k: int, optimizer_state: str) -> bool:
    """Whether the copies start with the training's optimizer state at k (at W0 there is none
    to carry: carry is restart); a Wk registered without one cannot be carried."""
    if optimizer_state != schema.CARRY or k == 0:
        return False
    if state.optimizer is None:
        raise LmcError(
            f"{source} was registered without its optimizer state (an older lmctrack, or not a "
            "training's rewind state); train it again or set instability.optimizer_state=restart"
        )
    return True


def train_copies(
    ctx: Context, book: Book[Plan, Fork]
) -> tuple[dict[str, JobResult], list[list[tuple[str, State]]]]:
    """Lines 1-2 for every fork still to do: its copies train in one pool, then each copy's W_T
    is registered under the fork's run (a copy an earlier fork finished is reused)."""
    done = {p.key: finished_copies(ctx, p) for p in book.todo}
    todo = [job for p in book.todo for job in copy_trainings(ctx, p, done[p.key])]
    trained = jobs.train_all(ctx, todo)
    copies = [
        [register_copy(ctx, book.run(p), p, i, trained, done[p.key]) for i in range(len(p.seeds))]
        for p in book.todo
    ]
    return trained, copies


def finished_copies(ctx: Context, plan: Plan) -> dict[str, str]:
    """The plan's copies that an earlier fork of the same state finished, or that the plan says a
    run already made: their runs by copy key (one search for all of them; none when tracked:
    their snapshots are not stored)."""
    if plan.track:
        return {}
    todo = [key for key in plan.copy_keys if key not in plan.trained_by]
    return {**jobs.finished_among(ctx, todo, source=plan.source), **plan.trained_by}


def copy_trainings(ctx: Context, plan: Plan, done: dict[str, str]) -> list:
    """The copies still to train: those not `done` by an earlier fork of the same state."""
    schedule = ctx.total_steps if plan.reset_schedule else None
    return [
        jobs.training(
            ctx,
            key,
            f"copy k={plan.k} seed={seed}",
            plan.state,
            start=plan.start,
            noise=Noise(seed, seed),
            snapshot_steps=plan.track,
            schedule_total=schedule,
            carry=plan.carry,
        )
        for seed, key in zip(plan.seeds, plan.copy_keys, strict=True)
        if key not in done
    ]


def register_copy(
    ctx: Context, parent, plan: Plan, i: int, trained: dict[str, JobResult], done: dict[str, str]
) -> tuple[str, State]:
    """Copy i's W_T: registered with Wk (and the mask) as parents, or the one registered before."""
    key, seed = plan.copy_keys[i], plan.seeds[i]
    if key not in trained:
        uri = ctx.store.run_states(done[key])[-1].uri
        return uri, ctx.store.load_state(uri)
    state = State(trained[key].weights, plan.state.mask)
    tags = {
        schema.STATE: "W_T",
        schema.COPY: str(i),
        **jobs.noise_tags(seed),
        schema.REWIND_STEP: str(plan.k),
        schema.RESET_SCHEDULE: str(plan.reset_schedule),
        **({schema.OPTIMIZER_STATE: schema.CARRY} if plan.carry else {}),
    }
    params = {
        **plan.params,
        schema.COPY_SEED: seed,
        "source": plan.source,
        "reset_schedule": plan.reset_schedule,
    }
    params.pop(schema.COPIES)
    label = f"copy {i} seed={seed}"
    with jobs.recorded(
        ctx, label, key=key, kind=schema.KIND_COPY, parent=parent, params=params
    ) as run:
        uri = jobs.register_trained(ctx, run, state, tags, plan.parents, f"{key}:W_T")
        result = trained[key]
        run.log_metrics(jobs.speed(result))
    return uri, state


def named(pair: Pair, plan: Plan, copies: list, i: int, j: int) -> Pair:
    """A path between copies i and j, with their URIs and noise seeds."""
    pair.a, pair.b = copies[i][0], copies[j][0]
    pair.seeds = [plan.seeds[i], plan.seeds[j]]
    return pair


def record(
    ctx: Context,
    book: Book[Plan, Fork],
    plan: Plan,
    copies: list,
    pairs: list[Pair],
    trained: dict[str, JobResult],
) -> Fork:
    """Summarise the fork on its run: its paths, barrier statistics, distances (Appendix B), the
    barriers during training (Appendix C) when tracked, and the uniform soup of its copies."""
    from lmctrack.engine.compare import l2_distance, parameter_names

    run = book.run(plan)

    ends = combinations(range(len(copies)), 2)  # the order of forks' pairs
    pairs = [
        log_pair(ctx, run, f"pair {i}-{j} k={plan.k}", pair)
        for (i, j), pair in zip(ends, pairs, strict=True)
    ]

    names = parameter_names(ctx.template())
    wk = plan.state.masked_weights()
    distances = {"Wk_to_W_T": [l2_distance(wk, s.masked_weights(), names) for _, s in copies]}
    w0 = _ancestor_w0(ctx, plan.source)
    if w0 is not None and plan.k > 0:
        w0_weights = State(ctx.store.load_state(w0).weights, plan.state.mask).masked_weights()
        distances["W0_to_Wk"] = [l2_distance(w0_weights, wk, names)]
    result = Fork(
        run_id=run.id,
        source=plan.source,
        mask=plan.mask,
        k=plan.k,
        total=ctx.total_steps,
        seeds=plan.seeds,
        reset_schedule=plan.reset_schedule,
        bn=ctx.params.instability.bn,
        copies=[uri for uri, _ in copies],
        pairs=pairs,
        distances=distances,
        tracked=_track(ctx, run, plan, trained) if plan.track else {},
        copy_errors=[ctx.error(state) for _, state in copies],
        threshold=ctx.params.instability.stable_threshold,
        optimizer_state=schema.CARRY if plan.carry else "restart",
        soup_error=fork_soup(ctx, [state for _, state in copies]),
    )
    run.log_metrics(result.headline())
    return result


def _ancestor_w0(ctx: Context, uri: str) -> str | None:
    """The W0 that `uri` descends from, found through the lineage tags."""
    node = ctx.store.lineage(uri)
    while node is not None:
        if node.info.tags.get(schema.ROLE) == schema.INIT:
            return node.info.uri
        node = node.parents[0] if node.parents else None
    return None


def _track(ctx: Context, run, plan: Plan, trained: dict[str, JobResult]) -> dict[int, dict]:
    """Appendix C: the barrier between the copies at every tracked step of their training."""
    snaps = [trained[key].snapshots for key in plan.copy_keys]
    ends = list(combinations(range(len(snaps)), 2))
    states = [
        (State(snaps[i][step], plan.state.mask), State(snaps[j][step], plan.state.mask))
        for step in plan.track
        for i, j in ends
    ]
    paths = iter(interpolate_pairs(ctx, states))
    tracked: dict[int, dict[str, Stats]] = {}
    for step in plan.track:
        pairs = [next(paths) for _ in ends]
        tracked[step] = {
            name: Stats.of([p.metrics()[name] for p in pairs]) for name in pairs[0].metrics()
        }
        means = {
            f"{schema.metric(schema.TRACKED, n)}.mean": s.mean for n, s in tracked[step].items()
        }
        run.log_metrics(means, step=step)
    return tracked
