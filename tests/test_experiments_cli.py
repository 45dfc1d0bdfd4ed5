"""The vector verbs and the strength sweep on the built-in model: extract -> generate ->
strength-sweep end to end, a strength sweep resumed after Ctrl-C, bare layer ranges, and no
ranking from rates nothing measured."""

from __future__ import annotations

import json
import re
import sys

import pytest

from mlux import HookedModel, extract_steering_vectors
from mlux.cli import main
from mlux.experiments.common import ResultFile, best_by_effect
from mlux.experiments.options import layer_ints, resolve_scorer
from mlux.experiments.strength_sweep import strength_sweep
from mlux.toy import CONTRAST_PROMPTS, TEST_PROMPTS


@pytest.fixture(scope="module")
def toy():
    return HookedModel.from_pretrained("mlux-toy")


def test_extract_generate_strength_sweep_end_to_end(tmp_path, capsys):
    vec = tmp_path / "happy.safetensors"
    assert main(["extract", "--layers", "2", "--output", str(vec)]) == 0
    assert f"wrote {vec}" in capsys.readouterr().out
    args = ["generate", "the", "--vector", str(vec), "--max-tokens", "12"]
    assert main([*args, "--alpha", "2", "--baseline"]) == 0
    captured = capsys.readouterr()
    unsteered, happy = captured.out.splitlines()
    assert "--- unsteered" in captured.err and "--- alpha +2 at layers [2] (all)" in captured.err
    assert main([*args, "--alpha=-2", "--positions", "generated"]) == 0
    (sad,) = capsys.readouterr().out.splitlines()
    scorer = resolve_scorer("toy:sentiment=happy", "mlux-toy")[0]
    assert scorer(happy) is True and scorer(sad) is False and happy != unsteered
    (tmp_path / "prompts.txt").write_text("\n".join(TEST_PROMPTS[:4]))
    out = tmp_path / "sweep.json"
    assert main(["strength-sweep", "--vector", str(vec), "--strengths=-4,0,4", "--samples", "1",
                 "--max-tokens", "10", "--prompts", str(tmp_path / "prompts.txt"),
                 "--instruction", "sunny", "--output", str(out)]) == 0
    text = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert set(data["cells"]) == {"strength_-4", "strength_0", "strength_4", "prompting_baseline"}
    rates = data["summary"]["rates"]
    assert rates["-4"] <= 0.25 and rates["4"] >= 0.75, rates
    assert re.search(r"^\s+4 \| \d+% \[\d+%-\d+%\] n=4", text, flags=re.M)  # n and interval
    assert "prompting baseline ('sunny' before each prompt, unsteered): " in text
    assert out.with_suffix(".png").is_file()


STOPPER = '''
from pathlib import Path
CALLS = [0]

def score(text):
    CALLS[0] += 1
    if Path(__file__).with_name("stop").exists() and CALLS[0] > {after}:
        raise KeyboardInterrupt  # Ctrl-C in the second cell
    return "sunny" in text
'''


def test_strength_sweep_resumes_after_ctrl_c(tmp_path, monkeypatch, capsys):
    """Each strength is a cell saved as it finishes: Ctrl-C in the second keeps the first, and
    the same command finishes the rest; the result equals an uninterrupted run."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    prompts = TEST_PROMPTS[:2]
    (tmp_path / "mlux_test_stopper.py").write_text(STOPPER.format(after=2 * len(prompts)))
    (tmp_path / "stop").touch()
    (tmp_path / "prompts.txt").write_text("\n".join(prompts))
    argv = ["strength-sweep", "--layer", "2", "--strengths=-2,2,4", "--samples", "1",
            "--max-tokens", "8", "--prompts", "prompts.txt", "--output", "s.json",
            "--behavior", "mlux_test_stopper:score"]  # found in the current folder
    assert main(argv) == 130
    assert "interrupted; finished cells are saved" in capsys.readouterr().err
    assert set(json.loads((tmp_path / "s.json").read_text())["cells"]) == {"strength_-2"}
    (tmp_path / "stop").unlink()
    assert main(argv) == 0
    assert "resuming: 1 finished cells" in capsys.readouterr().out
    resumed = json.loads((tmp_path / "s.json").read_text())
    assert main([*argv[:-4], "--output", "fresh.json", *argv[-2:]]) == 0
    fresh = json.loads((tmp_path / "fresh.json").read_text())
    assert resumed["cells"] == fresh["cells"] and resumed["finished"]


def test_strength_sweep_cells_skip_finished_work(toy, tmp_path):
    calls = []
    scorer = lambda t: calls.append(t) or "sunny" in t  # noqa: E731
    kw = dict(strengths=[0.0, 2.0], layers=[2], samples_per_prompt=1, max_tokens=4)
    vec = extract_steering_vectors(toy, *CONTRAST_PROMPTS["sentiment"], [2])
    result = ResultFile(tmp_path / "r.json", "strength_sweep", toy, {"a": 1})
    first = strength_sweep(toy, vec, TEST_PROMPTS[:2], scorer, result=result, **kw)
    n = len(calls)
    again = strength_sweep(toy, vec, TEST_PROMPTS[:2], scorer, **kw,
                           result=ResultFile(tmp_path / "r.json", "strength_sweep", toy, {"a": 1}))
    assert again == first and len(calls) == n  # nothing recomputed


def test_bare_layer_ranges_mean_residuals(toy):
    assert layer_ints(toy, "1-3") == [1, 2, 3]
    assert layer_ints(toy, "0, 2-3,residuals_5") == [0, 2, 3, 5]
    assert layer_ints(toy, "-1") == [5] and layer_ints(toy, None) is None


def test_nan_effects_are_never_ranked():
    assert best_by_effect({0: float("nan"), 1: 0.2, 2: 0.5}, 3) == [2, 1]
    assert best_by_effect({0: float("nan")}, 3) == []
