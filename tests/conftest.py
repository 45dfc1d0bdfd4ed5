"""Shared fixtures: tiny random models of every architecture (fp32 and 4-bit)."""

from __future__ import annotations

import functools

import mlx.core as mx
import pytest

from mlux.testing import ARCHITECTURES, make_tiny_model

PRECISIONS = (None, 4)  # fp32, 4-bit
# Blocks computing x + attn(norm(x)) + mlp(norm(.)) with no norm on the branch outputs.
ADDITIVE = tuple(a for a in ARCHITECTURES if a not in ("gemma2", "gemma3_text", "olmo2"))


@functools.cache
def _reference(arch: str, bits: int | None) -> tuple:
    """Logits and generated tokens of the *unwrapped* model, computed once."""
    model, config = make_tiny_model(arch, quantize_bits=bits)
    tokens = mx.array([[5, 9, 13, 7, 21, 4, 30]])
    logits = model(tokens)
    mx.eval(logits)
    return logits, config


def fresh_model(arch: str, bits: int | None):
    """A new (unwrapped) copy of the seeded tiny model; deterministic, so equal to the reference."""
    return make_tiny_model(arch, quantize_bits=bits)[0]


@pytest.fixture(params=[(a, b) for a in ARCHITECTURES for b in PRECISIONS],
                ids=lambda p: f"{p[0]}-{'4bit' if p[1] else 'fp32'}")
def arch_bits(request):
    return request.param


@pytest.fixture
def reference(arch_bits):
    return _reference(*arch_bits)
