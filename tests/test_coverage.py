"""Every module of the installed mlx-lm: tiny instances build, one architecture of each family
passes every check (fp32 and 4-bit), saved folders load through every mlx-lm loader, and a
module that appears after an mlx-lm upgrade fails here until it is covered or listed."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import pytest
from mlx.utils import tree_flatten

from mlux import HookedModel, cli
from mlux.testing import model_modules, save_tiny_model, tiny_model, unsupported_reason
from mlux.testing.checks import check_cache_windows, check_padded_batch, run_checks
from mlux.testing.checks_io import check_loaders
from mlux.testing.coverage import DEFAULT_OUT, module_status

RESULTS = Path(__file__).resolve().parents[1] / DEFAULT_OUT

# One architecture per family, with every check: dense, MoE, hybrid linear attention,
# hybrid SSM (isinstance-dispatching blocks), multimodal wrapper, post-norm, KV-shared,
# pure SSM, several residual streams, NAS blocks without attention.
FAMILIES = {
    "dense": "llama",
    "moe": "mixtral",
    "hybrid_linear_attention": "qwen3_next",
    "hybrid_ssm": "olmo_hybrid",
    "multimodal_wrapper": "gemma3",
    "post_norm": "olmo2",
    "kv_shared": "gemma4_text",
    "pure_ssm": "mamba2",
    "multi_stream": "gemma3n",
    "nas_no_attention": "nemotron-nas",
}


@pytest.mark.parametrize("quantize", [False, True], ids=["fp32", "4bit"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_passes_every_check(family, quantize):
    results = run_checks(FAMILIES[family], quantize)
    failed = {k: v["detail"] for k, v in results.items() if v["status"] == "fail"}
    assert not failed, failed
    assert results["wrap"]["status"] == "ok"


def test_every_installed_module_is_covered_or_listed():
    """Fails loudly on a module this table has never seen (an mlx-lm upgrade): run
    `python -m mlux.testing.coverage` and commit its results, or list it with a reason."""
    recorded = json.loads(RESULTS.read_text())["modules"]
    installed = model_modules()
    new = sorted(set(installed) - set(recorded))
    assert not new, f"modules not in {DEFAULT_OUT}: {new}"
    for name in installed:
        status = module_status(recorded[name])
        if "wrap" in status:
            continue  # it ran: its row says what works
        assert unsupported_reason(name) or "refused" in json.dumps(recorded[name]), (
            f"{name} neither ran nor is listed with a reason: {status['note']}")


def test_a_window_read_at_the_wrong_position_is_caught():
    """The cache check can fail: a hook that steers only while the cache is empty (offset 0)
    steers every naive step but no decoding step."""
    hooked = HookedModel(tiny_model("llama")[0], None)
    delta = mx.ones((hooked.hidden_size,))

    def prefill_only(x, ctx):
        return x + delta if ctx.offset == 0 else None

    outcome = check_cache_windows(hooked, "all", hook=prefill_only)
    assert outcome.status == "fail" and "differ from the naive loop" in outcome.detail


@pytest.mark.parametrize("model_type", ["mamba2", "qwen3_5", "gemma3"])
def test_tiny_model_is_seeded(model_type):
    a = dict(tree_flatten(tiny_model(model_type)[0].parameters()))
    b = dict(tree_flatten(tiny_model(model_type)[0].parameters()))
    c = dict(tree_flatten(tiny_model(model_type, seed=1)[0].parameters()))
    assert all(mx.array_equal(a[k], b[k]).item() for k in a)
    assert not all(mx.array_equal(a[k], c[k]).item() for k in a)


def test_unsupported_modules_name_the_reason():
    with pytest.raises(ValueError, match="Metal"):
        tiny_model("bitnet")


# qwen2 and qwen3_5: transformers 5 forces its own tokenizer class for these model types;
# llama: tensor-parallel sharding; mamba2: no sharding at all.
@pytest.mark.parametrize("model_type", ["qwen2", "qwen3_5", "llama", "mamba2"])
def test_saved_folders_load_through_every_loader(tmp_path, model_type):
    src = save_tiny_model(tmp_path / model_type, model_type)
    reference = tiny_model(model_type)[0](mx.array([[5, 9, 13, 7, 21, 4, 30]]))
    outcomes = check_loaders(src, reference)
    assert outcomes["load"].status == "ok", outcomes["load"].detail
    expected = "refused" if model_type == "mamba2" else "ok"
    assert outcomes["load_sharded"].status == expected, outcomes["load_sharded"].detail


def test_recorded_table_covers_the_named_architectures():
    """The issue's list: hooks, capture, steering and cache == naive on each (the recorded
    sweep over every module, fp32 and 4-bit)."""
    recorded = json.loads(RESULTS.read_text())["modules"]
    named = ["qwen3_5", "qwen3_5_moe", "qwen3_next", "gemma3", "gemma3n", "gemma4", "gpt_oss",
             "llama4", "lfm2", "glm4_moe", "deepseek_v3", "mixtral", "granitemoehybrid",
             "smollm3", "olmo3", "phi", "mamba2", "jamba", "falcon_h1", "nemotron_h"]
    for name in named:
        s = module_status(recorded[name])
        assert s["wrap"] and s["hooks"] and s["capture"] and s["steering"], (name, s)
        assert s["cache"], (name, s["fails"])


def test_info_names_the_mixers_and_the_features(tmp_path, capsys):
    src = save_tiny_model(tmp_path / "qwen3_next", "qwen3_next")
    assert cli.main(["info", "--model", str(src), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["attention_names"] == {"linear_attn": ["attention_0-2"],
                                       "self_attn": ["attention_3"]}
    feats = info["features"]
    assert feats["padded_batching"] == "one masked batch"  # SSM state batches (ArraysCache)
    assert set(feats["bake"]) == {"add", "ablate"}  # each "yes" or why not, naming the model
    assert all(v == "yes" or "qwen3_next" in v for v in feats["bake"].values())
    assert feats["windows"][:3] == ["all", "prompt", "generated"]
    assert cli.main(["info", str(src)]) == 0  # positional form, table output
    table = capsys.readouterr().out
    assert "attention_i = linear_attn" in table and "batching       one masked batch" in table
    assert cli.main(["info", str(src), "--model", "other"]) == 2
    assert "two models given" in capsys.readouterr().err


@pytest.mark.parametrize("family", list(FAMILIES))
def test_plain_mlx_lm_generation_unchanged_by_wrapping(family):
    from mlx_lm.generate import generate_step

    model = tiny_model(FAMILIES[family])[0]
    prompt = mx.array([5, 9, 13, 7])

    def run():
        return [(t, lp) for t, lp in generate_step(prompt, model, max_tokens=6)]

    before = run()
    HookedModel(model, None)
    after = run()
    assert [t for t, _ in before] == [t for t, _ in after]
    assert all(mx.array_equal(a, b).item() for (_, a), (_, b) in zip(before, after, strict=True))


@pytest.mark.parametrize("model_type", ["mamba2", "qwen3_next", "falcon_h1"])
def test_state_space_layers_run_padded_batches(model_type):
    """SSM / conv state (ArraysCache) and combined (CacheList) layers batch through mlx-lm's
    batch forms; the probe then finds the padded batch equal to its rows alone."""
    hooked = HookedModel(tiny_model(model_type)[0], None)
    assert hooked.supports_padded_batch()
    outcome = check_padded_batch(hooked)
    assert outcome.status == "ok", outcome.detail


@pytest.mark.parametrize("window", ["generated", (2, 9)])
def test_blocks_called_with_keyword_inputs_see_their_positions(window):
    """gptj calls `block(inputs=h, mask=..., cache=...)`: the hooks still see T tokens."""
    hooked = HookedModel(tiny_model("gptj")[0], None)
    outcome = check_cache_windows(hooked, window)
    assert outcome.status == "ok", outcome.detail
