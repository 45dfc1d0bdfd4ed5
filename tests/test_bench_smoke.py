"""Smoke test of experiments/bench_steering.py: it runs end to end and writes the JSON it promises.

Only the shape of the report is checked, never a timing: speed depends on the machine and on
whatever else shares its cores.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "bench_steering.py"


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_steering", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _positive_finite(x: object) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_quick_run_writes_report(tmp_path: Path, capsys) -> None:
    out = tmp_path / "bench.json"
    returned = _load_script().main(["--quick", "--output", str(out)])
    report = json.loads(out.read_text())
    assert report == json.loads(json.dumps(returned))  # what main returns is what it wrote
    assert "ratio (median of paired repeats)" in capsys.readouterr().out

    for key in ("command", "versions", "machine", "model", "settings", "decode", "extraction",
                "shared_prefill", "table"):
        assert key in report, key
    assert report["command"][-3:] == ["--quick", "--output", str(out)]
    assert set(report["versions"]) >= {"mlx", "mlx_lm", "mlux"}
    assert report["machine"]["cpu_count"] >= 1
    assert report["model"]["quantize_bits"] == 4

    decode = report["decode"]
    rows = ("control_plain_again", "wrapped_no_hooks_mlx_lm", "mlux_no_hooks",
            "idle_hooks_3_layers", "steered_3_layers")
    for clock in ("wall", "cpu"):
        for row in rows:
            r = decode["ratios"][clock][row]
            assert _positive_finite(r["median"]) and r["min"] <= r["median"] <= r["max"]
        for run in decode["tokens_per_second"][clock].values():
            assert all(_positive_finite(v) for v in run["values"])
        goals = {row: decode["ratios"][clock][row]["goal"] for row in rows}
        assert {g["value"] for g in goals.values() if g} == {0.99, 0.97}
        assert all(isinstance(g["met"], bool) for g in goals.values() if g)
        hooks_only = decode["ratios_vs_mlux_no_hooks"][clock]["steered_3_layers"]
        assert _positive_finite(hooks_only["median"])

        ratio = report["extraction"]["ratio"][clock]
        assert _positive_finite(ratio["median"])
        assert ratio["goal"]["op"] == "<=" and ratio["goal"]["value"] == 1.3
        assert _positive_finite(report["shared_prefill"]["ratio"][clock]["median"])
    assert decode["unsteered_tokens_identical"] is True  # greedy paths agree token for token
    assert report["extraction"]["batch_shape"][0] == 16
    shared = report["shared_prefill"]
    assert _positive_finite(shared["ideal_ratio"])
    assert shared["outputs_identical"] is True  # one prefill serves every continuation exactly
