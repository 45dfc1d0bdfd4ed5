"""`mlux.bake` / `mlux bake`: the baked folder, loaded by plain mlx-lm, equals the original model
run through mlux's hooks (ablation: the direction projected out of the embedding output and of
every attention and MLP output; additive: alpha * v added at residuals_L at every position)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx_lm
import numpy as np
import pytest

from mlux import HookedModel, SteeringVector, cli, generate_batch
from mlux.bake import bake_ablation, bake_steering
from mlux.hooks import HookContext
from mlux.steering import create_ablation_hook, steering_hooks
from mlux.testing import save_tiny_model

TOKENS = mx.array([[5, 9, 13, 7, 21, 4, 30, 11]])
PROMPT = "w9 w13 w7 w21"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("bake")
    made: dict = {}

    def get(arch: str, bits=None) -> Path:
        if (arch, bits) not in made:
            made[arch, bits] = save_tiny_model(root / f"{arch}-{bits}", arch, quantize_bits=bits)
        return made[arch, bits]

    return get


def _vector(hidden: int, layers=(1,), seed=1) -> SteeringVector:
    keys = mx.random.split(mx.random.key(seed), len(layers))
    return SteeringVector({i: mx.random.normal((hidden,), key=k) * 3.0
                           for i, k in zip(layers, keys, strict=True)}, model_id="tiny")


class _ProjectedEmbedding(nn.Module):
    """The embedding's output with the direction ablated; the tied head (as_linear) unchanged."""

    def __init__(self, inner: nn.Module, direction: mx.array):
        super().__init__()
        self.inner = inner
        self.ablate = create_ablation_hook(direction)

    def __call__(self, x):
        y = self.inner(x)
        return self.ablate(y, HookContext("embedding", -1, length=y.shape[1]))

    def as_linear(self, x):
        return self.inner.as_linear(x)


def _ablated_reference(src: Path, direction: mx.array) -> mx.array:
    hooked = HookedModel.from_pretrained(str(src))
    for path, module in list(hooked.model.named_modules()):
        if isinstance(module, (nn.Embedding, nn.QuantizedEmbedding)):
            owner_path, _, name = path.rpartition(".")
            owner = dict(hooked.model.named_modules())[owner_path]
            setattr(owner, name, _ProjectedEmbedding(module, direction))
    hooks = [(f"{kind}_{i}", create_ablation_hook(direction))
             for i in range(hooked.num_layers) for kind in ("attention", "mlp")]
    return hooked.run_with_hooks(TOKENS, hooks).astype(mx.float32)


def _rel(a: mx.array, b: mx.array) -> float:
    return float((mx.linalg.norm((a - b).reshape(-1)) / mx.linalg.norm(b.reshape(-1))).item())


@pytest.mark.parametrize("arch", ["llama", "qwen3_moe", "starcoder2", "gpt_bigcode"])
def test_ablation_equals_the_hooked_original(tiny, tmp_path, arch):
    src = tiny(arch)
    hooked = HookedModel.from_pretrained(str(src))
    vec = _vector(hooked.hidden_size)
    summary = bake_ablation(hooked, vec, out=tmp_path / "out")
    assert summary["requantization_error"] is None and summary["direction_layer"] == 1
    baked = HookedModel(*mlx_lm.load(str(tmp_path / "out")))
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["tie_word_embeddings"] is False
    u = vec[1] / mx.linalg.norm(vec[1])
    acts = baked.capture(TOKENS, "all")
    for name, a in acts.items():  # the stream never carries the direction
        assert float(mx.abs(a @ u).max()) < 1e-4 * float(mx.abs(a).max()), name
    logits = baked.run_with_hooks(TOKENS, [])
    assert _rel(logits, _ablated_reference(src, vec[1])) < 1e-4
    card = (tmp_path / "out" / "README.md").read_text()
    assert "ablation" in card and "layer 1" in card


def test_ablation_4bit_requantizes_with_bounded_error(tiny, tmp_path):
    src = tiny("llama", 4)
    hooked = HookedModel.from_pretrained(str(src))
    vec = _vector(hooked.hidden_size)
    summary = bake_ablation(hooked, vec, out=tmp_path / "out")
    q = summary["requantization_error"]
    # 4-bit, group size 32: ~7% relative per edited matrix, the size of 4-bit noise itself.
    assert 0 < q["max_relative"] < 0.1
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["quantization"]["group_size"] == 32 and config["quantization"]["bits"] == 4
    baked = HookedModel(*mlx_lm.load(str(tmp_path / "out")))
    u = vec[1] / mx.linalg.norm(vec[1])
    before = hooked.capture(TOKENS, "all")
    after = baked.capture(TOKENS, "all")
    for name in before:  # requantisation noise leaves part of the direction, well under before
        b, a = (float(mx.sqrt(mx.mean((x @ u) ** 2))) for x in (before[name], after[name]))
        assert a < 0.5 * b, (name, a, b)
    reference = _ablated_reference(src, vec[1])
    logits = baked.run_with_hooks(TOKENS, []).astype(mx.float32)
    rel = _rel(logits, reference)
    same = float(mx.mean(logits.argmax(-1) == reference.argmax(-1)).item())
    print(f"4-bit ablation: logit rel err {rel:.3g}, argmax agreement {same:.2f}")
    # Measured 0.28 and 5/8; quantizing this fp32 model to 4-bit at all costs more (0.47, 5/8):
    # requantizing after the edit adds about one round of 4-bit noise.
    assert rel < 0.4 and same >= 0.5, (rel, same)


@pytest.mark.parametrize(("arch", "bits"), [("llama", None), ("gpt2", None), ("llama", 4)])
def test_additive_equals_steering_the_original(tiny, tmp_path, arch, bits):
    src = tiny(arch, bits)
    hooked = HookedModel.from_pretrained(str(src))
    vec = _vector(hooked.hidden_size, layers=(0, 1), seed=2)
    alpha = 1.5
    bake_steering(hooked, vec, alpha, out=tmp_path / "out")
    model, tok = mlx_lm.load(str(tmp_path / "out"))
    hooks = steering_hooks(vec, alpha)
    logits = model(TOKENS).astype(mx.float32)
    reference = hooked.run_with_hooks(TOKENS, hooks).astype(mx.float32)
    assert _rel(logits, reference) < (1e-4 if bits is None else 1e-2)
    assert _rel(logits, hooked.run_with_hooks(TOKENS, []).astype(mx.float32)) > 1e-2
    ids = tok.encode(PROMPT)
    plain = [r.token for r in mlx_lm.stream_generate(model, tok, ids, max_tokens=12)]
    steered = generate_batch(hooked, [ids], max_tokens=12, hooks=hooks)[0]
    assert plain == steered


def test_the_folder_runs_without_mlux(tiny, tmp_path):
    src = tiny("llama")
    hooked = HookedModel.from_pretrained(str(src))
    vec = _vector(hooked.hidden_size)
    bake_ablation(hooked, vec, out=tmp_path / "abl")
    bake_steering(hooked, vec, 2.0, out=tmp_path / "add")
    script = (
        "import sys; sys.modules['mlux'] = None\n"
        "import mlx.core as mx, mlx_lm, numpy as np\n"
        f"for name in ('abl', 'add'):\n"
        f"    model, tok = mlx_lm.load({str(tmp_path)!r} + '/' + name)\n"
        f"    x = mx.array({TOKENS.tolist()!r})\n"
        f"    np.save({str(tmp_path)!r} + '/' + name + '.npy', np.array(model(x)))\n"
        "    print(mlx_lm.generate(model, tok, 'w9 w13', max_tokens=4))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    abl = mx.array(np.load(tmp_path / "abl.npy"))
    add = mx.array(np.load(tmp_path / "add.npy"))
    assert _rel(abl, _ablated_reference(src, vec[1])) < 1e-4
    assert _rel(add, hooked.run_with_hooks(TOKENS, steering_hooks(vec, 2.0))) < 1e-4
    files = {p.name for p in (tmp_path / "add").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "README.md", "mlux_bake.json"} <= files


@pytest.mark.parametrize(("arch", "mode", "message"), [
    ("gemma2", "ablate", "post-norm"),
    ("olmo2", "ablate", "post-norm"),
    ("gemma", "ablate", "cannot be edited without changing the LM head"),
    ("qwen2", "add", "additive baking works for llama"),
])
def test_refused_architectures(tiny, tmp_path, arch, mode, message):
    hooked = HookedModel.from_pretrained(str(tiny(arch)))
    vec = _vector(hooked.hidden_size)
    with pytest.raises(ValueError, match=message):
        if mode == "ablate":
            bake_ablation(hooked, vec, out=tmp_path / "out")
        else:
            bake_steering(hooked, vec, 1.0, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bad_vectors_and_layers(tiny, tmp_path):
    hooked = HookedModel.from_pretrained(str(tiny("llama")))
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="hidden size"):
        bake_ablation(hooked, _vector(hooked.hidden_size + 1), out=out)
    with pytest.raises(ValueError, match="out of range"):
        bake_steering(hooked, _vector(hooked.hidden_size), 1.0, layers=[99], out=out)
    with pytest.raises(ValueError, match="no direction at layers"):
        bake_steering(hooked, _vector(hooked.hidden_size), 1.0, layers=[0], out=out)
    with pytest.raises(ValueError, match="one global direction"):
        bake_ablation(hooked, _vector(hooked.hidden_size, layers=(0, 1)), out=out)
    with pytest.raises(ValueError, match="finite alpha"):
        bake_steering(hooked, _vector(hooked.hidden_size), float("nan"), out=out)
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="--overwrite"):
        bake_ablation(hooked, _vector(hooked.hidden_size), out=out)
    bake_ablation(hooked, _vector(hooked.hidden_size), out=out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "config.json").is_file()


def test_cli(tiny, tmp_path, capsys):
    src = tiny("llama")
    vec_path = _vector(64, layers=(0, 1)).save(tmp_path / "v.safetensors")
    hidden = HookedModel.from_pretrained(str(src)).hidden_size
    assert hidden == 64
    out = tmp_path / "baked"
    args = ["bake", "--model", str(src), "--out", str(out)]
    assert cli.main([*args, "--vector", str(vec_path), "--alpha", "2", "--layers", "1"]) == 0
    assert "layers [1]" in capsys.readouterr().out
    assert json.loads((out / "mlux_bake.json").read_text())["layers"] == [1]
    assert cli.main([*args, "--ablate", str(vec_path), "--layers", "1"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert cli.main([*args, "--ablate", str(vec_path), "--layers", "1", "--overwrite"]) == 0
    assert "baked an ablation" in capsys.readouterr().out
    for extra, message in [(["--vector", str(vec_path)], "--vector needs --alpha"),
                           (["--ablate", str(vec_path)], "choose one layer"),
                           (["--ablate", str(vec_path), "--layers", "9"], "out of range")]:
        assert cli.main([*args, "--overwrite", *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("mlux bake: error: ") and message in err, err
