"""One exception type for every user-facing failure: the CLI prints its one-line message."""

from __future__ import annotations

import re
from pathlib import Path

# scheme://user:password@host: the password, up to the last `@` before the host (urllib's rule)
_PASSWORD = re.compile(r"""(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s/:@"']*):[^\s/"']*@""")


def redact(text: str) -> str:
    """`text` with the password of every URI in it masked (scheme://user:***@host), so that a
    credentialed tracking URI never reaches a param, a tag, a file or a message."""
    if "@" not in text or "://" not in text:
        return text
    return _PASSWORD.sub(r"\1:***@", text)


class LmcError(Exception):
    """A problem the user can fix; the message names the problem and the fix in one line (any
    password in it masked)."""

    def __init__(self, message: object = "", *args: object) -> None:
        super().__init__(redact(str(message)), *args)


def existing_file(path: Path | str, what: str, fix: str) -> None:
    """Check a file the user named before any work starts: '<what> not found; <fix>' if not."""
    if not Path(path).is_file():
        raise LmcError(f"{what} not found; {fix}")
