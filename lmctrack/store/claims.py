"""Claims: the same work requested twice at once is done once.

A local store uses an OS file lock under its folder (released by the kernel when the holder
dies, so a killed worker never blocks the next). A tracking server has no shared folder: each
claimant starts a RUNNING run tagged with the key in the CLAIMS experiment, and the earliest live
one holds the claim; the others poll until it ends or its owner is known dead (on this host;
a claimant on another host that died holds the claim until its run is ended by hand).
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from lmctrack.store.backend import TAG_PREFIX

if TYPE_CHECKING:
    from lmctrack.store.core import Store

CLAIMS = "lmctrack.claims"
_POLL_SECONDS = 0.5


@contextmanager
def file_claim(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on path (created if missing) until the block ends."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextmanager
def run_claim(store: Store, key: str, poll: float = _POLL_SECONDS) -> Iterator[None]:
    """Hold the claim on key through claim runs in the store (module docstring)."""
    with store.run(CLAIMS, key, tags={"claim": key}) as mine:
        experiment_id = mine.experiment_id
        while True:
            store.reap(CLAIMS)
            live = store.client.search_runs(
                [experiment_id],
                filter_string=(
                    f"tags.`{TAG_PREFIX}claim` = '{key}' and attributes.status = 'RUNNING'"
                ),
                max_results=1000,
            )
            first = min(live, key=lambda r: (r.info.start_time, r.info.run_id))
            if first.info.run_id == mine.id:
                break
            time.sleep(poll)
        yield
