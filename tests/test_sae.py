"""Sparse autoencoders: dictionary recovery, bounded streaming memory, encode, files, vectors
(formats and steering in test_sae_formats.py and test_sae_steering.py)."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from safetensors.numpy import save_file

from mlux import SteeringVector
from mlux.collect import ActivationStore, SAESection, collect, config_from_dict
from mlux.model import HookedModel
from mlux.sae import (
    SAEConfig,
    SparseAutoencoder,
    evaluate_sae,
    feature_to_steering_vector,
    train_sae,
    train_saes,
)
from mlux.testing import save_tiny_model

D, TRUE_K = 32, 3


def sparse_data(n: int, atoms: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rows made of `TRUE_K` unit atoms of a random dictionary with positive weights + offset."""
    rng = np.random.default_rng(seed)
    dic = rng.normal(size=(atoms, D))
    dic /= np.linalg.norm(dic, axis=1, keepdims=True)
    chosen = np.argsort(rng.random((n, atoms)), axis=1)[:, :TRUE_K]  # TRUE_K distinct atoms
    codes = np.zeros((n, atoms))
    np.put_along_axis(codes, chosen, rng.uniform(0.5, 2.0, (n, TRUE_K)), axis=1)
    return (codes @ dic + 0.3).astype(np.float32), dic


def write_shards(x: np.ndarray, folder: Path, rows: int, key: str = "last") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, s in enumerate(range(0, len(x), rows)):
        paths.append(folder / f"shard_{i:05d}.safetensors")
        save_file({key: x[s:s + rows]}, str(paths[-1]))
    return paths


def matched(sae: SparseAutoencoder, dic: np.ndarray) -> float:
    w = np.asarray(sae.W_dec)
    w = w / np.linalg.norm(w, axis=1, keepdims=True)
    return float(((dic @ w.T).max(axis=1) > 0.9).mean())


@pytest.mark.filterwarnings("ignore::mlux.sae.FewStepsWarning")  # short on purpose
@pytest.mark.parametrize("settings", [
    SAESection(kind="topk", num_latents=96, k=TRUE_K, learning_rate=3e-3, batch_size=128,
               epochs=3, shuffle_buffer=2048),
    SAESection(kind="relu", num_latents=96, l1_coeff=3e-2, learning_rate=3e-3,
               batch_size=128, epochs=20, shuffle_buffer=2048),
], ids=["topk", "relu-l1"])
def test_recovers_a_known_sparse_dictionary(tmp_path, settings):
    x, dic = sparse_data(6000, atoms=48)
    result = train_sae(ActivationStore(write_shards(x, tmp_path, 1000)), settings,
                       progress=False)
    assert matched(result.sae, dic) >= 0.9  # ground-truth atoms with a decoder row at cos > 0.9
    norms = np.linalg.norm(np.asarray(result.sae.W_dec), axis=1)
    # The decoder-norm constraint held in training space; the input scale s is folded in since
    # (W_dec / s), and s = sqrt(d) / the rows' RMS norm.
    scale = np.sqrt(D) / result.sae.config.activation_norm
    np.testing.assert_allclose(norms * scale, 1.0, atol=1e-5)
    assert result.sae.config.normalize_activations == "none"
    assert result.metrics["fve"] > 0.8
    assert result.history["mse"][-1] < result.history["mse"][0]


def _peaks(paths: list[Path]) -> tuple[int, int]:
    """Peak Python/numpy heap (tracemalloc) and peak MLX memory of one training run."""
    settings = SAESection(num_latents=64, k=4, batch_size=64, max_steps=40, shuffle_buffer=256)
    mx.synchronize()
    mx.reset_peak_memory()
    tracemalloc.start()
    try:
        train_sae(ActivationStore(paths), settings, progress=False)
        _, heap = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return heap, mx.get_peak_memory()


@pytest.mark.filterwarnings("ignore::mlux.sae.FewStepsWarning")
def test_training_memory_does_not_grow_with_the_number_of_shards(tmp_path):
    rows = 8192
    x, _ = sparse_data(8 * rows, atoms=48, seed=1)
    shard_bytes = rows * D * 4  # 1 MiB
    _peaks(write_shards(x[:rows], tmp_path / "warm", rows))  # compile kernels untimed
    few = _peaks(write_shards(x[: 2 * rows], tmp_path / "two", rows))
    many = _peaks(write_shards(x, tmp_path / "eight", rows))
    # Loading every shard would add 6 MiB going from 2 to 8 shards; streaming adds nothing.
    assert many[0] < few[0] + shard_bytes / 2, (few, many)
    assert many[1] < few[1] + shard_bytes / 2, (few, many)


def test_store_streams_every_row_once_per_epoch(tmp_path):
    x = np.arange(1000 * 4, dtype=np.float32).reshape(1000, 4)
    store = ActivationStore(write_shards(x, tmp_path, 130))
    assert store.num_rows == 1000 and store.dim == 4
    for buffer in (0, 300):
        got = np.concatenate(list(store.iter_batches(64, shuffle_buffer=buffer, epochs=2)))
        assert sorted(got[:, 0].tolist()) == sorted(np.repeat(x[:, 0], 2).tolist())


def test_encode_matches_the_formula_and_files_round_trip(tmp_path):
    cfg = SAEConfig(d_in=D, d_sae=40, architecture="topk", k=5,
                    normalize_activations="expected_average_only_in", norm_scaling_factor=0.7,
                    hook_name="blocks.3.hook_resid_post", model_name="some/model")
    sae = SparseAutoencoder(cfg, seed=3)
    sae.b_enc = mx.random.normal((40,), key=mx.random.key(1)) * 0.1
    sae.b_dec = mx.random.normal((D,), key=mx.random.key(2))
    x = np.random.default_rng(0).normal(size=(10, D)).astype(np.float32)
    w_enc, b_enc, b_dec = (np.asarray(a) for a in (sae.W_enc, sae.b_enc, sae.b_dec))
    pre = (x * 0.7 - b_dec) @ w_enc + b_enc
    kth = np.sort(pre, axis=1)[:, -5][:, None]
    want = np.where(pre >= kth, np.maximum(pre, 0), 0)
    np.testing.assert_allclose(np.asarray(sae.encode(x)), want, atol=1e-5)
    np.testing.assert_allclose(np.asarray(sae.forward(x)),
                               (want @ np.asarray(sae.W_dec) + b_dec) / 0.7, atol=1e-4)
    sae.save(tmp_path / "sae")  # folds the 0.7 into the weights, as SAELens expects
    loaded = SparseAutoencoder.load(tmp_path / "sae")
    assert loaded.config.normalize_activations == "none" and loaded.config.hook == "residuals_3"
    np.testing.assert_allclose(np.asarray(loaded.encode(x)), want, atol=1e-5)
    np.testing.assert_allclose(np.asarray(loaded.forward(x)),
                               (want @ np.asarray(sae.W_dec) + b_dec) / 0.7, atol=1e-4)


def test_feature_to_steering_vector(tmp_path):
    # training rows had root-mean-square norm sqrt(D) / 0.1
    sae = SparseAutoencoder(SAEConfig(D, 16, k=2, hook_name="blocks.2.hook_resid_post",
                                      model_name="m", activation_norm=np.sqrt(D) / 0.1), seed=0)
    vec = feature_to_steering_vector(sae, 5)  # default: half the layer's mean norm
    assert isinstance(vec, SteeringVector) and list(vec.directions) == [2]
    row = np.asarray(sae.W_dec[5])
    unit = row / np.linalg.norm(row)
    np.testing.assert_allclose(np.asarray(vec.directions[2]), 0.5 * np.sqrt(D) / 0.1 * unit,
                               rtol=1e-5)
    absolute = feature_to_steering_vector(sae, 5, scale=4.0, relative=False)
    np.testing.assert_allclose(np.asarray(absolute.directions[2]), 4 * unit, rtol=1e-5)
    vec.save(tmp_path / "v.safetensors")
    assert list(SteeringVector.load(tmp_path / "v.safetensors").directions) == [2]
    assert list(feature_to_steering_vector(sae, 0, layer=7).directions) == [7]
    with pytest.raises(ValueError, match="feature must be an int in 0..15"):
        feature_to_steering_vector(sae, 16)


def test_evaluate_matches_numpy_over_all_rows(tmp_path):
    x, _ = sparse_data(700, atoms=20, seed=2)
    store = ActivationStore(write_shards(x, tmp_path, 256))
    sae = SparseAutoencoder(SAEConfig(D, 24, k=3, normalize_activations="expected_average_only_in",
                                      norm_scaling_factor=1.3), seed=1)
    m = evaluate_sae(sae, store, batch_size=100)
    xs = x.astype(np.float64)
    f = np.asarray(sae.encode(x)).astype(np.float64)
    err = ((((f @ np.asarray(sae.W_dec) + np.asarray(sae.b_dec))) / 1.3 - xs) ** 2).sum()
    assert m["rows"] == 700 and m["l0"] == pytest.approx((f > 0).sum(1).mean())
    assert m["mse"] == pytest.approx(err / xs.size, rel=1e-4)
    assert m["fve"] == pytest.approx(1 - err / ((xs - xs.mean(0)) ** 2).sum(), rel=1e-4)
    assert m["dead_latents"] == int(((f > 0).sum(0) == 0).sum())


def test_train_saes_on_a_collection_writes_weights_json_and_plot(tmp_path):
    path = save_tiny_model(tmp_path / "m", "llama")
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps({"text": " ".join(f"w{7 + (i * j) % 50}"
                                                           for j in range(1, 8))})
                              for i in range(40)))
    cfg = config_from_dict({"model": {"name": str(path), "activation_layers": "residuals_1-2"},
                            "inference": {"positions": "all", "batch_size": 8},
                            "data": {"path": str(data)},
                            "output": {"result_dir": str(tmp_path / "out"), "shard_size": 16}})
    collect(cfg, hooked=HookedModel.from_pretrained(str(path)), progress=False,
            echo=lambda s: None)
    lines: list[str] = []
    results = train_saes(tmp_path / "out", SAESection(position="all", expansion=2, k=4,
                                                      epochs=2, hook_points="residuals_2"),
                         progress=False, echo=lines.append)
    assert list(results) == ["residuals_2"] and "fve" in lines[-1]
    out = tmp_path / "out" / "sae" / "all" / "residuals_2"
    saved = json.loads((out / "mlux.json").read_text())
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == "blocks.2.hook_resid_post"
    assert cfg["architecture"] == "topk"
    assert cfg["metadata"]["model_name"] == str(path) and saved["metrics"]["rows"] == 40 * 7
    assert (out / "training_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert SparseAutoencoder.load(out).config.d_sae == 128
    # CE loss and KL with the SAE spliced in, on the collected prompts
    m = saved["metrics"]
    assert m["spliced_tokens"] == 32 * 6  # 32 prompts of 7 tokens: 6 predictions each
    assert m["kl_div_with_sae"] >= 0 and np.isfinite(m["ce_loss_recovered"])
    with pytest.raises(ValueError, match=r"residuals_0.*not collected"):
        train_saes(tmp_path / "out", SAESection(position="all", hook_points="residuals_0"))
