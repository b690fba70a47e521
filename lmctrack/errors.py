"""One exception type for every user-facing failure: the CLI prints its one-line message."""


class LmcError(Exception):
    """A problem the user can fix; the message names the problem and the fix in one line."""
