"""train-sae runs: interrupted runs resume, other settings are refused (or replaced with fresh),
few optimizer steps warn, evaluation samples uniformly, bad settings give one-line errors."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

import mlux.sae.fit as fit_mod
import mlux.sae.runs as runs_mod
from mlux.atomic import atomic_write_dir
from mlux.collect import ActivationStore, SAESection, collect, config_from_dict, load_config
from mlux.model import HookedModel
from mlux.sae import FewStepsWarning, train_sae, train_saes
from mlux.sae.fit import few_steps_message
from mlux.testing import save_tiny_model

SETTINGS = SAESection(expansion=1, k=4, batch_size=8, epochs=2)
QUIET = {"progress": False, "splice_prompts": 0}  # resume logic only: no spliced metrics


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    root = tmp_path_factory.mktemp("c")
    path = save_tiny_model(root / "m", "llama")
    (root / "d.jsonl").write_text("".join(
        json.dumps({"text": " ".join(f"w{7 + (i * j) % 40}" for j in range(1, 5))}) + "\n"
        for i in range(24)))
    cfg = config_from_dict({"model": {"name": str(path), "activation_layers": "residuals_0-2"},
                            "data": {"path": str(root / "d.jsonl")},
                            "output": {"result_dir": str(root / "out"), "shard_size": 8}})
    collect(cfg, hooked=HookedModel.from_pretrained(str(path)), progress=False,
            echo=lambda s: None)
    return root / "out"


def _stamp(folder: Path) -> tuple[int, int]:
    st = (folder / "sae_weights.safetensors").stat()
    return st.st_ino, st.st_mtime_ns


def test_interrupted_train_sae_resumes_and_never_mixes_settings(collection, tmp_path,
                                                                monkeypatch):
    out, lines = tmp_path / "sae", []
    train_saes(collection, SETTINGS, out_dir=out, **QUIET, echo=lines.append)
    assert any("warning: only 6 optimizer steps" in s and "sae.epochs" in s for s in lines)
    k8 = SAESection(expansion=1, k=8, batch_size=8, epochs=2)
    with pytest.raises(ValueError, match=r"trained differently: k: 4 before, 8 now "
                                         r"\(residuals_0, residuals_1, residuals_2\).*fresh"):
        train_saes(collection, k8, out_dir=out, **QUIET, echo=lines.append)

    real, calls = runs_mod.train_sae, []

    def dies_on_the_second_layer(*args, **kwargs):
        calls.append(kwargs["hook"])
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated kill")
        return real(*args, **kwargs)

    monkeypatch.setattr(runs_mod, "train_sae", dies_on_the_second_layer)
    with pytest.raises(KeyboardInterrupt):
        train_saes(collection, k8, out_dir=out, fresh=True, **QUIET, echo=lines.append)
    monkeypatch.setattr(runs_mod, "train_sae", real)
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["layers"]) == ["residuals_0"] and summary["settings"]["k"] == 8
    assert sorted(p.name for p in out.iterdir()) == ["residuals_0", "summary.json"]
    before = _stamp(out / "residuals_0")

    lines.clear()
    results = train_saes(collection, k8, out_dir=out, **QUIET, echo=lines.append)
    assert any(s.startswith("residuals_0") and "resumed" in s for s in lines)
    assert _stamp(out / "residuals_0") == before  # finished layer kept, not retrained
    assert all(r.sae.config.k == 8 for r in results.values())
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["layers"]) == ["residuals_0", "residuals_1", "residuals_2"]
    for h in summary["layers"]:
        assert json.loads((out / h / "cfg.json").read_text())["k"] == 8


@pytest.mark.filterwarnings("ignore::mlux.sae.FewStepsWarning")
def test_a_layer_directory_is_replaced_whole_and_orphans_are_removed(collection, tmp_path,
                                                                     monkeypatch):
    out = tmp_path / "sae"
    one = SAESection(expansion=1, k=4, batch_size=8, epochs=2, hook_points="residuals_1")
    train_saes(collection, one, out_dir=out, **QUIET, echo=lambda s: None)
    before = (out / "residuals_1" / "sae_weights.safetensors").read_bytes()

    def fails_late(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fit_mod, "plot_training_curve", fails_late)  # after the weights
    with pytest.raises(OSError, match="No space left"):
        train_sae(ActivationStore(list((collection / "activations").rglob(
            "residuals_1/*.safetensors"))), one, hook="residuals_1", out_dir=out / "residuals_1",
            progress=False)
    assert (out / "residuals_1" / "sae_weights.safetensors").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["residuals_1", "summary.json"]
    orphan = out / ".residuals_2.0123456789ab.tmp"
    orphan.mkdir()
    (orphan / "sae_weights.safetensors").write_bytes(b"half")
    train_saes(collection, one, out_dir=out, **QUIET, echo=lambda s: None)
    assert not orphan.exists()


def test_atomic_write_dir_keeps_the_old_directory_on_failure(tmp_path):
    target = tmp_path / "d"
    atomic_write_dir(target, lambda tmp: (tmp / "a").write_text("old"))

    def half(tmp):
        (tmp / "a").write_text("new")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write_dir(target, half)
    assert (target / "a").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["d"]
    atomic_write_dir(target, lambda tmp: (tmp / "b").write_text("new"))
    assert [p.name for p in target.iterdir()] == ["b"]


def test_evaluation_samples_rows_uniformly_across_shards(tmp_path):
    paths = []
    for i in range(4):  # shard i holds rows whose value is i (e.g. one category per shard)
        paths.append(tmp_path / f"s{i}.safetensors")
        save_file({"last": np.full((100, 2), i, np.float32) + np.arange(100)[:, None] / 1e3},
                  str(paths[-1]))
    store = ActivationStore(paths)
    rows = np.concatenate(list(store.iter_sample(120, 32, seed=0)))
    counts = np.bincount(rows[:, 0].astype(int), minlength=4)
    assert len(rows) == 120 and len(np.unique(rows[:, 0])) == 120 and counts.min() >= 15
    again = np.concatenate(list(store.iter_sample(120, 50, seed=0)))
    np.testing.assert_array_equal(rows, again)  # seeded, whatever the batch size
    assert len(np.concatenate(list(store.iter_sample(1000, 64)))) == 400


def test_bad_sae_settings_give_one_line_errors(collection):
    store = ActivationStore(list((collection / "activations").rglob("residuals_0/*.safetensors")))
    with pytest.raises(ValueError, match=r"sae.k \(100000\) must be at most the number of latents "
                                         r"\(64 = expansion 1 x hidden 64\)"):
        train_sae(store, SAESection(expansion=1, k=100000), progress=False)
    with pytest.raises(ValueError, match=r"sae.l1_coeff: must be a finite non-negative number"):
        SAESection(l1_coeff=float("inf"))
    with pytest.raises(ValueError, match=r"sae.k.*must be at most sae.num_latents \(16\)"):
        SAESection(num_latents=16, k=32)
    with pytest.warns(FewStepsWarning, match=r"only 3 optimizer steps \(24 rows / batch_size 8 "
                                             r"= 3 per epoch x 1 epochs\).*batch_size to 4"):
        train_sae(store, SAESection(expansion=1, k=4, batch_size=8, epochs=1), progress=False)


def test_shipped_sae_settings_train_on_the_shipped_data(tmp_path):
    """The 7B configs' SAE settings on their 64 refusal prompts, a 32-layer stand-in model."""
    repo = Path(__file__).resolve().parents[1]
    for f in sorted((repo / "configs" / "models").glob("*7b*.yaml")):
        assert few_steps_message(64, load_config(f).sae) is None, f.name
    cfg = load_config(repo / "configs" / "models" / "llama2-7b-chat-all.yaml")
    model = save_tiny_model(tmp_path / "m", "llama", num_layers=32)
    cfg = cfg.replace("model", name=str(model), activation_layers=["residuals_0", "residuals_31"])
    cfg = cfg.replace("output", result_dir=str(tmp_path / "out"))
    collect(cfg, hooked=HookedModel.from_pretrained(str(model)), progress=False,
            echo=lambda s: None)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FewStepsWarning)
        results = train_saes(tmp_path / "out", cfg.sae, **QUIET, echo=lambda s: None)
    assert {h: r.metrics["rows"] for h, r in results.items()} == {"residuals_0": 64,
                                                                  "residuals_31": 64}
    assert all(r.metrics["fve"] > 0.8 for r in results.values()), {
        h: r.metrics["fve"] for h, r in results.items()}
