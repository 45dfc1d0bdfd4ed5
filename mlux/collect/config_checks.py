"""Checks behind the collection config's one-line errors: typed values (quoted with a bound,
`mlux.untrusted.short`) and a YAML loader that refuses a key given twice and an alias bomb."""

from __future__ import annotations

import math
from typing import Any

import yaml

from mlux.untrusted import short

__all__ = ["MAX_EXPANDED_NODES", "UniqueKeyLoader"]

# A config is a few dozen values; aliases may repeat some, but `&b [*a, *a, ...]` nine levels
# deep expands to 9**9 values, which anything walking the result (repr, json) would exhaust.
MAX_EXPANDED_NODES = 100_000


def _fail(where: str, problem: str) -> ValueError:
    return ValueError(f"config {where}: {problem}")


def _int(where: str, value: Any, minimum: int, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(where, f"must be an integer >= {minimum}"
                    + (" or null" if optional else "") + f", got {short(value)}")


def _number(where: str, value: Any, *, positive: bool = True) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
            value) or (positive and not value > 0) or value < 0:
        raise _fail(where, f"must be a finite {'positive' if positive else 'non-negative'} number, "
                           f"got {short(value)}")


def _choice(where: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise _fail(where, f"must be one of {', '.join(choices)}; got {short(value)}")


def _type(where: str, value: Any, kind: type, label: str) -> None:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _fail(where, f"must be {label}, got {short(value)}")


class UniqueKeyLoader(yaml.SafeLoader):
    """safe_load, except that a key given twice in one mapping is an error, not a silent win,
    and a document whose aliases expand beyond `MAX_EXPANDED_NODES` values is refused before
    it is built."""

    def construct_document(self, node: yaml.Node) -> Any:
        _expanded_size(node, {}, set())
        return super().construct_document(node)

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
                    None, None, f"key {short(key)} appears twice in one section (the second would "
                                "silently win)", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_: set[int]) -> int:
    """How many values `node` stands for once every alias is copied out (memoised per node, so
    the count costs the document's own size)."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_:
        raise yaml.constructor.ConstructorError(None, None, "an alias refers to the value that "
                                                "contains it (a recursive config)", node.start_mark)
    open_.add(key)
    children: list[yaml.Node] = []
    if isinstance(node, yaml.SequenceNode):
        children = list(node.value)
    elif isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    total = 1 + sum(_expanded_size(child, sizes, open_) for child in children)
    open_.discard(key)
    if total > MAX_EXPANDED_NODES:
        raise yaml.constructor.ConstructorError(
            None, None, f"the aliases expand to more than {MAX_EXPANDED_NODES} values (an "
            "alias bomb?); a collection config needs far fewer", node.start_mark)
    sizes[key] = total
    return total
