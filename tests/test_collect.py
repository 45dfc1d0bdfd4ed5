"""Activation collection: shards equal `run_with_cache`, resume, balancing, configs and errors."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import yaml

import mlux.collect.chunks as chunks_mod
import mlux.collect.collector as collector_mod
import mlux.collect.shards as shards_mod
from mlux.builtin import builtin_model_path
from mlux.collect import (
    Manifest,
    balance_categories,
    collect,
    config_from_dict,
    load_config,
    load_dataset,
    make_plan,
    read_prompts,
    read_shard_tensor,
)
from mlux.collect.cli import main as cli_main
from mlux.generate import generate_from_cache, prefill_with_cache
from mlux.layers import expand_layer_specs
from mlux.model import HookedModel
from mlux.testing import save_tiny_model

REPO = Path(__file__).resolve().parents[1]
CATS = {"a": 7, "b": 5}  # prompts per category


def _prompt(i: int, n: int) -> str:
    return " ".join(f"w{7 + (i * 7 + j * 3) % 50}" for j in range(n))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = save_tiny_model(tmp_path_factory.mktemp("m") / "llama", "llama")
    return HookedModel.from_pretrained(str(path))


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "data.jsonl"
    lines = [{"text": _prompt(i + 10 * k, 2 + (i * 3) % 6), "category": c}
             for k, (c, n) in enumerate(CATS.items()) for i in range(n)]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path


def make_config(model: str, data: Path, out: Path, **inference):
    return config_from_dict({
        "model": {"name": model, "activation_layers": ["residuals_all", "mlp_1", "attention_2"]},
        "inference": {"batch_size": 3, "positions": ["last", "mean", "all"], **inference},
        "data": {"path": str(data)},
        "output": {"result_dir": str(out), "shard_size": 3},
    })


def run(config, hooked):
    return collect(config, hooked=hooked, progress=False, echo=lambda s: None)


def rows_of(manifest: Manifest, hook: str, position: str, category: str) -> list[np.ndarray]:
    """Per-sample activations of one category, read back from the shards."""
    out = []
    for path in manifest.shard_paths(hook, position, [category]):
        x = read_shard_tensor(path, position)
        if position in ("last", "mean"):
            out.extend(x)
        else:
            off = read_shard_tensor(path, f"{position}_offsets")
            out.extend(x[off[i]:off[i + 1]] for i in range(len(off) - 1))
    return out


def test_shards_equal_run_with_cache_on_each_prompt_alone(tiny, data_file, tmp_path):
    cfg = make_config(tiny.model_id, data_file, tmp_path / "out", max_new_tokens=3,
                      positions=["last", "mean", "all", "generated"])
    manifest = run(cfg, tiny).manifest
    hooks = manifest.hook_points
    assert hooks == ["residuals_0", "residuals_1", "residuals_2", "residuals_3", "mlp_1",
                     "attention_2"]
    for cat in CATS:
        prompts = manifest.data["categories"][cat]["prompts"]
        gens = json.loads((manifest.root / manifest.generations_relpath(cat, 0)).read_text())
        for i, prompt in enumerate(prompts):
            n = len(tiny.tokenizer.encode(prompt))
            tokens = generate_from_cache(tiny, *prefill_with_cache(tiny, prompt), max_tokens=3)
            if i < 3:
                assert gens[i]["tokens"] == tokens and gens[i]["prompt"] == prompt
            ids = tiny.tokenizer.encode(prompt) + tokens
            _, ref = tiny.run_with_cache([ids], hooks)
            for h in hooks:
                r = np.asarray(ref[h][0])
                got = {p: rows_of(manifest, h, p, cat)[i] for p in manifest.positions}
                np.testing.assert_allclose(got["last"], r[n - 1], rtol=1e-4, atol=1e-3)
                np.testing.assert_allclose(got["mean"], r[:n].mean(0), rtol=1e-4, atol=1e-3)
                np.testing.assert_allclose(got["all"], r[:n], rtol=1e-4, atol=1e-3)
                np.testing.assert_allclose(got["generated"], r[n:], rtol=1e-4, atol=1e-3)


def test_reduced_path_equals_run_with_cache_per_prompt(tiny, data_file, tmp_path):
    """last/mean only: reduced inside the hook, left-padded batch; still equal to each alone."""
    cfg = make_config(tiny.model_id, data_file, tmp_path / "out", positions=["mean", "last"])
    manifest = run(cfg, tiny).manifest
    for cat in CATS:
        for i, prompt in enumerate(manifest.data["categories"][cat]["prompts"]):
            _, ref = tiny.run_with_cache(prompt, ["residuals_3", "mlp_1"])
            for h in ("residuals_3", "mlp_1"):
                r = np.asarray(ref[h][0])
                np.testing.assert_allclose(rows_of(manifest, h, "mean", cat)[i], r.mean(0),
                                           rtol=1e-4, atol=1e-3)
                np.testing.assert_allclose(rows_of(manifest, h, "last", cat)[i], r[-1],
                                           rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("arch", ["llama", "gemma2"])  # masked batch; row-by-row fallback
def test_capture_batch_uses_capture_and_equals_each_prompt_alone(arch, monkeypatch):
    """Collection needs no logits: it never calls `run_with_cache`, and its in-hook reducer
    gives the same rows whether the batch runs masked or (gemma2) row by row."""
    from mlux.collect.capture import capture_batch
    from mlux.testing import make_tiny_model

    hooked = HookedModel(make_tiny_model(arch)[0], None)
    assert hooked.supports_padded_batch() == (arch == "llama")
    rows, hooks = [[5, 9, 13], [7, 21, 4, 30, 11, 2], [8, 8]], ["residuals_1", "mlp_0"]
    refs = [hooked.run_with_cache([r], hooks)[1] for r in rows]

    def no_logits_needed(*args, **kwargs):
        raise AssertionError("collection ran the LM head")

    monkeypatch.setattr(HookedModel, "run_with_cache", no_logits_needed)
    for positions in (["last", "mean"], ["all"]):
        got = capture_batch(hooked, rows, [[] for _ in rows], hooks, positions)
        for h in hooks:
            for i, ref in enumerate(refs):
                r = np.asarray(ref[h][0])
                want = {"last": r[-1], "mean": r.mean(0), "all": r}
                for p in positions:
                    np.testing.assert_allclose(got[h][p][i], want[p], rtol=1e-4, atol=1e-4)


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in root.rglob("*.safetensors")}


def test_resume_after_crash_loses_nothing_and_redoes_nothing(tiny, data_file, tmp_path,
                                                             monkeypatch):
    cfg = make_config(tiny.model_id, data_file, tmp_path / "crash")
    clean = run(make_config(tiny.model_id, data_file, tmp_path / "clean"), tiny).manifest
    real_write, writes = shards_mod.write_shard, []

    def crashing_write(path, tensors, meta):
        if len(writes) == 6 * 2 + 1:  # chunk 3, after its first hook's shard is on disk
            raise KeyboardInterrupt("simulated crash")
        writes.append(path)
        return real_write(path, tensors, meta)

    monkeypatch.setattr(collector_mod, "write_shard", crashing_write)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tiny)
    monkeypatch.setattr(collector_mod, "write_shard", real_write)
    root = tmp_path / "crash"
    listed = Manifest.load(root).data["chunks"]
    assert len(listed) == 2 and not Manifest.load(root).data["complete"]
    before = _snapshot(root)
    assert len(before) == 13  # 2 chunks x 6 hooks + the unlisted partial shard

    seen = []
    real_capture = chunks_mod.capture_batch

    def counting_capture(hooked, rows, *args):
        seen.extend(rows)
        return real_capture(hooked, rows, *args)

    monkeypatch.setattr(chunks_mod, "capture_batch", counting_capture)
    result = run(cfg, tiny)
    total = sum(CATS.values())
    done = sum(c["stop"] - c["start"] for c in listed.values())
    assert len(seen) == total - done  # nothing finished was recomputed
    assert result.chunks_skipped == 2
    after = _snapshot(root)
    assert all(after[k] == v for k, v in before.items() if k in
               {s["path"] for c in listed.values() for s in c["shards"].values()})
    resumed = Manifest.load(root)
    assert resumed.data["complete"]
    for h in clean.hook_points:
        for c in CATS:
            for p in clean.positions:
                for x, y in zip(rows_of(clean, h, p, c), rows_of(resumed, h, p, c), strict=True):
                    np.testing.assert_array_equal(x, y)


def test_equalize_balances_categories(tmp_path, data_file):
    prompts = read_prompts(data_file)
    eq = balance_categories(prompts, "equalize", seed=1)
    assert {len(v) for v in eq.values()} == {min(CATS.values())}
    for c, kept in eq.items():  # a subset, original order kept
        idx = [prompts[c].index(p) for p in kept]
        assert idx == sorted(idx)
    assert balance_categories(prompts, "equalize", seed=1) == eq
    assert balance_categories(prompts, "use_all") == prompts
    capped = balance_categories(prompts, "use_all", max_per_category=6)
    assert {c: len(v) for c, v in capped.items()} == {"a": 6, "b": 5}
    section = config_from_dict({"model": {"name": "x"}, "output": {"result_dir": "o"},
                                "data": {"path": str(data_file), "categories": ["b", "a"],
                                         "category_balance_strategy": "equalize"}}).data
    ds = load_dataset(section)
    assert ds.categories == ["b", "a"] and len(ds.prompts["a"]) == len(ds.prompts["b"]) == 5


def test_csv_and_folder_read_like_jsonl(tmp_path, data_file):
    ref = read_prompts(data_file)
    csv_path = tmp_path / "d.csv"
    csv_path.write_text("category,text\n" + "".join(f"{c},{p}\n" for c, ps in ref.items()
                                                     for p in ps))
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.txt").write_text("\n".join(ref["a"]) + "\n\n")
    (folder / "b").mkdir()
    for i, p in enumerate(ref["b"]):
        (folder / "b" / f"{i:02d}.txt").write_text(p + "\n")
    assert read_prompts(csv_path) == ref
    assert read_prompts(folder) == ref


def test_shipped_configs_validate_and_expand(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # data paths resolve from the config file's location too
    files = sorted((REPO / "configs" / "models").glob("*.yaml"))
    assert len(files) >= 7
    counts = {}
    for f in files:
        cfg = load_config(f)
        layers = 6 if cfg.model.name == "mlux-toy" else 32
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            counts[f.stem] = len(expand_layer_specs(cfg.model.activation_layers, layers))
        assert load_dataset(cfg.data, cfg.source).categories
    assert counts["llama2-7b-chat-sparse"] == counts["mistral-7b-instruct-sparse"] == 7
    assert counts["llama2-7b-chat-all"] == counts["mistral-7b-instruct-all"] == 32
    assert counts["llama2-7b-chat-middle"] == 14


def test_plan_estimates_and_warnings(tiny, data_file, tmp_path, capsys):
    cfg = make_config(tiny.model_id, data_file, tmp_path / "out")
    result = collect(cfg, hooked=tiny, progress=False, dry_run=True)
    printed = capsys.readouterr().out
    assert "residuals_0, residuals_1" in printed and "storage estimate" in printed
    assert "memory estimate" in printed and "suggested batch_size" in printed
    assert not (tmp_path / "out").exists()  # a dry run writes nothing
    written = run(cfg, tiny)
    tensor_bytes = sum(np.prod(t["shape"]) * 4 for c in written.manifest.data["chunks"].values()
                       for s in c["shards"].values() for k, t in s["tensors"].items()
                       if k in ("last", "mean", "all"))
    assert result.plan.storage_bytes == tensor_bytes
    many = make_plan(cfg, hook_points=[f"residuals_{i}" for i in range(21)], hidden_size=64,
                     vocab_size=64, weights_bytes=0, lengths={"a": [3, 4]})
    assert any("21 hook points" in w for w in many.warnings)


def test_generations_only(tiny, data_file, tmp_path):
    cfg = make_config(tiny.model_id, data_file, tmp_path / "out", save_activations=False,
                      max_new_tokens=2)
    manifest = run(cfg, tiny).manifest
    assert not (tmp_path / "out" / "activations").exists() and manifest.positions == []
    texts = json.loads((tmp_path / "out" / manifest.generations_relpath("b", 1)).read_text())
    prompt = manifest.data["categories"]["b"]["prompts"][3]
    want = generate_from_cache(tiny, *prefill_with_cache(tiny, prompt), max_tokens=2)
    assert texts[0]["index"] == 3 and texts[0]["tokens"] == want
    assert texts[0]["completion"] == tiny.tokenizer.decode(want)


def test_cli_collect_dry_run(tiny, data_file, tmp_path, capsys):
    cfg = make_config(tiny.model_id, data_file, tmp_path / "out").to_dict()
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert cli_main(["collect", "--config", str(path), "--dry-run"]) == 0
    assert "hook points (6)" in capsys.readouterr().out


def _toy_path():
    try:
        return builtin_model_path("mlux-toy")
    except FileNotFoundError:
        return None


@pytest.mark.skipif(_toy_path() is None, reason="built-in mlux-toy model not trained yet")
def test_builtin_model_with_shipped_config(tmp_path):
    cfg = load_config(REPO / "configs" / "models" / "mlux-toy.yaml")
    cfg = cfg.replace("output", result_dir=str(tmp_path / "toy")).replace(
        "data", max_samples_per_category=8, path=str(REPO / "configs/data/toy_prompts.jsonl"))
    hooked = HookedModel.from_pretrained("mlux-toy")
    manifest = run(cfg, hooked).manifest
    for cat in ("happy", "sad"):
        for i, prompt in enumerate(manifest.data["categories"][cat]["prompts"]):
            _, ref = hooked.run_with_cache(prompt, manifest.hook_points)
            for h in manifest.hook_points:
                np.testing.assert_allclose(rows_of(manifest, h, "last", cat)[i],
                                           np.asarray(ref[h][0, -1].astype(mx.float32)),
                                           rtol=1e-4, atol=1e-3)
