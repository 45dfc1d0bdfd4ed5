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
from mlx.utils import tree_unflatten

from mlux import HookedModel, SteeringVector, cli, generate_batch
from mlux.bake import bake_ablation, bake_steering, bake_support
from mlux.hooks import HookContext
from mlux.steering import create_ablation_hook, steering_hooks
from mlux.testing import save_tiny_model

TOKENS = mx.array([[5, 9, 13, 7, 21, 4, 30, 11]])
PROMPT = "w9 w13 w7 w21"


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


def _ablated_reference(src: Path, direction: mx.array, tokens: mx.array = TOKENS) -> mx.array:
    hooked = HookedModel.from_pretrained(str(src))
    for path, module in list(hooked.model.named_modules()):
        if isinstance(module, (nn.Embedding, nn.QuantizedEmbedding)):
            owner_path, _, name = path.rpartition(".")
            owner = dict(hooked.model.named_modules())[owner_path]
            setattr(owner, name, _ProjectedEmbedding(module, direction))
    hook = create_ablation_hook(direction)
    hooks = [(n, hook) for n in hooked.hook_points if not n.startswith("residuals_")]
    return hooked.run_with_hooks(tokens, hooks).astype(mx.float32)


def _rel(a: mx.array, b: mx.array) -> float:
    return float((mx.linalg.norm((a - b).reshape(-1)) / mx.linalg.norm(b.reshape(-1))).item())


@pytest.mark.parametrize("arch", ["llama", "qwen3_moe", "starcoder2", "gpt_bigcode"])
def test_ablation_equals_the_hooked_original(tiny, tmp_path, arch):
    src = tiny(arch)
    hooked = HookedModel.from_pretrained(str(src))
    vec = _vector(hooked.hidden_size)
    summary = bake_ablation(hooked, vec, out=tmp_path / "out")
    assert summary["requantization"] is None and summary["direction_layer"] == 1
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


def _component_rms(acts: dict, u: mx.array) -> dict:
    return {k: float(mx.sqrt(mx.mean((a.astype(mx.float32) @ u) ** 2))) for k, a in acts.items()}


@pytest.mark.parametrize("arch", ["llama", "qwen3_moe"])
def test_ablation_4bit_keeps_the_direction_out_after_requantizing(tiny, tmp_path, arch):
    """Issue 25.5: plain requantisation left 0.09-0.24x of the component; the chosen rounding
    leaves < 1% at every layer, and the baked logits are closer to the hooked reference than
    the unedited model's (on qwen3_moe they were not)."""
    src = tiny(arch, 4)
    hooked = HookedModel.from_pretrained(str(src))
    vec = _vector(hooked.hidden_size)
    summary = bake_ablation(hooked, vec, out=tmp_path / "out")
    q = summary["requantization"]
    # 4-bit, group size 32: ~7% relative error from rounding alone, ~9% with the chosen rounding
    assert 0 < q["max_relative"] < 0.12
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["quantization"]["group_size"] == 32 and config["quantization"]["bits"] == 4
    baked = HookedModel(*mlx_lm.load(str(tmp_path / "out")))
    u = vec[1] / mx.linalg.norm(vec[1])
    held_out = mx.array([[40, 41, 50, 17, 9, 33, 12, 8, 61, 25],
                         [7, 7, 19, 52, 30, 44, 5, 60, 14, 21]])  # not the bake's probe
    before = _component_rms(hooked.capture(held_out, "all"), u)
    after = _component_rms(baked.capture(held_out, "all"), u)
    for name in before:
        assert after[name] < 0.01 * before[name], (name, after[name], before[name])
    reference = _ablated_reference(src, vec[1], held_out)
    logits = baked.run_with_hooks(held_out, []).astype(mx.float32)
    unedited = hooked.run_with_hooks(held_out, []).astype(mx.float32)
    print(f"{arch} 4-bit: logit error {_rel(logits, reference):.3g}, unedited "
          f"{_rel(unedited, reference):.3g}")
    # measured 0.34 vs 0.53 (llama), 0.76 vs 1.01 (qwen3_moe: routing flips amplify 4-bit noise)
    assert _rel(logits, reference) < 0.85 * _rel(unedited, reference)


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
    ("gemma2", "ablation", "post-norm"),
    ("olmo2", "ablation", "post-norm"),
    ("olmo2", "additive", "post-norm"),
    ("gemma", "ablation", "cannot be edited without changing the LM head"),
    ("gpt2", "ablation", "cannot be edited without changing the LM head"),
    ("qwen2", "additive", "no bias on the MLP output projection"),
    ("qwen3_moe", "additive", "mixture of experts"),
    # the only bias switch mlx-lm's class has makes a config transformers' own class refuses
    ("internlm3", "additive", "a config transformers refuses"),
])
def test_refused_architectures(tiny, tmp_path, arch, mode, message):
    hooked = HookedModel.from_pretrained(str(tiny(arch)))
    vec = _vector(hooked.hidden_size)
    assert message in bake_support(hooked, mode)
    with pytest.raises(ValueError, match=message):
        if mode == "ablation":
            bake_ablation(hooked, vec, out=tmp_path / "out")
        else:
            bake_steering(hooked, vec, 1.0, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("arch", "mode"), [("llama", "ablation"), ("llama", "additive"),
                                            ("qwen3_moe", "ablation"), ("gpt2", "additive")])
def test_bake_support_says_yes_where_the_bake_is_exact(tiny, arch, mode):
    assert bake_support(HookedModel.from_pretrained(str(tiny(arch))), mode) is None


def test_support_is_measured_not_looked_up(tiny, tmp_path):
    """olmo2 normalises each branch output after computing it. With uniform norm weights that
    keeps a removed direction removed (the ablation bake is exact and allowed) but still
    rescales an added bias (the additive bake is refused): decided on the model, not its name."""
    from mlx.utils import tree_flatten
    from mlx_lm.utils import save_model

    src = tiny("olmo2")
    model, _ = mlx_lm.load(str(src))
    model.update(tree_unflatten([(k, mx.ones_like(v)) for k, v in
                                 tree_flatten(model.parameters()) if "post_" in k]))
    uniform = tmp_path / "uniform"
    save_model(uniform, model)
    for f in src.iterdir():
        if not f.name.endswith(".safetensors") and f.name != "model.safetensors.index.json":
            (uniform / f.name).write_bytes(f.read_bytes())
    hooked = HookedModel.from_pretrained(str(uniform))
    assert bake_support(hooked, "ablation") is None
    assert "not the same vector added to the block's output" in bake_support(hooked, "additive")
    vec = _vector(hooked.hidden_size)
    bake_ablation(hooked, vec, out=tmp_path / "out")
    logits = mlx_lm.load(str(tmp_path / "out"))[0](TOKENS).astype(mx.float32)
    assert _rel(logits, _ablated_reference(uniform, vec[1])) < 1e-4


def test_a_model_the_hooks_cannot_run_is_refused_with_the_reason(tiny, monkeypatch):
    hooked = HookedModel.from_pretrained(str(tiny("llama")))

    def broken(*args, **kwargs):
        raise RuntimeError("hook points ['residuals_0'] did not fire in llama")

    monkeypatch.setattr(hooked, "capture", broken)
    reason = bake_support(hooked, "ablation")
    assert "on a probe failed (RuntimeError: hook points ['residuals_0'] did not fire" in reason


def test_a_module_mlux_cannot_place_is_refused(tiny, tmp_path):
    hooked = HookedModel.from_pretrained(str(tiny("llama")))
    block = hooked.arch.blocks[1].wrapped
    block.adapter = nn.Linear(hooked.hidden_size, hooked.hidden_size)  # unknown: may write
    reason = bake_support(hooked, "ablation")
    assert "model.layers.1.adapter" in reason and "cannot place" in reason
    del block["adapter"]
    assert bake_support(hooked, "ablation") is None
    hooked.model.model.proj_in = nn.Linear(hooked.hidden_size, hooked.hidden_size)
    assert "model.proj_in outside the blocks" in bake_support(hooked, "additive")


def test_a_missed_writer_is_caught_before_writing(tiny, tmp_path, monkeypatch):
    """The probe after the edit is the safety net: drop one writer from the list and the bake
    is refused (the stream still carries the direction), nothing written."""
    import mlux.bake as bake
    hooked = HookedModel.from_pretrained(str(tiny("llama")))
    real = bake.find_writers

    def missing_one(h):
        w = real(h)
        w.outputs = [p for p in w.outputs if p != "model.layers.1.mlp.down_proj"]
        return w

    monkeypatch.setattr(bake, "find_writers", missing_one)
    with pytest.raises(ValueError, match="has not found every residual writer"):
        bake_ablation(hooked, _vector(hooked.hidden_size), out=tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


_MOE = {
    "mixtral": dict(intermediate_size=96, num_local_experts=4, num_experts_per_tok=2,
                    num_key_value_heads=2),
    "gpt_oss": dict(intermediate_size=64, num_local_experts=4, num_experts_per_tok=2,
                    head_dim=16, num_key_value_heads=2, sliding_window=8,
                    layer_types=["sliding_attention", "full_attention"]),
    "deepseek_v3": dict(num_hidden_layers=3, intermediate_size=96, moe_intermediate_size=32,
                        n_shared_experts=1, n_routed_experts=4, num_experts_per_tok=2,
                        kv_lora_rank=16, q_lora_rank=24, qk_rope_head_dim=8, v_head_dim=16,
                        qk_nope_head_dim=16, first_k_dense_replace=1, num_key_value_heads=4),
}
_SSM = {  # state-space mixers: mixer-only blocks, and one beside attention (falcon_h1)
    "mamba": dict(intermediate_size=128, state_size=8, conv_kernel=4, use_bias=False,
                  use_conv_bias=True, time_step_rank=8),
    "mamba2": dict(num_heads=4, head_dim=32, intermediate_size=128, state_size=8,
                   layer_norm_epsilon=1e-5, conv_kernel=4, n_groups=1, use_bias=False,
                   use_conv_bias=True, time_step_limit=[0.0, 1e9], time_step_rank=8),
    "falcon_h1": dict(head_dim=16, intermediate_size=96, mamba_d_head=16, mamba_d_ssm=64,
                      mamba_d_state=8, mamba_n_heads=4, num_key_value_heads=2,
                      mamba_chunk_size=8),
}


def _save_built(root: Path, arch: str) -> Path:
    """A tiny random `arch` built from mlx-lm's own ModelArgs (not in mlux.testing yet)."""
    from mlx.utils import tree_flatten
    from mlx_lm.utils import _get_classes, save_config, save_model

    from mlux.testing import tiny_tokenizer_words
    from mlux.tokenizer_files import write_word_tokenizer

    config = {"model_type": arch, "vocab_size": 128, "hidden_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 4, "tie_word_embeddings": False,
              **_MOE.get(arch, {}), **_SSM.get(arch, {})}
    model_cls, args_cls = _get_classes(config)
    model = model_cls(args_cls.from_dict(config))
    params = tree_flatten(model.parameters())
    weights = []
    for (k, p), key in zip(params, mx.random.split(mx.random.key(0), len(params)), strict=True):
        noise = mx.random.normal(p.shape, key=key)
        if "norm" in k:
            v = mx.ones(p.shape)
        elif k.endswith(("sinks", "correction_bias")):
            v = mx.zeros(p.shape)
        elif k.endswith("bias") or p.ndim == 1:  # gpt_oss's experts' biases: (E, D) too
            v = 0.05 * noise
        else:
            v = noise if "embed" in k else noise / p.shape[-1] ** 0.5
        weights.append((k, v))
    model.load_weights(weights, strict=True)
    path = root / arch
    save_model(path, model)
    save_config(config, config_path=path / "config.json")
    write_word_tokenizer(tiny_tokenizer_words(128), path)
    return path


@pytest.mark.parametrize("arch", sorted(_MOE))
def test_ablation_edits_every_expert_exactly(tmp_path, arch):
    """Fused SwitchLinear experts (their biases too) and shared experts: the baked model,
    loaded by plain mlx-lm, equals the original with the ablation hooks, in float32."""
    src = _save_built(tmp_path, arch)
    hooked = HookedModel.from_pretrained(str(src))
    vec = _vector(hooked.hidden_size)
    summary = bake_ablation(hooked, vec, out=tmp_path / "out")
    experts = [p for p in summary["edited"] if "switch_mlp" in p or "experts" in p]
    assert len(experts) >= hooked.num_layers - _MOE[arch].get("first_k_dense_replace", 0)
    model, _ = mlx_lm.load(str(tmp_path / "out"))
    logits = model(TOKENS).astype(mx.float32)
    assert _rel(logits, _ablated_reference(src, vec[1])) < 1e-4
    assert _rel(logits, hooked.run_with_hooks(TOKENS, []).astype(mx.float32)) > 1e-3


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


def _strict_json(path: Path) -> dict:
    def refuse(name: str):
        raise AssertionError(f"{path} holds {name}, which is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.mark.parametrize(("alpha", "scale"), [("inf", 1.0), ("-inf", 1.0), ("1e39", 1.0),
                                              ("nan", 1.0), ("1e21", 1e18)])
def test_non_finite_alpha_or_alpha_times_vector_is_refused(tiny, tmp_path, capsys, alpha, scale):
    """Issue 25.1: one line, exit 2, nothing written (1e39 overflows float32, as 1e21 x 1e18)."""
    src = tiny("llama")
    vec = SteeringVector({1: mx.ones((64,)) * scale}, model_id="tiny")
    vec_path = vec.save(tmp_path / "v.safetensors")
    out = tmp_path / "baked"
    code = cli.main(["bake", "--model", str(src), "--vector", str(vec_path), f"--alpha={alpha}",
                     "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("mlux bake: error: ") and err.count("\n") == 1, err
    assert ("finite alpha" in err) or ("overflows" in err), err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["v.safetensors"]


def test_bake_json_is_strict(tiny, tmp_path):
    src = tiny("llama", 4)
    hooked = HookedModel.from_pretrained(str(src))
    vec = _vector(hooked.hidden_size)
    bake_ablation(hooked, vec, out=tmp_path / "a")
    bake_steering(hooked, vec, 1e3, out=tmp_path / "s")
    for name in ("a", "s"):
        summary = _strict_json(tmp_path / name / "mlux_bake.json")
    assert summary["alpha"] == 1e3
    with pytest.raises(ValueError, match="logits are not finite"):  # alpha x v finite, logits not
        bake_steering(hooked, vec, 1e30, out=tmp_path / "big")
    assert not (tmp_path / "big").exists()


def test_out_that_is_contains_or_lies_in_the_source_is_refused(tiny, tmp_path, capsys):
    """Issue 25.2: --overwrite with --out the source's parent deleted the source model."""
    src = save_tiny_model(tmp_path / "models" / "src", "llama")
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    vec_path = _vector(64).save(tmp_path / "v.safetensors")
    for out, how in [(src, "is"), (src.parent, "contains"), (tmp_path, "contains"),
                     (src / "inner", "lies inside")]:
        for mode in (["--ablate", str(vec_path)], ["--vector", str(vec_path), "--alpha", "1"]):
            code = cli.main(["bake", "--model", str(src), *mode, "--out", str(out),
                             "--overwrite"])
            err = capsys.readouterr().err
            assert code == 2 and f"{how} the source model's folder" in err, err
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before


def test_out_file_overwritten_leaves_nothing_behind(tiny, tmp_path):
    """Issue 25.3: replacing a file (or a link) left a hidden .FILE.<hex>.old next to it."""
    hooked = HookedModel.from_pretrained(str(tiny("llama")))
    work = tmp_path / "work"
    work.mkdir()
    (work / "out").write_text("a file")
    bake_steering(hooked, _vector(64), 1.0, out=work / "out", overwrite=True)
    assert sorted(p.name for p in work.iterdir()) == ["out"]
    assert (work / "out" / "config.json").is_file()
    bake_steering(hooked, _vector(64), 2.0, out=work / "out", overwrite=True)  # a folder
    assert sorted(p.name for p in work.iterdir()) == ["out"]
    assert _strict_json(work / "out" / "mlux_bake.json")["alpha"] == 2.0


def test_gguf_vectors_bake_like_safetensors(tiny, tmp_path, capsys):
    """Issue 25.4: --vector / --ablate v.gguf read through the loader every verb uses."""
    src = tiny("llama")
    vec = _vector(64, layers=(1,))
    vec.save(tmp_path / "v.safetensors")
    vec.export_gguf(tmp_path / "v.gguf")
    for flag, extra in (("--vector", ["--alpha", "1.5"]), ("--ablate", [])):
        for ext in ("safetensors", "gguf"):
            code = cli.main(["bake", "--model", str(src), flag, str(tmp_path / f"v.{ext}"),
                             *extra, "--out", str(tmp_path / f"{flag[2:]}-{ext}")])
            assert code == 0, capsys.readouterr().err
        a, b = (mlx_lm.load(str(tmp_path / f"{flag[2:]}-{ext}"))[0](TOKENS)
                for ext in ("safetensors", "gguf"))
        assert _rel(a, b) < 1e-6


def test_card_names_the_model_and_drops_files_of_the_unbaked_model(tmp_path):
    """Issue 26.18: the card showed an install path and the folder kept the source's
    steering_table.json / training_report.json."""
    hooked = HookedModel.from_pretrained("mlux-toy")
    vec = SteeringVector({2: mx.ones((hooked.hidden_size,))}, model_id="mlux-toy")
    bake_steering(hooked, vec, 1.0, out=tmp_path / "out")
    card = (tmp_path / "out" / "README.md").read_text()
    assert "Source model: `mlux-toy`" in card
    summary = _strict_json(tmp_path / "out" / "mlux_bake.json")
    assert summary["source_model"] == "mlux-toy"
    assert "steering_table.json" in summary["dropped_files"]
    assert "training_report.json" in summary["dropped_files"]
    for text in (card, json.dumps(summary)):
        assert "site-packages" not in text and str(Path.home()) not in text
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert not {"steering_table.json", "training_report.json"} & files
    assert {"tokenizer.json", "tokenizer_config.json", "config.json"} <= files


@pytest.mark.parametrize("arch", ["mamba", "mamba2"])
def test_state_space_mixers_bake_exactly(tmp_path, arch):
    """Mixer-only blocks: the mixer's output projection is the block's only writer, so both
    bakes are exact (the additive bias goes on it, through the class's `use_bias`)."""
    src = _save_built(tmp_path, arch)
    hooked = HookedModel.from_pretrained(str(src))
    assert bake_support(hooked, "ablation") is None and bake_support(hooked, "additive") is None
    vec = _vector(hooked.hidden_size, layers=(0, 1), seed=3)
    bake_ablation(hooked, vec, layers=1, out=tmp_path / "abl")
    bake_steering(hooked, vec, 1.5, out=tmp_path / "add")
    abl, add = (mlx_lm.load(str(tmp_path / n))[0](TOKENS).astype(mx.float32)
                for n in ("abl", "add"))
    assert _rel(abl, _ablated_reference(src, vec[1])) < 1e-4
    assert _rel(add, hooked.run_with_hooks(TOKENS, steering_hooks(vec, 1.5))) < 1e-4
    assert _rel(add, hooked.run_with_hooks(TOKENS, [])) > 1e-3


def test_a_state_space_mixer_beside_attention_is_refused(tmp_path):
    """falcon_h1 runs a mamba mixer in parallel with attention: a second writer mlux does not
    hook, so neither bake can be exact."""
    hooked = HookedModel.from_pretrained(str(_save_built(tmp_path, "falcon_h1")))
    for mode in ("ablation", "additive"):
        reason = bake_support(hooked, mode)
        assert "model.layers.0.mamba (FalconH1Mixer) besides its attention and MLP" in reason
    with pytest.raises(ValueError, match="FalconH1Mixer"):
        bake_ablation(hooked, _vector(hooked.hidden_size), out=tmp_path / "out")


def test_edited_weights_that_do_not_load_are_refused(tiny, tmp_path, monkeypatch):
    """Whatever the model's own code raises while the edited weights are loaded and probed
    becomes the one-line refusal, and nothing is written."""
    import mlux.bake.checks as checks
    hooked = HookedModel.from_pretrained(str(tiny("llama")))

    def broken(config, weights):
        raise KeyError("model.layers.0.mlp.down_proj.weight")

    monkeypatch.setattr(checks, "build", broken)
    for run in (lambda: bake_ablation(hooked, _vector(64), out=tmp_path / "out"),
                lambda: bake_ablation(hooked, _vector(64), out=tmp_path / "out",
                                      layer_weights={0: 0.5, 2: 1.0}),
                lambda: bake_steering(hooked, _vector(64), 1.0, out=tmp_path / "out")):
        with pytest.raises(ValueError, match="could not be loaded and run the way mlx_lm.load "
                           "would \\(KeyError"):
            run()
    assert list(tmp_path.iterdir()) == []


def test_bfloat16_models_bake_and_post_norm_is_still_refused(tmp_path):
    """The support checks scale their probe to the stream, so 16-bit rounding neither refuses
    a pre-norm model nor lets a post-norm one through."""
    src = save_tiny_model(tmp_path / "llama", "llama", dtype=mx.bfloat16)
    hooked = HookedModel.from_pretrained(str(src))
    assert bake_support(hooked, "ablation") is None and bake_support(hooked, "additive") is None
    vec = _vector(hooked.hidden_size)
    bake_steering(hooked, vec, 1.5, out=tmp_path / "add")
    add = mlx_lm.load(str(tmp_path / "add"))[0](TOKENS).astype(mx.float32)
    reference = hooked.run_with_hooks(TOKENS, steering_hooks(vec, 1.5)).astype(mx.float32)
    assert _rel(add, reference) < 2e-2
    summary = bake_ablation(hooked, vec, out=tmp_path / "abl")
    assert summary["remaining_component"]["max"] < 2e-2
    post = HookedModel.from_pretrained(str(save_tiny_model(tmp_path / "g2", "gemma2",
                                                           dtype=mx.bfloat16)))
    assert "post-norm" in bake_support(post, "ablation")
    assert "post-norm" in bake_support(post, "additive")
