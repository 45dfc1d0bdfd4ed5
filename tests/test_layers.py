"""Layer-spec grammar: expansion, order, dedupe, and errors that name the valid range."""

from __future__ import annotations

import pytest

from mlux import expand_layer_specs


@pytest.mark.parametrize(
    ("specs", "expected"),
    [
        ("all", [f"residuals_{i}" for i in range(6)]),
        ("residuals_all", [f"residuals_{i}" for i in range(6)]),
        ("mlp_all", [f"mlp_{i}" for i in range(6)]),
        ("attention_all", [f"attention_{i}" for i in range(6)]),
        ("residuals_2-4", ["residuals_2", "residuals_3", "residuals_4"]),
        ("mlp_5", ["mlp_5"]),
        ("residuals_-1", ["residuals_5"]),
        ("attention_-3--2", ["attention_3", "attention_4"]),
        (
            ["mlp_1", "residuals_0-1", "mlp_1", "residuals_1"],
            ["mlp_1", "residuals_0", "residuals_1"],
        ),
        ("residuals_1,mlp_0", ["residuals_1", "mlp_0"]),
        ([3, -1], ["residuals_3", "residuals_5"]),
    ],
)
def test_expansion(specs, expected):
    assert expand_layer_specs(specs, 6) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("residuals_6", r"out of range.*6 layers.*0\.\.5"),
        ("mlp_-7", r"out of range"),
        ("mlp_2-9", r"out of range"),
        ("blocks_3", r"unknown layer spec 'blocks_3'.*valid forms"),
        ("residuals_", r"unknown layer spec"),
        ("mlp_4-2", r"empty range"),
        ([], r"no layer spec"),
        ([1.5], r"must be a string or an int"),
    ],
)
def test_errors_name_the_spec_and_range(spec, message):
    with pytest.raises(ValueError, match=message):
        expand_layer_specs(spec, 6)


def test_warns_above_twenty_points_with_memory():
    with pytest.warns(UserWarning, match=r"48 hook points.*KiB of activations per token"):
        names = expand_layer_specs(["all", "mlp_all"], 24, hidden_size=1024)
    assert len(names) == 48


def test_twenty_points_do_not_warn(recwarn):
    expand_layer_specs("all", 20, hidden_size=64)
    assert not [w for w in recwarn if "hook points" in str(w.message)]
