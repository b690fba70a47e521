"""One exception type for every user-facing failure: the CLI prints its one-line message."""

from __future__ import annotations

from pathlib import Path


class LmcError(Exception):
    """A problem the user can fix; the message names the problem and the fix in one line."""


def existing_file(path: Path | str, what: str, fix: str) -> None:
    """Check a file the user named before any work starts: '<what> not found; <fix>' if not."""
    if not Path(path).is_file():
        raise LmcError(f"{what} not found; {fix}")
