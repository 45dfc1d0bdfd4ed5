"""Injected faults in collection: concurrent runs, swapped weights, partial collections, damaged
shards, orphan temp files. Each ends in a clear error or a correct recovery, never a mix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mlux.collect.collector as collector_mod
from mlux.collect import (
    FolderLockedError,
    Manifest,
    analyze_layers,
    collect,
    config_from_dict,
    folder_lock,
    load_activations,
)
from mlux.collect.cli import main as cli_main
from mlux.collect.run_config import SAESection
from mlux.model import HookedModel
from mlux.sae import train_saes
from mlux.testing import save_tiny_model

HOOKS = ("residuals_1", "residuals_2")


@pytest.fixture
def model_dir(tmp_path):
    return save_tiny_model(tmp_path / "model", "llama")


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"text": f"w{8 + i} w{20 + 2 * i} w9", "category": c})
                            + "\n" for c in "ab" for i in range(6)))
    return path


def config(model: Path, data: Path, out: Path):
    return config_from_dict({"model": {"name": str(model), "activation_layers": list(HOOKS)},
                             "inference": {"batch_size": 3}, "data": {"path": str(data)},
                             "output": {"result_dir": str(out), "shard_size": 3}})


def run(cfg, hooked=None, lines=None):
    hooked = hooked or HookedModel.from_pretrained(cfg.model.name)
    echo = lines.append if lines is not None else (lambda s: None)
    return collect(cfg, hooked=hooked, progress=False, echo=echo)


def crash_after(monkeypatch, chunks: int) -> None:
    """Make `collect` die (like Ctrl-C) once `chunks` chunks are finished."""
    real, calls = collector_mod.write_shard, []

    def write(path, tensors, meta):
        if len(calls) == chunks * len(HOOKS):
            raise KeyboardInterrupt("simulated crash")
        calls.append(path)
        return real(path, tensors, meta)

    monkeypatch.setattr(collector_mod, "write_shard", write)


def test_a_second_run_is_refused_and_a_dead_holder_taken_over(model_dir, data_file, tmp_path):
    cfg = config(model_dir, data_file, tmp_path / "out")
    with folder_lock(tmp_path / "out", "collect"):
        with pytest.raises(FolderLockedError, match=rf"in use by collect \(pid {os.getpid()} on "):
            run(cfg)
    assert not (tmp_path / "out" / "manifest.json").exists()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from mlux.collect.lock import folder_lock\n"
         "with folder_lock(Path(sys.argv[1]), 'collect'):\n"
         "    print('held', flush=True); time.sleep(60)", str(tmp_path / "out")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderLockedError, match=rf"pid {holder.pid} on "):
            run(cfg)
    finally:
        holder.kill()  # SIGKILL: no cleanup, the lock file stays behind
        holder.wait()
    lines: list[str] = []
    assert run(cfg, lines=lines).chunks_written == 4
    assert any("taking over the lock" in s and f"pid {holder.pid}" in s for s in lines)
    assert not (tmp_path / "out" / ".mlux.lock").exists()  # released after the run


def test_resume_on_other_weights_at_the_same_path_is_refused(model_dir, data_file, tmp_path,
                                                             monkeypatch):
    cfg = config(model_dir, data_file, tmp_path / "out")
    crash_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        run(cfg)
    monkeypatch.undo()
    save_tiny_model(model_dir, "llama", seed=1)  # same config, other weights
    with pytest.raises(ValueError, match=r"made differently.*model.safetensors: same size, "
                                         r"different bytes"):
        run(cfg)
    save_tiny_model(model_dir, "llama", quantize_bits=4)  # the 4-bit copy over the float one
    with pytest.raises(ValueError, match=r"config.json differs; quantization: None before, "
                                         r"\{'bits': 4.*bytes before"):
        run(cfg)
    assert len(Manifest.load(tmp_path / "out").data["chunks"]) == 2  # nothing was mixed in


def test_partial_collection_is_refused_unless_allowed(model_dir, data_file, tmp_path,
                                                      monkeypatch, capsys):
    out = tmp_path / "out"
    crash_after(monkeypatch, 3)  # a: 6 of 6 prompts, b: 3 of 6
    with pytest.raises(KeyboardInterrupt):
        run(config(model_dir, data_file, out))
    with pytest.raises(ValueError, match=r"incomplete \(a 6/6, b 3/6 prompts.*--allow-partial"):
        analyze_layers(out, echo=lambda s: None)
    with pytest.raises(ValueError, match="incomplete"):
        train_saes(out, progress=False, echo=lambda s: None)
    lines: list[str] = []
    report = analyze_layers(out, allow_partial=True, echo=lines.append)
    assert "partial collection: using a 6/6, b 3/6 prompts" in lines
    saved = json.loads((out / "analysis" / "separability.json").read_text())
    assert saved["samples"] == report["samples"] == {"a": 6, "b": 3}
    assert saved["samples_requested"] == {"a": 6, "b": 6}
    assert load_activations(out, "residuals_1", allow_partial=True, echo=lines.append).shape[0] == 9
    results = train_saes(out, SAESection(expansion=1, k=4, batch_size=4, epochs=1),
                         allow_partial=True, progress=False, echo=lines.append)
    assert results["residuals_1"].metrics["rows"] == 9
    summary = json.loads((out / "sae" / "last" / "summary.json").read_text())
    assert summary["samples"]["b"] == {"used": 3, "requested": 6}
    flags = ["--result-dir", str(out), "--allow-partial"]
    assert cli_main(["analyze-layers", *flags, "--out-dir", str(tmp_path / "a")]) == 0
    sae = ["train-sae", *flags, "--expansion", "1", "--batch-size", "4", "--epochs", "1",
           "--no-progress"]
    capsys.readouterr()
    for args, code, says in (
            (["--k", "2"], 2, "k: 4 before, 2 now"),  # other settings than the SAEs on disk
            (["--k", "100000"], 2, "must be at most the number of latents"),
            (["--k", "2", "--fresh"], 0, ""),
            (["--l1", "inf"], 2, "sae.l1_coeff: must be a finite")):
        assert cli_main([*sae, *args]) == code
        assert says in capsys.readouterr().err
    assert cli_main(["analyze-layers", *flags, "--categories", "a", "a"]) == 2
    assert "two different names" in capsys.readouterr().err


@pytest.fixture
def complete(model_dir, data_file, tmp_path):
    out = tmp_path / "out"
    manifest = run(config(model_dir, data_file, out)).manifest
    return out, manifest


def _shard(manifest: Manifest, category: str = "b", hook: str = "residuals_1") -> Path:
    return manifest.shard_paths(hook, "last", [category])[0]


def test_truncated_shard_is_named(complete, capsys):
    out, manifest = complete
    path = _shard(manifest)
    path.write_bytes(path.read_bytes()[:-16])
    with pytest.raises(ValueError, match=rf"shard {path} has \d+ bytes, \d+ were written"):
        analyze_layers(out, echo=lambda s: None)
    code = cli_main(["train-sae", "--result-dir", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and str(path) in err and "Traceback" not in err


def test_bit_flipped_shard_fails_its_checksum(complete):
    out, manifest = complete
    path = _shard(manifest)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x10  # one bit of one activation, same size
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"shard {path} fails its checksum"):
        load_activations(out, "residuals_1")


def test_nan_rows_are_reported_with_the_shard(model_dir, data_file, tmp_path, monkeypatch):
    real = collector_mod.chunk_tensors

    def overflowing(acts, start, dtype):
        tensors = real(acts, start, dtype)
        if start == 3:  # the second chunk of each category: one row overflows
            tensors["last"][1] = np.nan
        return tensors

    monkeypatch.setattr(collector_mod, "chunk_tensors", overflowing)
    out = tmp_path / "out"
    run(config(model_dir, data_file, out))
    bad = Manifest.load(out).shard_paths("residuals_1", "last", ["a"])[1]
    with pytest.raises(ValueError, match=rf"shard {bad}: 1 of 3 rows of 'last' hold NaN or inf "
                                         r"\(rows 1\).*float32"):
        analyze_layers(out, echo=lambda s: None)


def test_orphan_temp_files_are_removed_and_reruns_are_byte_identical(model_dir, data_file,
                                                                     tmp_path):
    first = run(config(model_dir, data_file, tmp_path / "one")).manifest
    shard = _shard(first)
    orphans = [tmp_path / "one" / ".manifest.json.0123456789ab.tmp",
               shard.parent / f".{shard.name}.abcdef012345.tmp"]
    for p in orphans:
        p.write_text("half a file from a run killed with -9")
    assert run(config(model_dir, data_file, tmp_path / "one")).chunks_written == 0
    assert not any(p.exists() for p in orphans)
    second = run(config(model_dir, data_file, tmp_path / "two")).manifest
    for h in HOOKS:
        for a, b in zip(first.shard_paths(h, "last"), second.shard_paths(h, "last"), strict=True):
            assert a.read_bytes() == b.read_bytes(), a


def test_the_same_weights_moved_to_another_path_resume(model_dir, data_file, tmp_path,
                                                       monkeypatch):
    crash_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        run(config(model_dir, data_file, tmp_path / "out"))
    monkeypatch.undo()
    moved = model_dir.rename(tmp_path / "moved")
    result = run(config(moved, data_file, tmp_path / "out"))
    assert (result.chunks_skipped, result.chunks_written) == (2, 2)
