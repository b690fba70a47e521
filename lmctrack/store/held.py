"""Held states: the states this process registered into a tracking server, kept in memory, so
that reading one back (a sweep forks the Wk it just registered) costs no download: the client
knows the answer, whose files' sha256 it computed itself. The newest up to a byte limit stay."""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch: imported only by a process that holds states, not by a lookup
    from lmctrack.engine.state import State

_LIMIT = 256 * 2**20  # bytes: a few states of a large network, hundreds of a small one


def _copy(state: State) -> State:
    """A state of its own (a caller may change the tensors it gets)."""
    from lmctrack.engine.state import State

    mask = None if state.mask is None else {k: v.clone() for k, v in state.mask.items()}
    return State({k: v.clone() for k, v in state.weights.items()}, mask)


def _size(state: State) -> int:
    tensors = [*state.weights.values(), *(state.mask or {}).values()]
    return sum(t.numel() * t.element_size() for t in tensors)


class Held:
    def __init__(self, limit: int = _LIMIT) -> None:
        self._states: OrderedDict[str, tuple[State, int]] = OrderedDict()
        self._bytes, self._limit = 0, limit

    def put(self, uri: str, state: State) -> None:
        size = _size(state)
        if size > self._limit or uri in self._states:
            return
        self._states[uri] = (_copy(state), size)
        self._bytes += size
        while self._bytes > self._limit:
            self._bytes -= self._states.popitem(last=False)[1][1]

    def get(self, uri: str) -> State | None:
        held = self._states.get(uri)
        return None if held is None else _copy(held[0])
