"""Layer separability: difference of means against `run_with_cache`, probe accuracy, outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mlux.collect import (
    analyze_layers,
    collect,
    config_from_dict,
    fit_logistic_probe,
    layer_separability,
)
from mlux.collect.cli import main as cli_main
from mlux.evaluation import wilson_interval
from mlux.model import HookedModel
from mlux.testing import save_tiny_model


def test_planted_direction_separates_and_noise_does_not():
    rng = np.random.default_rng(0)
    d, n = 48, 120
    direction = rng.normal(size=d)
    direction /= np.linalg.norm(direction)
    a = rng.normal(size=(n, d)) + 3 * direction
    b = rng.normal(size=(n, d)) - 3 * direction
    sep = layer_separability(a, b, seed=1)
    assert sep["probe_accuracy"] > 0.95 and sep["mean_diff_accuracy"] > 0.95
    np.testing.assert_allclose(sep["diff_norm"], np.linalg.norm(a.mean(0) - b.mean(0)))
    assert sep["n_test"] == 2 * round(n * 0.3)
    noise = layer_separability(rng.normal(size=(n, d)), rng.normal(size=(n, d)), seed=1)
    assert 0.3 < noise["probe_accuracy"] < 0.7


def test_probe_reaches_the_regularised_optimum():
    """At the optimum of L2 logistic regression the gradient vanishes (an independent check)."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 10))
    y = (x @ rng.normal(size=10) + 0.5 * rng.normal(size=200) > 0).astype(float)
    l2 = 1e-2
    probe = fit_logistic_probe(x, y, l2=l2, steps=2000)
    z = (x - x.mean(0)) / x.std(0)
    p = probe(x)
    # Recover the weights from the probe's logits, then check the regularised gradient.
    logits = np.log(p / (1 - p))
    w, *_ = np.linalg.lstsq(np.c_[z, np.ones(len(z))], logits, rcond=None)
    grad = np.c_[z, np.ones(len(z))].T @ (p - y) / len(y) + l2 * np.r_[w[:-1], 0]
    assert np.abs(grad).max() < 1e-4


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    root = tmp_path_factory.mktemp("c")
    path = save_tiny_model(root / "m", "llama")
    rng = np.random.default_rng(0)
    rows = [{"text": " ".join(f"w{w}" for w in rng.integers(lo, lo + 25, rng.integers(3, 8))),
             "category": cat} for _ in range(30) for cat, lo in (("harmful", 7), ("harmless", 38))]
    rows.append({"text": "w9 w10", "category": "other"})
    (root / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    cfg = config_from_dict({
        "model": {"name": str(path), "activation_layers": ["all", "mlp_0"]},
        "inference": {"positions": ["last", "mean"], "batch_size": 16},
        "data": {"path": str(root / "d.jsonl")},
        "output": {"result_dir": str(root / "out"), "shard_size": 8}})
    hooked = HookedModel.from_pretrained(str(path))
    collect(cfg, hooked=hooked, progress=False, echo=lambda s: None)
    return root / "out", hooked


def test_analysis_matches_run_with_cache_and_writes_outputs(collection, tmp_path):
    out, hooked = collection
    report = analyze_layers(out, categories=["harmful", "harmless"], position="mean",
                            out_dir=tmp_path, echo=lambda s: None)
    prompts = json.loads((out / "manifest.json").read_text())["categories"]
    rows = {}  # per-prompt mean activations, each prompt run alone
    for cat in ("harmful", "harmless"):
        acts = [hooked.run_with_cache(p, ["residuals_2", "mlp_0"])[1]
                for p in prompts[cat]["prompts"]]
        rows[cat] = {h: np.stack([np.asarray(a[h][0]).mean(0) for a in acts])
                     for h in ("residuals_2", "mlp_0")}
    by_hook = {r["hook"]: r for r in report["layers"]}
    assert list(by_hook) == ["residuals_0", "residuals_1", "residuals_2", "residuals_3", "mlp_0"]
    for h in ("residuals_2", "mlp_0"):
        a, b = rows["harmful"][h], rows["harmless"][h]
        assert by_hook[h]["diff_norm"] == pytest.approx(
            np.linalg.norm(a.mean(0) - b.mean(0)), rel=1e-4)
        ref = layer_separability(a, b, seed=0)  # same split seed as analyze_layers' default
        assert by_hook[h]["n_train"] == ref["n_train"]
        for key in ("probe_accuracy", "mean_diff_accuracy"):  # at most one borderline row apart
            assert by_hook[h][key] == pytest.approx(ref[key], abs=1.01 / ref["n_test"]), key
    saved = json.loads((tmp_path / "separability.json").read_text())
    assert saved["best_hook"] == report["best_hook"] and saved["samples"] == {
        "harmful": 30, "harmless": 30}
    assert (tmp_path / "separability.png").read_bytes()[:4] == b"\x89PNG"


def test_analysis_errors(collection, tmp_path, capsys):
    out, _ = collection
    with pytest.raises(ValueError, match="exactly two categories"):
        analyze_layers(out, out_dir=tmp_path)
    with pytest.raises(ValueError, match="position must be one of last, mean"):
        analyze_layers(out, categories=["harmful", "harmless"], position="all")
    with pytest.raises(ValueError, match=r"categories \['nope'\] were not collected"):
        analyze_layers(out, categories=["harmful", "nope"], out_dir=tmp_path)
    code = cli_main(["analyze-layers", "--result-dir", str(out), "--categories", "harmful",
                     "harmless", "--out-dir", str(tmp_path / "cli")])
    assert code == 0 and "best separation at" in capsys.readouterr().out


def test_separation_starts_at_the_first_layer_reaching_the_threshold(collection, tmp_path):
    out, _ = collection
    report = analyze_layers(out, categories=["harmful", "harmless"], position="mean",
                            threshold=0.75, out_dir=tmp_path, echo=lambda s: None)
    rows = report["layers"]
    order = sorted(range(len(rows)), key=lambda i: (rows[i]["layer"], i))
    first = next(rows[i] for i in order if rows[i]["probe_accuracy"] >= 0.75)
    assert report["separates_at"]["hook"] == first["hook"]
    lo, hi = report["separates_at"]["probe_accuracy_ci95"]
    assert lo <= first["probe_accuracy"] <= hi and report["separates_at"]["n_test"] == 18
    top = max(r["probe_accuracy"] for r in rows)  # ties go to the earliest layer, not the norm
    assert report["best_hook"] == next(rows[i]["hook"] for i in order
                                       if rows[i]["probe_accuracy"] == top)
    assert wilson_interval(50, 100) == pytest.approx((0.404, 0.596), abs=1e-3)
    assert wilson_interval(18, 18) == pytest.approx((0.824, 1.0), abs=1e-3)
