"""Claims: the same work requested twice at once is done once.

Both kinds of store use one algorithm, Lamport's bakery, over a board of claims: a claimant posts
one claim naming every key it claims, marked `choosing`; reads the live conflicting claims (those
sharing a key); sets ticket = 1 + the highest ticket it saw and ends choosing in one write. It
holds once no conflicting live claim is still choosing or has a lower (ticket, claim id); the
others poll until those end or their owners are known dead. The order needs no clock: a claim
posted after another's ticket was set sees that ticket and takes a higher one; one posted before
is seen by the other's checks, choosing or with its ticket. The lowest (ticket, id) always holds,
so claims never deadlock, and a claim costs one post however many keys it names (a sweep's
thousands of copies included).

A local store's board is its claims folder: a claim is `<id>.claim` (JSON, replaced atomically)
beside `<id>.lock`, which the claimant holds an OS file lock on while it lives (the kernel
releases it when the holder dies, so a killed claimant is seen dead at once and its files are
removed by the next reader). Both files go when the claim ends, however it ends. A tracking
server has no shared folder: a claim is one RUNNING run in the CLAIMS experiment tagged with its
keys, dead when its owner is known dead (on this host; a claimant on another host that died
holds its claims until its run is ended by hand).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
import uuid
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from lmctrack.store.backend import unprefixed
from lmctrack.store.copies import REQUEST, delete_copies

if TYPE_CHECKING:
    from lmctrack.store.view import StoreView

CLAIMS = "lmctrack.claims"
CLAIM_TAG = "claim"
CHOOSING = "choosing"
TICKET = "ticket"
_POLL_SECONDS = 0.5
_FILE_POLL_SECONDS = 0.05  # a folder is cheap to read

Tickets = Callable[[], dict[str, "int | None"]]


def _bakery(mine: str, others: Tickets, set_ticket: Callable[[int], None], poll: float) -> None:
    """Take a ticket and wait for the turn (module docstring); `others`: the tickets of the
    other live conflicting claims by id (None while one is choosing)."""
    ticket = 1 + max((t for t in others().values() if t is not None), default=0)
    set_ticket(ticket)
    while any(t is None or (t, i) < (ticket, mine) for i, t in others().items()):
        time.sleep(poll)


@contextmanager
def file_claim(
    folder: Path, keys: Collection[str], poll: float = _FILE_POLL_SECONDS
) -> Iterator[None]:
    """Hold the claims on keys through one claim in folder (two files, whatever the count)."""
    folder.mkdir(parents=True, exist_ok=True)
    wanted = sorted(set(keys))
    mine = f"{os.getpid()}-{uuid.uuid4().hex}"
    claim, lock = folder / f"{mine}.claim", folder / f"{mine}.lock"
    alive = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
    try:
        fcntl.flock(alive, fcntl.LOCK_EX)
        _post(claim, {"keys": wanted, CHOOSING: True})

        def set_ticket(ticket: int) -> None:
            _post(claim, {"keys": wanted, CHOOSING: False, TICKET: ticket})

        _bakery(mine, lambda: _file_tickets(folder, mine, set(wanted)), set_ticket, poll)
        yield
    finally:
        claim.unlink(missing_ok=True)
        lock.unlink(missing_ok=True)
        os.close(alive)  # the lock goes with it


def _post(claim: Path, data: dict) -> None:
    """Replace the claim's content at once: a reader sees the old or the new, never half."""
    draft = claim.with_suffix(".draft")
    try:
        draft.write_text(json.dumps(data))
        draft.replace(claim)
    finally:
        draft.unlink(missing_ok=True)


def _file_tickets(folder: Path, mine: str, wanted: set[str]) -> dict[str, int | None]:
    """The tickets of the other live claims in folder that share a key with wanted; a dead
    claimant's files are removed on the way."""
    found: dict[str, int | None] = {}
    for claim in folder.glob("*.claim"):
        other = claim.stem
        try:
            data = json.loads(claim.read_text())
        except (FileNotFoundError, ValueError):  # ended meanwhile
            continue
        if other != mine and wanted & set(data["keys"]) and _alive(claim, folder / f"{other}.lock"):
            found[other] = None if data[CHOOSING] else int(data[TICKET])
    return found


def _alive(claim: Path, lock: Path) -> bool:
    """Whether the claim's owner still holds its lock; the files of one that died are removed.
    (An owner makes its lock before its claim and removes it after: a claim without a lock is
    ending or left over.)"""
    try:
        probe = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        probe = None
    if probe is not None:
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(probe)
    for left in (claim, claim.with_suffix(".draft"), lock):
        left.unlink(missing_ok=True)
    return False


def claimed_keys(tags: dict[str, str]) -> set[str]:
    """The keys a claim run claims (its claim.<i> tags; `claim` in runs before multi-key
    claims)."""
    return {v for k, v in tags.items() if k == CLAIM_TAG or k.startswith(CLAIM_TAG + ".")}


@contextmanager
def run_claim(
    store: StoreView, keys: Collection[str], poll: float = _POLL_SECONDS
) -> Iterator[None]:
    """Hold the claims on keys through one claim run in the store (module docstring)."""
    keys = sorted(set(keys))
    tags = {f"{CLAIM_TAG}.{i}": key for i, key in enumerate(keys)}
    name = keys[0] if len(keys) == 1 else f"{keys[0]} and {len(keys) - 1} more"
    wanted = set(keys)
    with store.run(CLAIMS, name, tags={**tags, CHOOSING: "true"}) as mine:

        def set_ticket(ticket: int) -> None:
            mine.set_tags({TICKET: str(ticket), CHOOSING: "false"})

        _bakery(mine.id, lambda: _run_tickets(store, mine.id, wanted), set_ticket, poll)
        yield


def _run_tickets(store: StoreView, mine: str, wanted: set[str]) -> dict[str, int | None]:
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
