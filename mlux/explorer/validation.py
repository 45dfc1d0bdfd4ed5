"""Request schemas for the explorer's JSON API: every field checked for type, range and size.

Fields are read with `mlux.web.Fields`; a bad request raises `mlux.web.RequestError`, which the
app renders as `{"error": ..., "field": ...}`. Unknown fields are rejected too, so typos don't pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

from mlux import web
from mlux.vector_library import validate_name
from mlux.web import Fields, RequestError
from mlux.web.condition_fields import ConditionSettings, condition_object, read_condition_settings

__all__ = [
    "ComputeRequest", "ConditionRequest", "GenerateRequest", "Limits", "SaveRequest",
    "SweepRequest", "VectorRef", "parse_compute", "parse_generate", "parse_save", "parse_sweep",
    "read_vector_ref",
]

METHODS = ("mean_diff", "pca")
# "raw": steer with alpha x vector; "residual": alpha is a fraction of the layer's residual norm
# at the prompt's last token (alpha x that norm x the unit vector), as in the layer sweep.
ALPHA_UNITS = ("raw", "residual")


@dataclass(frozen=True)
class Limits(web.Limits):
    """The shared limits (max_tokens 256, |alpha| <= 1000, temperature <= 5, 1 MiB bodies) and
    the explorer's own: prompt sizes, sweep length, alphas per request."""

    max_prompt_chars: int = 4000
    max_prompts: int = 64
    max_sweep_tokens: int = 64
    max_alphas: int = 8
    # Tokens of all contrast prompts of one /api/compute together: extraction time grows with
    # them, and no request should hold the model more than a few seconds (see docs/explorer.md).
    max_compute_tokens: int = 8192


@dataclass(frozen=True)
class VectorRef:
    """A vector computed in this session (`id`) or stored in the library (`name`)."""

    id: Optional[str] = None
    name: Optional[str] = None


@dataclass(frozen=True)
class ComputeRequest:
    positive: list[str]
    negative: list[str]
    method: str
    chat: bool


@dataclass(frozen=True)
class ConditionRequest:
    """Steer the rows only if the prompt fires this condition (conditional steering)."""

    vector: VectorRef
    settings: ConditionSettings


@dataclass(frozen=True)
class GenerateRequest:
    prompt: str
    vector: VectorRef
    layers: list[int]
    alphas: list[float]  # steered rows; row 0 (the baseline) is always added
    max_tokens: int
    temperature: float
    seed: Optional[int]
    positions: str
    chat: bool
    alpha_unit: str = "raw"
    condition: Optional[ConditionRequest] = None


@dataclass(frozen=True)
class SaveRequest:
    name: str
    vector: VectorRef
    overwrite: bool


@dataclass(frozen=True)
class SweepRequest:
    prompt: str
    vector: VectorRef
    layers: Optional[list[int]]
    alpha: float
    max_tokens: int
    mode: str
    chat: bool
    alpha_unit: str = "raw"


def read_vector_ref(f: Fields, key: str = "vector") -> VectorRef:
    """`{"id": ...}` (a computed vector) or `{"name": ...}` (a library vector)."""
    value = f.get(key, required=True)
    if not isinstance(value, dict):
        raise f.fail(key, 'must be {"id": ...} (a computed vector) or {"name": ...} '
                          "(a library vector)")
    if ("id" in value) == ("name" in value):
        raise f.fail(key, 'must have exactly one of "id" and "name"')
    inner = Fields(value, prefix=f"{f.prefix}{key}.")
    ref_id = inner.text("id", 64, required=False)
    name = inner.text("name", 64, required=False)
    inner.done()
    if name is not None:
        try:
            validate_name(name)
        except ValueError as exc:
            raise inner.fail("name", f"is invalid: {exc}") from None
    return VectorRef(id=ref_id, name=name)


def parse_compute(body: dict[str, Any], limits: Limits) -> ComputeRequest:
    f = Fields(body)
    pos = f.texts("positive", limits.max_prompts, limits.max_prompt_chars)
    neg = f.texts("negative", limits.max_prompts, limits.max_prompt_chars)
    req = ComputeRequest(pos, neg, f.choice("method", METHODS, "mean_diff"),
                         f.boolean("chat", False))
    f.done()
    if req.method == "pca" and (len(pos) != len(neg) or len(pos) < 2):
        raise RequestError("method 'pca' needs as many negative prompts as positive ones, at "
                           "least 2 pairs", "negative")
    return req


def parse_generate(body: dict[str, Any], limits: Limits, num_layers: int) -> GenerateRequest:
    f = Fields(body)
    prompt = f.text("prompt", limits.max_prompt_chars)
    vector = read_vector_ref(f)
    layers = f.layers("layers", num_layers, required=True)
    alpha_given = body.get("alpha") is not None
    alphas = f.numbers("alphas", limits.max_alphas, -limits.max_alpha, limits.max_alpha)
    alpha = f.number("alpha", -limits.max_alpha, limits.max_alpha, 0.0)
    if alphas is not None and alpha_given:
        raise RequestError("give either alpha (one steered row) or alphas (compare mode), not "
                           "both", "alphas")
    req = GenerateRequest(
        prompt=prompt, vector=vector, layers=layers,  # type: ignore[arg-type]
        alphas=alphas if alphas is not None else [alpha],
        max_tokens=f.integer("max_tokens", 1, limits.max_tokens, 48),  # type: ignore[arg-type]
        temperature=f.number("temperature", 0.0, limits.max_temperature, 0.0),
        seed=f.integer("seed", 0, 2**31 - 1),
        positions=f.positions(),
        chat=f.boolean("chat", False),
        alpha_unit=f.choice("alpha_unit", ALPHA_UNITS, "raw"),
        condition=_condition(f, num_layers),
    )
    f.done()
    return req


def _condition(f: Fields, num_layers: int) -> Optional[ConditionRequest]:
    c = condition_object(f)
    if c is None:
        return None
    req = ConditionRequest(read_vector_ref(c), read_condition_settings(c, num_layers))
    c.done()
    return req


def parse_save(body: dict[str, Any]) -> SaveRequest:
    f = Fields(body)
    name = f.text("name", 64)
    try:
        validate_name(name)  # type: ignore[arg-type]
    except ValueError as exc:
        raise RequestError(str(exc), "name") from None
    req = SaveRequest(name, read_vector_ref(f), f.boolean("overwrite", False))  # type: ignore[arg-type]
    f.done()
    return req


def parse_sweep(body: dict[str, Any], limits: Limits, num_layers: int,
                modes: Sequence[str]) -> SweepRequest:
    f = Fields(body)
    req = SweepRequest(
        prompt=f.text("prompt", limits.max_prompt_chars),  # type: ignore[arg-type]
        vector=read_vector_ref(f),
        layers=f.layers("layers", num_layers, required=False),
        alpha=f.number("alpha", -limits.max_alpha, limits.max_alpha),
        max_tokens=f.integer("max_tokens", 1, limits.max_sweep_tokens, 16),  # type: ignore[arg-type]
        mode=f.choice("mode", modes, modes[0]),
        chat=f.boolean("chat", False),
        alpha_unit=f.choice("alpha_unit", ALPHA_UNITS, "raw"),
    )
    f.done()
    return req
