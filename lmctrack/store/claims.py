"""Claims: the same work requested twice at once is done once.

A local store uses OS file locks under its folder, taken in sorted order (the kernel releases
them when the holder dies, so a killed worker never blocks the next). A tracking server has no
shared folder: a claimant starts one RUNNING run in the CLAIMS experiment tagged with every key
it claims, and holds them all once no earlier live run claims any of them; the others poll until
those end or their owners are known dead (on this host; a claimant on another host that died
holds its claims until its run is ended by hand). The earliest of any conflicting claim runs
always holds, so claims never deadlock, and a sweep's claim costs a few requests, not a few per
key.
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Collection, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from lmctrack.store.backend import unprefixed

if TYPE_CHECKING:
    from lmctrack.store.core import Store

CLAIMS = "lmctrack.claims"
CLAIM_TAG = "claim"
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
    with store.run(CLAIMS, name, tags=tags) as mine:
        wanted = set(keys)
        while True:
            live = {r.info.run_id: r for r in store.running(CLAIMS)}
            started = {i: (r.info.start_time, i) for i, r in live.items()}
            if not any(
                started[i] < started[mine.id] and claimed_keys(unprefixed(r.data.tags)) & wanted
                for i, r in live.items()
            ):
                break
            time.sleep(poll)
        yield
