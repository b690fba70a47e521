"""Overrides of the params, typed end to end: `{"section.key": value}` set into the params tree
and validated by pydantic, each value remembering where it came from (`--set train.lr=0.05`, the
CLI option `--levels 3`, a notebook's `sets=`), so that a bad value is reported at its source.

Only `--set section.key=value` text is parsed, once (YAML), at the command line's edge.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import yaml
from pydantic import ValidationError

from lmctrack.errors import LmcError


class Overrides(dict[str, Any]):
    """Typed values by dotted params key, in the order given (a later value of a key wins), with
    `origins`: how the user wrote each one."""

    def __init__(
        self, values: Mapping[str, Any] | None = None, origins: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(values or {})
        self.origins = {k: v for k, v in (origins or {}).items() if k in self}

    def origin(self, key: str) -> str:
        """Where the value of `key` came from, as the user wrote it."""
        return self.origins.get(key) or f"sets[{key!r}]={self[key]!r}"

    def __or__(self, other: Mapping[str, Any]) -> Overrides:  # type: ignore[override]
        """These overrides, then `other`'s (which win on a shared key)."""
        other = overrides(other)
        merged = Overrides({**self, **other}, {**self.origins, **other.origins})
        for key in other:  # keep the order in which the values were set
            merged.pop(key)
            merged[key] = other[key]
        return merged


def option(key: str, value: Any, flag: str) -> Overrides:
    """One CLI option's value as the override of its params key (nothing when not given)."""
    if value is None:
        return Overrides()
    shown = ",".join(map(str, value)) if isinstance(value, list) else value
    return Overrides({key: value}, {key: f"{flag} {shown}"})


def parse_sets(items: Iterable[str]) -> Overrides:
    """`--set section.key=value` strings, each value read once as YAML (`[0it,100it]`, `true`,
    `0.05`; empty: null)."""
    out = Overrides()
    for item in items:
        if "=" not in item:
            raise LmcError(f"--set '{item}': write section.key=value, e.g. --set train.lr=0.05")
        key, raw = (part.strip() for part in item.split("=", 1))
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            raise LmcError(
                f"--set {key}={raw}: the value is not valid YAML; quote it or fix the brackets, "
                f"e.g. --set {key}=[0it,100it]"
            ) from None
        out = out | Overrides({key: value}, {key: f"--set {key}={raw}"})
    return out


def overrides(sets: Mapping[str, Any] | Iterable[str] | None) -> Overrides:
    """Overrides from a mapping (typed values), or from `--set` strings."""
    if isinstance(sets, Overrides):
        return sets
    if isinstance(sets, Mapping):
        return Overrides(sets)
    return parse_sets(sets or ())


def apply(tree: dict[str, Any], sets: Overrides) -> None:
    """Set each value into the params tree (sections created as needed); pydantic validates."""
    for dotted, value in sets.items():
        keys = dotted.split(".")
        node = tree
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise LmcError(f"{sets.origin(dotted)}: '{key}' is not a section")
            node = child
        node[keys[-1]] = value


def describe(error: ValidationError, source: str, sets: Overrides) -> str:
    """One line naming the field, the problem and where the value came from: the override that
    set it (the one on that field or a section above it), else `source` (the params file)."""
    first = error.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "(top level)"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    value = first.get("input")
    shown = f" (got {value!r})" if first["type"] != "extra_forbidden" and value is not None else ""
    extra = f" and {len(error.errors()) - 1} more" if len(error.errors()) > 1 else ""
    set_by = [k for k in sets if field == k or field.startswith(f"{k}.")]
    if set_by:
        return f"{sets.origin(set_by[-1])}: {field}: {msg}{shown}{extra}; fix the value and re-run"
    return f"{source}: {field}: {msg}{shown}{extra}; fix that field and re-run"
