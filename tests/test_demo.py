"""`mlux demo` and `mlux info` from the command line, offline, on the built-in model."""

from __future__ import annotations

import json
import re

from mlux.cli import main
from mlux.testing import save_tiny_model


def test_demo_on_the_built_in_model(capsys):
    assert main(["demo", "--max-tokens", "12"]) == 0
    out = capsys.readouterr().out
    assert "steering 'sentiment' on mlux-toy" in out
    assert re.search(r"baseline \| \S+", out) and re.search(r"alpha \+2 \| \S+", out)
    rows = re.findall(r"^\s+(\d) \|\s+[\d.]+ \|", out, flags=re.M)
    assert rows == [str(i) for i in range(6)]  # one effect row per layer
    assert "largest effect at layer" in out


def test_demo_on_another_model(tmp_path, capsys):
    path = save_tiny_model(tmp_path / "m", "qwen3")
    assert main(["demo", "--model", str(path), "--max-tokens", "4"]) == 0
    assert "steering 'happy_sad'" in capsys.readouterr().out


def test_demo_rejects_unknown_feature(capsys):
    assert main(["demo", "--feature", "colour"]) == 2
    assert "unknown feature 'colour'" in capsys.readouterr().err


def test_info_json(capsys):
    assert main(["info", "mlux-toy-4bit", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["quantization"] == {"bits": 4, "group_size": 32}
    assert info["num_layers"] == 6 and info["hidden_size"] == 96
    assert len(info["hook_points"]) == 18
    assert info["block_pattern"].startswith("sequential pre-norm")


def test_demo_labels_line_up_whatever_the_alphas(capsys):
    assert main(["demo", "--feature", "formality", "--max-tokens", "4"]) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"^( +(?:alpha [+-][\d.]+|baseline) )\| ", out, flags=re.M)
    assert len(rows) == 3 and "alpha -0.75 " in rows[0]
    assert len({len(r) for r in rows}) == 1  # the bars in one column
    header, *table = [line for line in out.splitlines() if line.startswith("  layer |")
                      or re.match(r"^ +\d \|", line)]
    bars = {tuple(i for i, ch in enumerate(line) if ch == "|") for line in [header, *table]}
    assert len(bars) == 1 and len(table) == 6  # every column's bars in one place
