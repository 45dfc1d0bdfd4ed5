"""Checks behind the collection config's one-line errors: typed values and a YAML loader that
refuses a key given twice."""

from __future__ import annotations

import math
from typing import Any

import yaml

__all__ = ["UniqueKeyLoader"]


def _fail(where: str, problem: str) -> ValueError:
    return ValueError(f"config {where}: {problem}")


def _int(where: str, value: Any, minimum: int, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(where, f"must be an integer >= {minimum}"
                    + (" or null" if optional else "") + f", got {value!r}")


def _number(where: str, value: Any, *, positive: bool = True) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
            value) or (positive and not value > 0) or value < 0:
        raise _fail(where, f"must be a finite {'positive' if positive else 'non-negative'} number, "
                           f"got {value!r}")


def _choice(where: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise _fail(where, f"must be one of {', '.join(choices)}; got {value!r}")


def _type(where: str, value: Any, kind: type, label: str) -> None:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _fail(where, f"must be {label}, got {value!r}")


class UniqueKeyLoader(yaml.SafeLoader):
    """safe_load, except that a key given twice in one mapping is an error, not a silent win."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one section (the second would "
                                "silently win)", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)
