"""Which process owns a run, so that a run left RUNNING by a dead process can be told from a live
one: the host name plus a token that a reused pid or a reboot cannot repeat (boot id, pid and
the process's start time since boot on Linux; the pid alone elsewhere)."""

from __future__ import annotations

import os
import socket
from functools import cache
from pathlib import Path

HOST_TAG = "owner.host"
TOKEN_TAG = "owner.token"


@cache
def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot ('' when unknown, gone or a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat.rsplit(")", 1)[1].split()  # fields 3.. (the command name may hold spaces)
    return "" if fields[0] in ("Z", "X") else fields[19]


def _token(pid: int) -> str:
    return f"{_boot_id()}:{pid}:{_start_time(pid)}"


def owner_tags() -> dict[str, str]:
    """The tags that name this process as a run's owner."""
    return {HOST_TAG: socket.gethostname(), TOKEN_TAG: _token(os.getpid())}


def owner_is_dead(tags: dict[str, str]) -> bool:
    """True only when the owner was on this host and is certainly gone (rebooted, exited, or its
    pid now names another process); an owner elsewhere or unrecorded counts as alive."""
    if tags.get(HOST_TAG) != socket.gethostname() or TOKEN_TAG not in tags:
        return False
    boot, pid, started = tags[TOKEN_TAG].rsplit(":", 2)
    if boot != _boot_id():
        return True
    if not Path("/proc").is_dir():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    return _start_time(int(pid)) != started
