"""Claims: the same work requested twice at once is done once.

A local store uses OS file locks under its folder, taken in sorted order (the kernel releases
them when the holder dies, so a killed worker never blocks the next). A tracking server has no
shared folder: a claimant starts one RUNNING run in the CLAIMS experiment tagged with every key
it claims, and takes a ticket as in Lamport's bakery: the run is created `choosing`, reads the
live conflicting claim runs (those sharing a key), then sets ticket = 1 + the highest ticket it
saw and ends choosing in one request. It holds once no conflicting live run is still choosing or
has a lower (ticket, run id); the others poll until those end or their owners are known dead (on
this host; a claimant on another host that died holds its claims until its run is ended by
hand). The order needs no clock: a claim run stored after another's ticket was set sees that
ticket and takes a higher one; one stored before is seen by the other's checks, choosing or with
its ticket. The lowest (ticket, run id) always holds, so claims never deadlock, and a sweep's
claim costs a few requests, not a few per key.
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Collection, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from lmctrack.store.backend import unprefixed
from lmctrack.store.copies import REQUEST, delete_copies

if TYPE_CHECKING:
    from lmctrack.store.core import Store

CLAIMS = "lmctrack.claims"
CLAIM_TAG = "claim"
CHOOSING = "choosing"
TICKET = "ticket"
_POLL_SECONDS = 0.5


@contextmanager
def file_claim(folder: Path, keys: Collection[str]) -> Iterator[None]:
    """Hold an exclusive lock on folder/<key>.lock (created if missing) for every key."""
    folder.mkdir(parents=True, exist_ok=True)
    with ExitStack() as held:
        for key in sorted(set(keys)):
            lock = held.enter_context(open(folder / f"{key}.lock", "a+b"))
            fcntl.flock(lock, fcntl.LOCK_EX)
            held.callback(fcntl.flock, lock, fcntl.LOCK_UN)
        yield


def claimed_keys(tags: dict[str, str]) -> set[str]:
    """The keys a claim run claims (its claim.<i> tags; `claim` in runs before multi-key
    claims)."""
    return {v for k, v in tags.items() if k == CLAIM_TAG or k.startswith(CLAIM_TAG + ".")}


@contextmanager
def run_claim(store: Store, keys: Collection[str], poll: float = _POLL_SECONDS) -> Iterator[None]:
    """Hold the claims on keys through one claim run in the store (module docstring)."""
    keys = sorted(set(keys))
    tags = {f"{CLAIM_TAG}.{i}": key for i, key in enumerate(keys)}
    name = keys[0] if len(keys) == 1 else f"{keys[0]} and {len(keys) - 1} more"
    wanted = set(keys)
    with store.run(CLAIMS, name, tags={**tags, CHOOSING: "true"}) as mine:
        seen = _tickets(store, mine.id, wanted).values()
        ticket = 1 + max((t for t in seen if t is not None), default=0)
        mine.set_tags({TICKET: str(ticket), CHOOSING: "false"})
        while any(
            t is None or (t, i) < (ticket, mine.id)
            for i, t in _tickets(store, mine.id, wanted).items()
        ):
            time.sleep(poll)
        yield


def _tickets(store: Store, mine: str, wanted: set[str]) -> dict[str, int | None]:
    """The tickets of the other live claim runs that share a key with wanted (None while one is
    choosing; 0 for a run of a version without tickets). A copy of mine that a re-sent request
    made (store.copies) would hold against me: it is deleted instead."""
    found: dict[str, int | None] = {}
    running = store.running(CLAIMS)
    request = next(
        (unprefixed(r.data.tags).get(REQUEST) for r in running if r.info.run_id == mine), None
    )
    for run in running:
        tags = unprefixed(run.data.tags)
        if run.info.run_id != mine and request and tags.get(REQUEST) == request:
            delete_copies([run.info.run_id], mine, store.client.delete_run)
        elif run.info.run_id != mine and claimed_keys(tags) & wanted:
            choosing = tags.get(CHOOSING) == "true"
            found[run.info.run_id] = None if choosing else int(tags.get(TICKET, 0))
    return found
