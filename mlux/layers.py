"""Layer specs: the one grammar that names hook points everywhere (API, configs, CLI, files).

`"all"` = every `residuals_*`; `"mlp_all"`; `"residuals_10-21"` (inclusive); `"attention_-1"`;
lists (or comma-separated strings) of these; plain ints mean `residuals_i`.
"""

from __future__ import annotations

import re
import warnings
from typing import Iterable, Optional, Union

__all__ = [
    "HOOK_KINDS",
    "LayerSpec",
    "WARN_HOOK_POINTS",
    "expand_layer_specs",
    "hook_point_names",
    "parse_hook_name",
]

HOOK_KINDS = ("residuals", "mlp", "attention")
WARN_HOOK_POINTS = 20
_SPEC = re.compile(r"^(residuals|mlp|attention)_(?:(all)|(-?\d+)(?:-(-?\d+))?)$")
_VALID_FORMS = (
    "'all', 'residuals_all', 'mlp_all', 'attention_all', a single point such as 'residuals_5' "
    "or 'mlp_-1', an inclusive range such as 'residuals_10-21', a plain int (= residuals_i), "
    "or a list of these"
)

LayerSpec = Union[str, int, Iterable[Union[str, int]]]


def hook_point_names(num_layers: int) -> list[str]:
    """Every hook name of a model, block by block: residuals_i, attention_i, mlp_i."""
    return [f"{k}_{i}" for i in range(num_layers) for k in ("attention", "mlp", "residuals")]


def _index(value: int, spec: str, num_layers: int) -> int:
    if not -num_layers <= value < num_layers:
        raise ValueError(
            f"layer spec {spec!r} is out of range: the model has {num_layers} layers, valid "
            f"indices are 0..{num_layers - 1} (or -{num_layers}..-1 from the end)"
        )
    return value % num_layers


def _expand_one(spec: str, num_layers: int) -> list[str]:
    spec = spec.strip()
    if spec == "all":
        return [f"residuals_{i}" for i in range(num_layers)]
    if re.fullmatch(r"-?\d+", spec):
        return [f"residuals_{_index(int(spec), spec, num_layers)}"]
    m = _SPEC.match(spec)
    if m is None:
        raise ValueError(f"unknown layer spec {spec!r}; valid forms: {_VALID_FORMS}")
    kind, is_all, start, end = m.groups()
    if is_all:
        return [f"{kind}_{i}" for i in range(num_layers)]
    lo = _index(int(start), spec, num_layers)
    hi = lo if end is None else _index(int(end), spec, num_layers)
    if hi < lo:
        raise ValueError(f"layer spec {spec!r} is an empty range: {lo} > {hi}")
    return [f"{kind}_{i}" for i in range(lo, hi + 1)]


def parse_hook_name(name: str, num_layers: int) -> tuple[str, int]:
    """'mlp_3' -> ('mlp', 3), for one canonical hook name in range."""
    m = re.fullmatch(r"(residuals|mlp|attention)_(\d+)", name) if isinstance(name, str) else None
    if m is None:
        raise ValueError(f"{name!r} is not a hook point name; valid: residuals_i, mlp_i, "
                         f"attention_i with 0 <= i < {num_layers}")
    return m.group(1), _index(int(m.group(2)), name, num_layers)


def expand_layer_specs(
    specs: LayerSpec,
    num_layers: int,
    *,
    hidden_size: Optional[int] = None,
    bytes_per_value: int = 4,
) -> list[str]:
    """Expand layer specs to hook names, duplicates removed, order kept.

    Raises ValueError naming an unknown or out-of-range spec and the valid range. Warns (does not
    fail) above 20 hook points, with the memory a capture of them takes per token.
    """
    if num_layers <= 0:
        raise ValueError(f"num_layers must be positive, got {num_layers}")
    if isinstance(specs, (str, int)):
        specs = [specs]
    items: list[str] = []
    for spec in specs:
        if isinstance(spec, bool) or not isinstance(spec, (str, int)):
            raise ValueError(f"layer spec {spec!r} must be a string or an int; valid forms: "
                             f"{_VALID_FORMS}")
        items.extend(str(spec).split(",") if isinstance(spec, str) else [str(spec)])
    if not items or all(not s.strip() for s in items):
        raise ValueError(f"no layer spec given; valid forms: {_VALID_FORMS}")
    names = list(dict.fromkeys(n for s in items if s.strip() for n in _expand_one(s, num_layers)))
    if len(names) > WARN_HOOK_POINTS:
        per_token = (
            f" (~{len(names) * hidden_size * bytes_per_value / 1024:.1f} KiB of activations "
            "per token captured)"
            if hidden_size
            else ""
        )
        warnings.warn(
            f"{len(names)} hook points requested (more than {WARN_HOOK_POINTS}){per_token}",
            stacklevel=2,
        )
    return names
