"""Shared fixtures: tiny random models of every architecture (fp32 and 4-bit), in memory
(`arch_bits`, `reference`) or saved as model folders (`tiny`)."""

from __future__ import annotations

import functools
from pathlib import Path

import mlx.core as mx
import pytest

from mlux.testing import ARCHITECTURES, make_tiny_model, save_tiny_model

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


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """`tiny(arch, bits=None)`: the seeded tiny model saved as a folder, once per module (a
    module may define its own `tiny`)."""
    root = tmp_path_factory.mktemp("tiny")
    made: dict = {}

    def get(arch: str, bits=None) -> Path:
        if (arch, bits) not in made:
            made[arch, bits] = save_tiny_model(root / f"{arch}-{bits}", arch, quantize_bits=bits)
        return made[arch, bits]

    return get
