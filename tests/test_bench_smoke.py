"""Smoke tests of experiments/bench_steering.py and bench_batch.py: each runs end to end in its
quick mode and writes the JSON it promises.

Only the shape of the reports is checked, never a timing: speed depends on the machine and on
whatever else shares its cores.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
CLOCKS = ("wall", "cpu")


def _load_script(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(EXPERIMENTS))  # the scripts import benchkit beside them
    spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # as importing it would (dataclasses need it)
    spec.loader.exec_module(module)
    return module


def _positive_finite(x: object) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def _ratio(r: dict) -> bool:
    return _positive_finite(r["median"]) and r["min"] <= r["median"] <= r["max"]


def _run(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> dict:
    out = tmp_path / f"{name}.json"
    returned = _load_script(name, monkeypatch).main(["--quick", "--output", str(out)])
    report = json.loads(out.read_text())
    assert report == json.loads(json.dumps(returned))  # what main returns is what it wrote
    assert report["table"] in capsys.readouterr().out
    assert "ratio (median of paired repeats)" in report["table"]
    assert report["command"] == ["python", f"experiments/{name}.py", "--quick", "--output",
                                 str(out)]
    assert set(report["versions"]) >= {"mlx", "mlx_lm", "mlux"}
    assert report["machine"]["cpu_count"] >= 1
    assert report["model"]["quantize_bits"] == 4
    assert report["settings"]["quick"] is True
    return report


def test_bench_steering_quick_run_writes_report(tmp_path: Path, monkeypatch, capsys) -> None:
    report = _run("bench_steering", tmp_path, monkeypatch, capsys)
    for key in ("generation", "generation_big_vocab", "prefill", "extraction",
                "shared_prefill"):
        assert key in report, key
    assert report["model"]["big_vocab"]["vocab_size"] > report["model"]["main"]["vocab_size"]

    for name in ("generation", "generation_big_vocab"):
        gen = report[name]
        paths = gen["paths"]
        assert {"plain_mlx_lm", "control_plain_again", "mlux_no_hooks", "steered_3_layers",
                "steered_generate_batch"} <= set(paths)
        assert all(c == [gen["new_tokens"]] for c in gen["token_counts"].values())
        # greedy: every unsteered path makes plain mlx-lm's tokens, and steering changes them
        assert gen["unsteered_tokens_identical"] is True
        assert isinstance(gen["steered_tokens_identical"], bool)
        assert gen["steering_changed_tokens"] is True
        e2e, decode = gen["end_to_end"], gen["decode_only"]
        assert "prefill included" in e2e["timing"] and "prefill excluded" in decode["timing"]
        assert set(e2e["ratios"]) == set(paths) - {"plain_mlx_lm"}
        # generate_batch yields no per-token stream: it has no decode-only row
        assert set(decode["ratios"]) == set(paths) - {"plain_mlx_lm", "steered_generate_batch"}
        for part in (e2e, decode):
            for row in part["ratios"].values():
                assert set(row) == set(CLOCKS) and all(_ratio(row[c]) for c in CLOCKS)
            for clock in CLOCKS:
                for run in part["tokens_per_second"][clock].values():
                    assert all(_positive_finite(v) for v in run["values"])
        for key in ("steered_3_layers", "steered_generate_batch"):
            goal = e2e["ratios"][key]["wall"]["goal"]
            assert goal["op"] == ">=" and goal["value"] == 0.97 and isinstance(goal["met"], bool)
        assert e2e["ratios"]["control_plain_again"]["wall"]["goal"] is None
        assert _ratio(decode["ratios_vs_mlux_no_hooks"]["steered_3_layers"]["cpu"])
    goals = {k: r["wall"]["goal"] for k, r in report["generation"]["decode_only"]["ratios"].items()}
    assert {g["value"] for g in goals.values() if g} == {0.99, 0.97}

    prefill = report["prefill"]
    assert prefill["prompt_tokens"] > 0 and isinstance(prefill["same_first_token"], bool)
    assert _ratio(prefill["peak_memory_ratio"]) and _ratio(prefill["peak_above_start_ratio"])
    assert prefill["peak_memory_ratio"]["goal"]["op"] == "<="
    assert prefill["peak_memory_ratio"]["goal"]["value"] == 1.25
    assert all(_ratio(prefill["time_ratio"][c]) for c in CLOCKS)
    assert all(_positive_finite(v["median"]) for v in prefill["peak_bytes"].values())

    extraction, shared = report["extraction"], report["shared_prefill"]
    assert extraction["batch_shape"][0] == 16
    for clock in CLOCKS:
        assert _ratio(extraction["ratio"][clock])
        assert extraction["ratio"][clock]["goal"]["value"] == 1.3
        assert _ratio(extraction["ratio_vs_masked_forward"][clock])
        assert _ratio(shared["ratio"][clock])
    assert isinstance(shared["outputs_identical"], bool)


def test_bench_batch_quick_run_writes_report(tmp_path: Path, monkeypatch, capsys) -> None:
    report = _run("bench_batch", tmp_path, monkeypatch, capsys)
    sweep = report["sweep"]
    assert len(sweep["alphas"]) == 8
    for key in ("batch_over_sequential", "batch_over_one_prefill"):
        assert all(_ratio(sweep[key][c]) for c in CLOCKS)
    # greedy: row i of the one batch is alpha i's continuation generated alone
    assert sweep["outputs_identical"] is True
    server = report["server"]
    assert [r["clients"] for r in server] == [1, 4, 8]
    for r in server:
        assert r["tokens"] == r["clients"] * report["settings"]["new_tokens"]
        assert _positive_finite(r["tokens_per_s"]) and _positive_finite(r["vs_one_client"])
