"""Smoke test of experiments/bench_capture.py: it runs end to end and writes the JSON it promises.

Only the shape of the report is checked, never a timing.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "bench_capture.py"


def _positive_finite(x: object) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_quick_run_writes_report(tmp_path: Path, capsys) -> None:
    spec = importlib.util.spec_from_file_location("bench_capture", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "bench.json"
    returned = module.main(["--quick", "--output", str(out)])
    report = json.loads(out.read_text())
    assert report == json.loads(json.dumps(returned))  # what main returns is what it wrote
    assert "capture(['residuals_1']) / plain forward" in capsys.readouterr().out
    for key in ("command", "versions", "machine", "model", "settings", "capture", "collect",
                "table"):
        assert key in report, key
    assert report["command"][-3:] == ["--quick", "--output", str(out)]
    assert report["model"]["quantize_bits"] == 4

    capture = report["capture"]
    goals = {}
    for clock in ("wall", "cpu"):
        for label, r in capture["ratios"][clock].items():
            assert _positive_finite(r["median"]) and r["min"] <= r["median"] <= r["max"], label
            if r["goal"]:
                assert isinstance(r["goal"]["met"], bool)
                goals[label] = r["goal"]["value"]
    assert sorted(goals.values()) == [0.3, 0.4, 1.0]
    assert all(_positive_finite(v) for v in capture["peak_mb"].values())
    assert capture["extraction_identical_to_full_forward"] is True

    collect = report["collect"]
    assert collect["prompts"] > 0 and set(collect["layer_sets"]) == {"shipped", "shallow"}
    for clock in ("wall", "cpu"):
        assert len(collect["ratios"][clock]) == 2
        assert all(_positive_finite(r["median"]) for r in collect["ratios"][clock].values())
        assert set(collect["prompts_per_second"][clock]) == {
            "shipped_before", "shipped_after", "shallow_before", "shallow_after"}
