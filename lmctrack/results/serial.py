"""Typed results as JSON and back: every field, plus each result's headline numbers.

A result's JSON (a run's artifact, `--out`, `--json`) carries what a reader looks for first
beside the fields it is rebuilt from: under `headline`, the numbers derived from the fields (its
barriers, their statistics and verdicts), named as the run's MLflow metrics and `to_frame()`
columns, and at the top the definitions those numbers use. They are derived, so reading a result
back (`from_dict`, for reuse) ignores them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from lmctrack.config import schema
from lmctrack.errors import redact

HEADLINE = "headline"  # the method a result derives them from, and their key in its JSON
DEFINITIONS = "definitions"

R = TypeVar("R")


def to_dict(result: Any) -> Any:
    """A result (or a dict / list of results) as plain JSON-able data, with the headline numbers
    of every result in it and, when there are any, the definitions they use; no password of a
    URI in it."""
    derived: list[bool] = []
    data = _plain(result, derived)
    if derived and isinstance(data, dict) and DEFINITIONS not in data:
        data[DEFINITIONS] = dict(schema.DEFINITIONS)
    return data


def _plain(value: Any, derived: list[bool]) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        data = {f.name: _plain(getattr(value, f.name), derived) for f in dataclasses.fields(value)}
        if (headline := getattr(value, HEADLINE, None)) is None:
            return data
        derived.append(True)
        return {HEADLINE: _plain(headline(), derived), **data}
    if isinstance(value, dict):
        return {k: _plain(v, derived) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v, derived) for v in value]
    return redact(value) if isinstance(value, str) else value  # a tracking URI's password


def known(cls: type, data: dict) -> dict:
    """The entries of a result's JSON that are its fields (not the derived ones)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}


class Flat:
    """A result whose JSON holds plain values only: its fields are the constructor's arguments."""

    @classmethod
    def from_dict(cls: type[R], data: dict) -> R:
        return cls(**known(cls, data))
