"""`bake_ablation(layer_weights=...)`: a weighted ablation, as `mlux search --mode ablate` hooks
it (block i's attention and MLP outputs lose w_i of the direction, the embeddings nothing),
baked so that plain mlx-lm on the folder equals the original run with those hooks."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import mlx_lm
import pytest
from mlx.utils import tree_flatten

from mlux import HookedModel, SteeringVector
from mlux.bake import bake_ablation
from mlux.steering import weighted_ablation_hooks

TOKENS = mx.array([[5, 9, 13, 7, 21, 4, 30, 11], [3, 8, 40, 2, 17, 6, 12, 25]])


def _setup(src: Path, seed: int = 3) -> tuple[HookedModel, SteeringVector, mx.array, dict]:
    hooked = HookedModel.from_pretrained(str(src))
    k1, k2 = mx.random.split(mx.random.key(seed))
    vec = SteeringVector({1: mx.random.normal((hooked.hidden_size,), key=k1) * 3.0},
                         model_id="tiny")
    draws = mx.random.uniform(0.2, 1.0, (hooked.num_layers,), key=k2).tolist()
    weights = {i: (0.0 if i % 2 else w) for i, w in enumerate(draws)}  # odd layers: weight 0
    weights[1] = draws[1]  # the direction's own layer partly
    return hooked, vec, vec[1] / mx.linalg.norm(vec[1]), weights


def _rel(a: mx.array, b: mx.array) -> float:
    a, b = a.astype(mx.float32), b.astype(mx.float32)
    return float((mx.linalg.norm((a - b).reshape(-1)) / mx.linalg.norm(b.reshape(-1))).item())


def _plain(folder: Path) -> mx.array:
    model, _ = mlx_lm.load(str(folder))  # plain mlx-lm, no mlux
    return model(TOKENS).astype(mx.float32)


@pytest.mark.parametrize("arch", ["llama", "qwen3_moe"])
def test_weighted_bake_equals_the_weighted_hooks_not_the_full_bake(tiny, tmp_path, arch):
    hooked, vec, u, weights = _setup(tiny(arch))
    assert 0.0 in weights.values() and any(0 < w < 1 for w in weights.values())
    summary = bake_ablation(hooked, vec, out=tmp_path / "w", layer_weights=weights)
    assert summary["logit_error"] < 1e-4 and summary["requantization"] is None
    assert summary["layer_weights"] == {str(i): w for i, w in weights.items() if w}
    reference = hooked.run_with_hooks(TOKENS, weighted_ablation_hooks(u, weights))
    got = _plain(tmp_path / "w")
    assert _rel(got, reference) < 1e-4
    bake_ablation(hooked, vec, out=tmp_path / "full")
    assert _rel(_plain(tmp_path / "full"), reference) > 1e-2  # the weights matter

    original = dict(tree_flatten(hooked.model.parameters()))
    baked = mx.load(str(next((tmp_path / "w").glob("*.safetensors"))))
    baked.update({k: v for f in sorted((tmp_path / "w").glob("*.safetensors"))
                  for k, v in mx.load(str(f)).items()})
    changed = {k for k, v in original.items()
               if k not in baked or not mx.array_equal(baked[k], v)}
    untouched = [i for i, w in weights.items() if w == 0]
    assert changed and all(".layers." in k for k in changed)  # embeddings, norms, head: kept
    assert not any(f".layers.{i}." in k for k in changed for i in untouched)
    config = json.loads((tmp_path / "w" / "config.json").read_text())
    source = json.loads((tiny(arch) / "config.json").read_text())
    assert config.get("tie_word_embeddings") == source.get("tie_word_embeddings")


def test_all_weights_one_equals_the_hooks_on_block_outputs_only(tiny, tmp_path):
    """Weight 1 everywhere is still not the full bake: the embedding keeps the direction."""
    hooked, vec, u, _ = _setup(tiny("llama"))
    ones = {i: 1.0 for i in range(hooked.num_layers)}
    bake_ablation(hooked, vec, out=tmp_path / "w", layer_weights=ones)
    reference = hooked.run_with_hooks(TOKENS, weighted_ablation_hooks(u, ones))
    assert _rel(_plain(tmp_path / "w"), reference) < 1e-4


def test_weighted_bake_4bit_reports_its_logit_error(tiny, tmp_path):
    hooked, vec, u, weights = _setup(tiny("llama", 4))
    summary = bake_ablation(hooked, vec, out=tmp_path / "w", layer_weights=weights)
    q = summary["requantization"]
    assert q is not None and q["max_remaining"] < 0.5 and 0 < q["max_relative"] < 0.12
    assert 0 < summary["logit_error"] < 1.0 and summary["unedited_logit_error"] > 0
    got = HookedModel(*mlx_lm.load(str(tmp_path / "w"))).run_with_hooks(TOKENS, [])
    reference = hooked.run_with_hooks(TOKENS, weighted_ablation_hooks(u, weights))
    assert _rel(got, reference) < 1.0
    saved = json.loads((tmp_path / "w" / "mlux_bake.json").read_text())
    assert saved["logit_error"] == pytest.approx(summary["logit_error"])


@pytest.mark.parametrize("weights, message", [
    ({9: 0.5}, "layer weight for layer 9 out of range"),
    ({1: float("nan")}, "layer 1's ablation weight must be a finite number"),
    ({-1: 0.5, 3: 0.2}, "layer 3 is given two ablation weights"),
])
def test_bad_layer_weights_are_refused_before_anything_is_written(tiny, tmp_path, weights,
                                                                   message):
    hooked, vec, _, _ = _setup(tiny("llama"))
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        bake_ablation(hooked, vec, out=tmp_path / "w", layer_weights=weights)
    assert not (tmp_path / "w").exists()
