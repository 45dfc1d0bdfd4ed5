"""Smoke test of experiments/bench_search.py: it runs end to end in its quick mode and writes the
report it promises. Only the report's shape and its internal consistency are checked, never a
timing or a figure (those are the full run's, quoted in the README)."""

from __future__ import annotations

import json

from test_bench_smoke import _load_script


def test_bench_search_quick_writes_its_report(tmp_path, monkeypatch, capsys):
    bench = _load_script("bench_search", monkeypatch)
    out = tmp_path / "bench_search.json"
    assert bench.main(["--quick", "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    steer, ablate = report["steer"], report["ablate"]
    assert steer["trials"] == ablate["trials"] == 4 and report["settings"]["quick"]
    assert steer["wall_seconds"] > 0 and ablate["wall_seconds"] > 0
    for sweep in steer["layer_sweeps"]:
        best = sweep["best_front_at_grid_kl"]
        assert best is None or best["kl"] <= sweep["grid_point"]["kl"]
    assert [t["kl"] for t in steer["front"]] == sorted(t["kl"] for t in steer["front"])
    assert len(ablate["every_layer_full_weight_per_direction"]) == 5
    assert "steer: 4 trials" in capsys.readouterr().out
