"""SAE files: SAELens folders written here by hand (each architecture and input variant) and
Gemma Scope npz files encode as the formulas say (numpy references); mlux's own saves round-trip
exactly; bad files are one error naming the field."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from mlux.collect import ActivationStore, SAESection
from mlux.sae import SAEConfig, SparseAutoencoder, to_mlux_hook, to_saelens_hook, train_sae

D, S = 12, 20
RNG = np.random.default_rng(7)
W = {"W_enc": RNG.normal(size=(D, S)).astype(np.float32) * 0.5,
     "W_dec": RNG.normal(size=(S, D)).astype(np.float32) * 0.5,
     "b_enc": RNG.normal(size=S).astype(np.float32) * 0.3,
     "b_dec": RNG.normal(size=D).astype(np.float32),
     "threshold": RNG.uniform(0.0, 0.8, S).astype(np.float32)}
X = (RNG.normal(size=(9, D)) * 2 + 0.5).astype(np.float32)


def saelens_folder(path: Path, cfg: dict, weights: dict, layout: str = "v6") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in weights.items()},
              str(path / "sae_weights.safetensors"))
    meta = {"model_name": "m", "hook_name": "blocks.2.hook_resid_post"}
    body = ({**cfg, "metadata": {**meta, "sae_lens_version": "6.1.0"}} if layout == "v6"
            else {**cfg, **meta})  # the older flat layout
    (path / "cfg.json").write_text(json.dumps(body))
    return path


def reference(x: np.ndarray, w: dict, *, arch: str, apply_b_dec: bool = True,
              norm: str = "none", k: int = 4, factor: float = 1.0) -> tuple[np.ndarray, ...]:
    """SAELens's encode and decode, in float64 numpy."""
    x = x.astype(np.float64)
    if norm == "constant_norm_rescale":
        c = np.sqrt(D) / np.linalg.norm(x, axis=-1, keepdims=True)
        xin, out = x * c, (lambda y: y / c)
    elif norm == "layer_norm":
        mu = x.mean(-1, keepdims=True)
        std = (x - mu).std(-1, ddof=1, keepdims=True)
        xin, out = (x - mu) / (std + 1e-5), (lambda y: y * std + mu)
    elif norm == "expected_average_only_in":
        xin, out = x * factor, (lambda y: y / factor)
    else:
        xin, out = x, (lambda y: y)
    pre = (xin - (w["b_dec"] if apply_b_dec else 0)) @ w["W_enc"] + w["b_enc"]
    if arch == "standard":
        f = np.maximum(pre, 0)
    elif arch == "jumprelu":
        f = np.where(pre > w["threshold"], np.maximum(pre, 0), 0)
    elif arch == "topk":
        kth = np.sort(pre, -1)[:, -k][:, None]
        f = np.where(pre >= kth, np.maximum(pre, 0), 0)
    else:  # batchtopk without a threshold: the k * rows largest of the batch
        acts = np.maximum(pre, 0)
        kth = np.sort(acts.ravel())[-k * len(x)]
        f = np.where(acts >= kth, acts, 0)
    return f, out(f @ w["W_dec"] + w["b_dec"])


CASES = [  # (id, cfg.json fields, reference kwargs)
    ("standard", {"architecture": "standard"}, {"arch": "standard"}),
    ("standard-no-bdec", {"architecture": "standard", "apply_b_dec_to_input": False},
     {"arch": "standard", "apply_b_dec": False}),
    ("jumprelu", {"architecture": "jumprelu", "apply_b_dec_to_input": False},
     {"arch": "jumprelu", "apply_b_dec": False}),
    ("topk", {"architecture": "topk", "k": 4}, {"arch": "topk", "k": 4}),
    ("batchtopk", {"architecture": "batchtopk", "k": 3}, {"arch": "batchtopk", "k": 3}),
    ("batchtopk-threshold", {"architecture": "batchtopk", "k": 3},  # = JumpReLU at inference
     {"arch": "jumprelu"}),
    ("constant-norm", {"architecture": "standard", "normalize_activations":
                       "constant_norm_rescale"}, {"arch": "standard",
                                                  "norm": "constant_norm_rescale"}),
    ("layer-norm", {"architecture": "jumprelu", "normalize_activations": "layer_norm"},
     {"arch": "jumprelu", "norm": "layer_norm"}),
    ("expected-average", {"architecture": "standard", "normalize_activations":
                          "expected_average_only_in", "norm_scaling_factor": 0.3},
     {"arch": "standard", "norm": "expected_average_only_in", "factor": 0.3}),
]


@pytest.mark.parametrize("layout", ["v6", "flat"])
@pytest.mark.parametrize("fields,ref", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_saelens_folders_encode_as_the_formulas_say(tmp_path, fields, ref, layout):
    weights = {k: v for k, v in W.items() if k != "threshold" or ref["arch"] == "jumprelu"}
    cfg = {"d_in": D, "d_sae": S, "dtype": "float32", **fields}
    if layout == "flat" and fields["architecture"] == "topk":  # the older spelling of TopK
        cfg = {**cfg, "architecture": "standard", "activation_fn_str": "topk",
               "activation_fn_kwargs": {"k": cfg.pop("k")}}
    sae = SparseAutoencoder.load(saelens_folder(tmp_path / "f", cfg, weights, layout))
    assert sae.config.hook == "residuals_2" and sae.config.model_name == "m"
    f, x_hat = reference(X, weights, **ref)
    got = np.asarray(sae.encode(X))
    np.testing.assert_allclose(got, f, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(sae.decode(sae.encode(X), X)), x_hat, rtol=1e-5,
                               atol=1e-4)
    np.testing.assert_allclose(np.asarray(sae.forward(X)), x_hat, rtol=1e-5, atol=1e-4)
    idx, val = sae.features(X, 3)  # top-3 per row, largest first
    np.testing.assert_allclose(np.asarray(val), -np.sort(-f, -1)[:, :3], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.take_along_axis(f, np.asarray(idx).astype(int), -1),
                               np.asarray(val), rtol=1e-5, atol=1e-5)
    # Written back (an expected_average factor folded in) and read again: the same encodings.
    again = SparseAutoencoder.load(sae.save(tmp_path / "again"))
    np.testing.assert_allclose(np.asarray(again.encode(X)), got, rtol=1e-5, atol=1e-5)


def test_a_scaling_factor_that_cannot_be_folded_is_refused(tmp_path):
    cfg = SAEConfig(d_in=D, d_sae=S, architecture="topk", k=4, rescale_acts_by_decoder_norm=True,
                    normalize_activations="expected_average_only_in", norm_scaling_factor=0.4)
    sae = SparseAutoencoder.from_weights(cfg, {k: v for k, v in W.items() if k != "threshold"})
    with pytest.raises(ValueError, match=r"cannot fold norm_scaling_factor .* "
                                         r"rescale_acts_by_decoder_norm"):
        sae.save(tmp_path / "f")
    assert not (tmp_path / "f").exists()


def test_saelens_scaling_factor_scales_features_before_decoding(tmp_path):
    sf = RNG.uniform(0.5, 2.0, S).astype(np.float32)
    folder = saelens_folder(tmp_path / "f", {"d_in": D, "d_sae": S, "architecture": "standard"},
                            {**{k: W[k] for k in ("W_enc", "W_dec", "b_enc", "b_dec")},
                             "scaling_factor": sf})
    sae = SparseAutoencoder.load(folder)
    f, _ = reference(X, W, arch="standard")
    np.testing.assert_allclose(np.asarray(sae.forward(X)), (f * sf) @ W["W_dec"] + W["b_dec"],
                               rtol=1e-5, atol=1e-4)


def test_gemma_scope_params_npz(tmp_path):
    folder = tmp_path / "gemma-scope-2b-pt-res" / "layer_5" / "width_16k" / "average_l0_71"
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", **W)
    for path in (folder, folder / "params.npz"):  # the folder or the file
        sae = SparseAutoencoder.load(path)
        assert sae.config.architecture == "jumprelu" and not sae.config.apply_b_dec_to_input
        assert sae.config.hook == "residuals_5"
        f, x_hat = reference(X, W, arch="jumprelu", apply_b_dec=False)
        np.testing.assert_allclose(np.asarray(sae.encode(X)), f, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(sae.forward(X)), x_hat, rtol=1e-5, atol=1e-4)
    assert SparseAutoencoder.load(folder, hook_name="blocks.1.hook_mlp_out").config.hook == \
        "mlp_1"


def test_hook_names_map_both_ways():
    for mlux_name, saelens in [("residuals_12", "blocks.12.hook_resid_post"),
                               ("mlp_0", "blocks.0.hook_mlp_out"),
                               ("attention_3", "blocks.3.hook_attn_out")]:
        assert to_saelens_hook(mlux_name) == saelens and to_mlux_hook(saelens) == mlux_name
    assert to_mlux_hook("blocks.4.attn.hook_z") is None and to_mlux_hook(None) is None
    with pytest.raises(ValueError, match="valid: residuals_L, mlp_L, attention_L"):
        to_saelens_hook("embed")


@pytest.mark.filterwarnings("ignore::mlux.sae.FewStepsWarning")
def test_an_mlux_trained_sae_round_trips_exactly(tmp_path):
    x = (RNG.normal(size=(512, D)) * 4 + 1).astype(np.float32)
    save_file({"last": x}, str(tmp_path / "s.safetensors"))
    sae = train_sae(ActivationStore([tmp_path / "s.safetensors"]),
                    SAESection(num_latents=S, k=3, batch_size=64, epochs=1), hook="mlp_2",
                    model_id="mlux-toy", progress=False).sae
    loaded = SparseAutoencoder.load(sae.save(tmp_path / "sae"))
    assert loaded.config == sae.config and loaded.config.hook_name == "blocks.2.hook_mlp_out"
    np.testing.assert_array_equal(np.asarray(loaded.encode(x)), np.asarray(sae.encode(x)))
    np.testing.assert_array_equal(np.asarray(loaded.forward(x)), np.asarray(sae.forward(x)))


def test_sae_folders_of_older_mlux_versions_load(tmp_path):
    """The format before SAELens folders: sae.safetensors, config in its metadata."""
    from safetensors.numpy import save as save_bytes

    config = {"d_model": D, "num_latents": S, "kind": "topk", "k": 4, "l1_coeff": 0.001,
              "input_scale": 0.7, "hook": "residuals_3", "position": "last",
              "model_id": "m", "extra": {}}
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "sae.safetensors").write_bytes(save_bytes(
        {k: W[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec")},
        metadata={"mlux_sae_config": json.dumps(config)}))
    sae = SparseAutoencoder.load(tmp_path / "old")
    assert sae.config.hook == "residuals_3" and sae.config.activation_norm == pytest.approx(
        np.sqrt(D) / 0.7)
    pre = (X * 0.7 - W["b_dec"]) @ W["W_enc"] + W["b_enc"]  # the old formula
    kth = np.sort(pre, axis=1)[:, -4][:, None]
    want = np.where(pre >= kth, np.maximum(pre, 0), 0)
    np.testing.assert_allclose(np.asarray(sae.encode(X)), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(sae.forward(X)),
                               (want @ W["W_dec"] + W["b_dec"]) / 0.7, rtol=1e-5, atol=1e-4)


def _bad(tmp_path: Path, name: str, cfg: dict, weights: dict) -> Path:
    return saelens_folder(tmp_path / name, {"d_in": D, "d_sae": S, **cfg}, weights)


@pytest.mark.parametrize("cfg,weights,message", [
    ({"architecture": "gated"}, W, r"cfg.json: architecture 'gated' is not supported; valid: "
                                   r"standard, jumprelu, topk, batchtopk"),
    ({"architecture": "jumprelu"}, {k: v for k, v in W.items() if k != "threshold"},
     r"sae_weights.safetensors: missing key 'threshold' \(architecture 'jumprelu' needs"),
    ({"architecture": "standard"}, {**W, "W_dec": W["W_dec"][:5]},
     r"W_dec has shape \(5, 12\); d_in 12 and d_sae 20 make it \(20, 12\)"),
    ({"architecture": "topk", "k": 0}, W, r"field 'k' must be an int >= 1, got 0"),
    ({"architecture": "standard", "normalize_activations": "whiten"}, W,
     r"normalize_activations 'whiten' is not supported; valid: none, expected_average_only_in"),
    ({"architecture": "standard", "d_in": "12"}, W, r"field 'd_in' must be int, got '12'"),
], ids=["architecture", "missing-key", "shape", "k", "normalization", "type"])
def test_bad_files_are_one_error_naming_the_field(tmp_path, cfg, weights, message):
    with pytest.raises(ValueError, match=message):
        SparseAutoencoder.load(_bad(tmp_path, "x", cfg, weights))


def test_missing_files_and_fields(tmp_path):
    folder = _bad(tmp_path, "x", {"architecture": "standard"}, W)
    body = json.loads((folder / "cfg.json").read_text())
    del body["d_sae"]
    (folder / "cfg.json").write_text(json.dumps(body))
    with pytest.raises(ValueError, match=r"cfg.json: missing field 'd_sae'"):
        SparseAutoencoder.load(folder)
    (folder / "cfg.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"cfg.json is missing"):
        SparseAutoencoder.load(folder)
    np.savez(tmp_path / "p.npz", W_dec=W["W_dec"])
    with pytest.raises(ValueError, match=r"p.npz: missing key 'W_enc'"):
        SparseAutoencoder.load(tmp_path / "p.npz")
    ok = SparseAutoencoder.load(_bad(tmp_path, "ok", {"architecture": "standard"}, W))
    with pytest.raises(ValueError, match=r"d_in is 12 but the model's hidden size is 96"):
        SparseAutoencoder.load(tmp_path / "ok", hidden_size=96)
    with pytest.raises(ValueError, match=r"hook_name 'blocks.2.hook_resid_post' is layer 2; "
                                         r"the model has 2 layers"):
        ok.check_model(D, 2)


def test_bad_file_on_the_command_line_is_one_line(tmp_path):
    folder = _bad(tmp_path, "x", {"architecture": "gated"}, W)
    proc = subprocess.run([sys.executable, "-m", "mlux", "features", "the", "--sae",
                           str(folder)], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("mlux features: error: ") and "'gated'" in proc.stderr
