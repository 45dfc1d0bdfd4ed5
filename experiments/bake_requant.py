"""4-bit ablation bake: how much of the direction requantising leaves, and the logit error.

For each architecture (tiny 4-bit models from `mlux.testing`, group size 32, hidden 64, and the
trained built-in `mlux-toy-4bit`), one random unit direction is baked out of every residual
writer twice: with plain nearest rounding (the old requantisation) and with the rounding
`mlux.bake.rounding` chooses. On a held-out prompt set (random token rows, not the bake's own
probe) it reports, per layer, the RMS of the direction's component in the baked model's stream
relative to the original's, and the relative logit error against the reference (the original
4-bit model run with the ablation hook on the embedding output and every attention and MLP
output) next to the unedited model's.

    python experiments/bake_requant.py            # writes experiments/results/bake_requant.json
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

import mlx.core as mx
import mlx.nn as nn
import mlx_lm

from mlux import HookedModel, SteeringVector
from mlux.atomic import atomic_write_json
from mlux.bake import bake_ablation
from mlux.bake.edits import ablate_weights
from mlux.hooks import HookContext
from mlux.steering import create_ablation_hook
from mlux.testing import save_tiny_model

ARCHS = ("llama", "mistral", "qwen2", "qwen3", "qwen3_moe", "phi3", "starcoder2")
RESULT = Path(__file__).parent / "results" / "bake_requant.json"


class _ProjectedEmbedding(nn.Module):
    """The embedding's output with the direction ablated; a tied head (as_linear) unchanged."""

    def __init__(self, inner: nn.Module, direction: mx.array) -> None:
        super().__init__()
        self.inner = inner
        self.ablate = create_ablation_hook(direction)

    def __call__(self, x: mx.array) -> mx.array:
        y = self.inner(x)
        return self.ablate(y, HookContext("embedding", -1, length=y.shape[1]))

    def as_linear(self, x: mx.array) -> mx.array:
        return self.inner.as_linear(x)


def _reference(model_id: str, direction: mx.array, tokens: mx.array) -> mx.array:
    hooked = HookedModel.from_pretrained(model_id)
    modules = dict(hooked.model.named_modules())
    for path, module in list(modules.items()):
        if isinstance(module, (nn.Embedding, nn.QuantizedEmbedding)):
            owner_path, _, name = path.rpartition(".")
            setattr(modules[owner_path], name, _ProjectedEmbedding(module, direction))
    hook = create_ablation_hook(direction)
    hooks = [(n, hook) for n in hooked.hook_points if not n.startswith("residuals_")]
    return hooked.run_with_hooks(tokens, hooks).astype(mx.float32)


def _rel(a: mx.array, b: mx.array) -> float:
    return float((mx.linalg.norm((a - b).reshape(-1)) / mx.linalg.norm(b.reshape(-1))).item())


def _components(hooked: HookedModel, tokens: mx.array, unit: mx.array) -> list[float]:
    acts = hooked.capture(tokens, "all")
    return [float(mx.sqrt(mx.mean((acts[f"residuals_{i}"].astype(mx.float32) @ unit) ** 2)))
            for i in range(hooked.num_layers)]


def measure(model_id: str, out: Path, seed: int) -> dict[str, Any]:
    hooked = HookedModel.from_pretrained(model_id)
    d = mx.random.normal((hooked.hidden_size,), key=mx.random.key(seed))
    unit = d / mx.linalg.norm(d)
    layer = hooked.num_layers // 2
    vec = SteeringVector({layer: unit * 4.0}, model_id=model_id)
    vocab = int(hooked.vocab_size)
    held_out = mx.random.randint(4, vocab, (8, 24), key=mx.random.key(seed + 1000))
    reference = _reference(model_id, unit, held_out)
    before = _components(hooked, held_out, unit)
    unedited = _rel(hooked.run_with_hooks(held_out, []).astype(mx.float32), reference)
    row: dict[str, Any] = {"model": model_id if "/" not in model_id else Path(model_id).name,
                           "model_type": hooked.model_type, "layers": hooked.num_layers,
                           "hidden_size": hooked.hidden_size, "unedited_logit_error": unedited}
    for name, patch in (("nearest_rounding", ()), ("chosen_rounding", None)):
        target = out / f"{row['model']}-{name}"
        if patch is None:
            summary = bake_ablation(hooked, vec, out=target, overwrite=True)
        else:  # the old requantisation: every matrix rounded to its nearest grid point
            with mock.patch("mlux.bake.edits.PACKED_BITS", patch):
                summary = bake_ablation(hooked, vec, out=target, overwrite=True)
        baked = HookedModel(*mlx_lm.load(str(target)))
        after = _components(baked, held_out, unit)
        logits = baked.run_with_hooks(held_out, []).astype(mx.float32)
        row[name] = {
            "component_left_per_layer": [a / b for a, b in zip(after, before, strict=True)],
            "component_left_max": max(a / b for a, b in zip(after, before, strict=True)),
            "logit_error": _rel(logits, reference),
            "matrix_relative_error_max": summary["requantization"]["max_relative"],
        }
    return row


def speed(rows: int, cols: int, group_size: int = 64) -> dict[str, Any]:
    """Seconds to ablate one random 4-bit `(rows, cols)` output projection, nearest rounding
    vs chosen rounding (wall and process CPU time; the machine may be shared)."""
    w = mx.random.normal((rows, cols), key=mx.random.key(1)) * 0.02
    qw, qs, qb = mx.quantize(w, group_size=group_size, bits=4)
    unit = mx.random.normal((rows,), key=mx.random.key(2))
    unit = unit / mx.linalg.norm(unit)
    config = {"quantization": {"group_size": group_size, "bits": 4}}
    out: dict[str, Any] = {"shape": [rows, cols], "group_size": group_size}
    for name, patch in (("nearest_rounding", ()), ("chosen_rounding", None)):
        weights = {"m.layers.0.mlp.down_proj.weight": qw, "m.layers.0.mlp.down_proj.scales": qs,
                   "m.layers.0.mlp.down_proj.biases": qb}
        mx.eval(weights)
        wall, cpu = time.perf_counter(), time.process_time()
        with mock.patch("mlux.bake.edits.PACKED_BITS", patch if patch is not None else
                        (2, 4, 8)):
            edit = ablate_weights(weights, config, unit, [], ["m.layers.0.mlp.down_proj"])
        out[name] = {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
                     "component_left": edit["m.layers.0.mlp.down_proj"].remaining,
                     "relative_error": edit["m.layers.0.mlp.down_proj"].relative}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", type=Path, default=RESULT)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        models = [str(save_tiny_model(root / a, a, quantize_bits=4)) for a in ARCHS]
        for model_id in [*models, "mlux-toy-4bit"]:
            row = measure(model_id, root, args.seed)
            rows.append(row)
            n, c = row["nearest_rounding"], row["chosen_rounding"]
            print(f"{row['model_type']:<11} component left {n['component_left_max']:.3f} -> "
                  f"{c['component_left_max']:.2e}   logit error {n['logit_error']:.3f} -> "
                  f"{c['logit_error']:.3f} (unedited {row['unedited_logit_error']:.3f})   "
                  f"matrix error {n['matrix_relative_error_max']:.3f} -> "
                  f"{c['matrix_relative_error_max']:.3f}")
    timings = [speed(r, c) for r, c in ((1024, 2816), (2048, 5632))]
    for t in timings:
        n, c = t["nearest_rounding"], t["chosen_rounding"]
        print(f"{t['shape']}: wall {n['wall_s']:.2f}s -> {c['wall_s']:.2f}s, cpu "
              f"{n['cpu_s']:.2f}s -> {c['cpu_s']:.2f}s; component left "
              f"{n['component_left']:.3f} -> {c['component_left']:.1e}, error "
              f"{n['relative_error']:.4f} -> {c['relative_error']:.4f}")
    atomic_write_json(args.output, {"bits": 4, "group_size": "the model's (32 tiny, toy: "
                                    "its own)", "held_out": "8 rows x 24 random tokens",
                                    "models": rows, "speed": timings})
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
