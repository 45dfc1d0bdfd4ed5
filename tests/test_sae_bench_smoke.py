"""Smoke test of experiments/bench_sae.py: its quick mode runs end to end and writes the JSON
it promises (shape only, never a timing)."""

from __future__ import annotations

import json

from test_bench_smoke import CLOCKS, _load_script, _ratio


def test_bench_sae_quick(tmp_path, monkeypatch):
    bench = _load_script("bench_sae", monkeypatch)
    out = tmp_path / "bench_sae.json"
    assert bench.main(["--quick", "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert len(report["ratios"]) == 3
    assert all(_ratio(r[c]) for r in report["ratios"].values() for c in CLOCKS)
    assert report["model"]["d_sae"] == 8 * report["model"]["hidden_size"]
