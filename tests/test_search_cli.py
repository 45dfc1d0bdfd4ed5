"""`mlux search` on the built-in model: the JSON against its schema, the PNG, the picked vector
read by `mlux generate`, `mlux serve` (steering as the search did), `mlux bake` (its baked model
equal to the hooked one) and GGUF export; bad input one line, exit 2."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import mlx.core as mx
import mlx_lm
import pytest

from mlux import HookedModel, SteeringVector, cli, generate_batch
from mlux.collect.lock import folder_lock
from mlux.experiments.common import residual_norms, sweep_directions
from mlux.search import ablation_hooks, steering_of
from mlux.search.space import layer_weights
from mlux.serve import create_server_app
from mlux.steering import steering_hooks
from mlux.toy import CONTRAST_PROMPTS, TEST_PROMPTS

SCHEMA = Path(__file__).resolve().parents[1] / "mlux" / "experiments" / "schemas" / \
    "search.schema.json"
FAST = ["--samples", "1", "--max-tokens", "6", "--seed", "0"]


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["search", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_search_writes_json_png_and_a_picked_vector_generate_and_bake_read(tmp_path, capsys):
    out = tmp_path / "s"
    code, stdout, _ = _run(capsys, "--trials", "4", "--layers", "1-3", "--windows", "all",
                           "--out", str(out), "--pick", "best", *FAST)
    assert code == 0
    assert "Pareto front of 4 trials" in stdout and "saved trial" in stdout
    data = json.loads((out / "search.json").read_text())
    jsonschema.validate(data, json.loads(SCHEMA.read_text()))
    assert len(data["trials"]) == 4 and data["front"]
    assert (out / "search.png").read_bytes()[:4] == b"\x89PNG"
    picked = out / "picked.safetensors"
    vec = SteeringVector.load(picked)
    best = max((t for t in data["trials"] if t["on_front"]), key=lambda t: t["behavior"])
    assert vec.metadata["search"]["trial"] == best["number"]

    assert cli.main(["generate", "the", "--vector", str(picked), "--max-tokens", "4"]) == 0
    baked = tmp_path / "baked"
    assert cli.main(["bake", "--model", "mlux-toy", "--vector", str(picked), "--alpha", "1",
                     "--out", str(baked)]) == 0
    hooked = HookedModel.from_pretrained("mlux-toy")
    tokens = mx.array([[10, 32, 11, 40]])
    ref = hooked.run_with_hooks(tokens, steering_hooks(vec, 1.0))
    got = HookedModel.from_pretrained(str(baked)).run_with_hooks(tokens, None)
    assert mx.allclose(got, ref, atol=1e-4)
    # The finished study again, the same trial written as a llama.cpp control vector (layers
    # 1-3: llama.cpp takes every one of them).
    code, stdout, _ = _run(capsys, "--trials", "4", "--layers", "1-3", "--windows", "all",
                           "--out", str(out), "--pick", str(best["number"]), "--save",
                           str(tmp_path / "v.gguf"), *FAST)
    assert code == 0 and "v.gguf" in stdout
    back = SteeringVector.import_gguf(tmp_path / "v.gguf")
    assert back.layers == vec.layers and all(mx.allclose(back[i], vec[i]) for i in vec.layers)


def test_mlux_serve_steers_with_a_picked_trial_as_the_search_did(tmp_path, capsys):
    out = tmp_path / "s"
    assert _run(capsys, "--trials", "3", "--windows", "generated", "--kernel", "--out",
                str(out), "--pick", "best", *FAST)[0] == 0
    data = json.loads((out / "search.json").read_text())
    trial = next(t for t in data["trials"]
                 if t["number"] == SteeringVector.load(out / "picked.safetensors")
                 .metadata["search"]["trial"])
    hooked = HookedModel.from_pretrained("mlux-toy")
    app = create_server_app(hooked, vectors=out, max_batch=2)
    try:
        body = {"prompt": "today the", "max_tokens": 8, "temperature": 0,
                "steering": {"vector": "picked", "alpha": 1.0, "positions": "generated"}}
        got = app.test_client().post("/v1/completions", json=body).get_json()
    finally:
        app.extensions["mlux_serve"]["engine"].close()
    directions, acts = sweep_directions(hooked, CONTRAST_PROMPTS["sentiment"])
    residual = residual_norms(hooked, list(directions), acts, TEST_PROMPTS)
    row = steering_of(trial["params"], directions, residual, hooked.num_layers)
    ref = generate_batch(hooked, ["today the"], max_tokens=8, steering=[row])[0]
    assert got["choices"][0]["text"] == hooked.tokenizer.decode(ref)


def test_ablate_search_pick_bakes_to_the_trials_own_hooks(tmp_path, capsys):
    """The baked folder (plain mlx-lm) equals the model run with the search's ablation hooks
    for the picked trial: its per-layer weights, block outputs only."""
    hooked = HookedModel.from_pretrained("mlux-toy")
    directions, _ = sweep_directions(hooked, CONTRAST_PROMPTS["sentiment"])
    source = tmp_path / "sentiment.safetensors"
    SteeringVector(dict(directions), model_id="mlux-toy").save(source)
    out = tmp_path / "a"
    code, stdout, _ = _run(capsys, "--mode", "ablate", "--vector", str(source), "--windows",
                           "all", "--trials", "3", "--out", str(out), "--pick", "0", *FAST)
    assert code == 0 and "mlux bake --model mlux-toy --ablate" in stdout
    picked = out / "picked.safetensors"
    params = SteeringVector.load(picked).metadata["search"]["params"]
    weights = layer_weights(params, hooked.num_layers)
    assert weights and set(weights.values()) != {1.0}  # a partial trial
    assert cli.main(["bake", "--model", "mlux-toy", "--ablate", str(picked),
                     "--out", str(tmp_path / "baked")]) == 0
    assert "baking its per-layer weights from the file's metadata" in capsys.readouterr().out
    tokens = mx.array([[10, 32, 11, 40, 7, 21]])
    ref = hooked.run_with_hooks(tokens, ablation_hooks(params, directions, hooked.num_layers))
    model, _ = mlx_lm.load(str(tmp_path / "baked"))
    got = model(tokens)
    assert float(mx.linalg.norm(got - ref) / mx.linalg.norm(ref)) < 1e-4
    full = hooked.run_with_hooks(tokens, ablation_hooks({**params, "max_weight": 1.0,
                                                          "min_weight": 1.0}, directions,
                                                         hooked.num_layers))
    assert float(mx.linalg.norm(got - full) / mx.linalg.norm(ref)) > 1e-3


def test_bake_refuses_an_ablate_pick_whose_window_is_not_all(tmp_path, capsys):
    out = tmp_path / "a"
    code, stdout, _ = _run(capsys, "--mode", "ablate", "--windows", "generated", "--trials",
                           "1", "--out", str(out), "--pick", "0", *FAST)
    assert code == 0 and "only for the window 'all'" in stdout
    code = cli.main(["bake", "--model", "mlux-toy", "--ablate", str(out / "picked.safetensors"),
                     "--out", str(tmp_path / "baked")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("mlux bake: error: ") and "window 'generated'" in err
    assert not (tmp_path / "baked").exists()


def test_rerun_of_a_finished_study_runs_nothing_new(tmp_path, capsys):
    out = tmp_path / "s"
    assert _run(capsys, "--trials", "2", "--out", str(out), *FAST)[0] == 0
    first = json.loads((out / "search.json").read_text())
    assert _run(capsys, "--trials", "2", "--out", str(out), *FAST)[0] == 0
    assert json.loads((out / "search.json").read_text())["trials"] == first["trials"]


def _bad(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    other = tmp_path / "other.safetensors"
    SteeringVector({1: mx.ones((8,))}, model_id="other-model").save(other)
    return {
        "trials": (["--trials", "0"], "--trials must be a positive integer, got 0"),
        "mode": (["--mode", "abliterate"], "unknown --mode 'abliterate'; choose from steer, "
                 "ablate"),
        "prompts": (["--prompts", str(empty)], "holds no prompts"),
        "harmless": (["--harmless", str(empty)], "holds no prompts"),
        "vector": (["--vector", str(other)], "hidden size 8 does not match the model's hidden "
                   "size 96 (it was made for other-model)"),
        "window": (["--windows", "later"], "unknown window"),
        "logodds": (["--score", "logodds", "--behavior", "json:loads"], "pass --target-words"),
        "pick": (["--pick", "first"], "--pick must be 'best' or a trial number, got 'first'"),
        "save": (["--save", "v.txt"], "--save must end in .safetensors or .gguf"),
        "chat": (["--chat"], "--chat: model 'mlux-toy' has no chat template that adds anything"),
    }


@pytest.mark.parametrize("case", ["trials", "mode", "prompts", "harmless", "vector", "window",
                                  "logodds", "pick", "save", "chat"])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, case):
    argv, message = _bad(tmp_path)[case]
    code, _, err = _run(capsys, *argv, "--out", str(tmp_path / "s"), *FAST)
    assert code == 2
    assert err.startswith("mlux search: error: ") and message in err
    assert len(err.strip().splitlines()) == 1


def test_output_folder_holding_another_study_is_refused(tmp_path, capsys):
    out = tmp_path / "s"
    assert _run(capsys, "--trials", "1", "--out", str(out), "--pick", "0", *FAST)[0] == 0
    code, _, err = _run(capsys, "--trials", "1", "--out", str(out), "--mode", "ablate", *FAST)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "holds another study (mode: 'steer' before, 'ablate' now" in err
    assert _run(capsys, "--trials", "1", "--out", str(out), "--mode", "ablate", "--fresh",
                *FAST)[0] == 0
    assert json.loads((out / "search.json").read_text())["mode"] == "ablate"
    stranger = tmp_path / "x"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    code, _, err = _run(capsys, "--trials", "1", "--out", str(stranger), *FAST)
    assert code == 2 and "holds files that are not a search (notes.txt)" in err
    code, _, err = _run(capsys, "--trials", "1", "--out", str(stranger), "--fresh", *FAST)
    assert code == 2 and "not a search (notes.txt)" in err
    with folder_lock(out, "another search", echo=print):  # a run still going on in `out`
        code, _, err = _run(capsys, "--trials", "2", "--out", str(out), "--mode", "ablate",
                            *FAST)
    assert code == 2 and f"{out} is in use by" in err and len(err.strip().splitlines()) == 1
    assert (stranger / "notes.txt").read_text() == "mine"


def test_logodds_score_runs_without_generation(tmp_path, capsys, monkeypatch):
    import mlux.search.objectives as objectives

    def no_generation(*a, **k):
        raise AssertionError("the log-odds score must not generate")

    monkeypatch.setattr(objectives, "generate_batch", no_generation)
    out = tmp_path / "s"
    assert _run(capsys, "--trials", "3", "--score", "logodds", "--out", str(out), *FAST)[0] == 0
    data = json.loads((out / "search.json").read_text())
    jsonschema.validate(data, json.loads(SCHEMA.read_text()))
    for t in data["trials"]:
        assert 1 / (1 + math.exp(-t["extras"]["logodds"])) == pytest.approx(t["behavior"])


def _complete(out: Path) -> int:
    """Complete trials in the journal, read as text (no lock taken from the running study)."""
    journal = out / "study.journal"
    count = 0
    for line in journal.read_text().splitlines() if journal.exists() else []:
        try:
            op = json.loads(line)
        except ValueError:  # a line being written
            continue
        count += op.get("op_code") == 6 and op.get("state") == 1  # set state: COMPLETE
    return count


def test_ctrl_c_then_the_same_command_ends_with_exactly_n_trials(tmp_path, capsys):
    out, n = tmp_path / "s", 12
    argv = ["--trials", str(n), "--batch", "1", "--out", str(out), *FAST]
    proc = subprocess.Popen([sys.executable, "-m", "mlux", "search", *argv], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ)
    deadline = time.monotonic() + 300
    while _complete(out) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == ("mlux search: interrupted; finished trials are "
                                            "saved; rerun the same command to continue")
    done = _complete(out)
    assert 3 <= done < n
    assert _run(capsys, *argv)[0] == 0
    trials = json.loads((out / "search.json").read_text())["trials"]
    assert len(trials) == n == _complete(out)
    assert len({json.dumps(t["params"], sort_keys=True) for t in trials}) == n


def test_on_a_terminal_without_pick_the_user_is_asked(tmp_path, capsys, monkeypatch):
    import mlux.verbs.search as verb

    class Terminal:
        def isatty(self) -> bool:
            return True

    asked = []
    monkeypatch.setattr(verb.sys, "stdin", Terminal())
    monkeypatch.setattr(verb.sys.stdout, "isatty", lambda: True, raising=False)
    monkeypatch.setattr("builtins.input", lambda prompt: asked.append(prompt) or "1")
    out = tmp_path / "s"
    code, stdout, _ = _run(capsys, "--trials", "2", "--out", str(out), *FAST)
    assert code == 0 and asked and "saved trial 1" in stdout
    assert SteeringVector.load(out / "picked.safetensors").metadata["search"]["trial"] == 1


def test_ablate_default_prompts_follow_the_behaviour(tmp_path, capsys):
    """A toy feature: its marker's prompts (formality: "style: formal ..."); another behaviour
    on the built-in model: the plain test prompts."""
    for behavior, marked in (("toy:formality=formal", True), ("contains:sunny", False)):
        out = tmp_path / behavior.replace(":", "_")
        assert _run(capsys, "--mode", "ablate", "--behavior", behavior, "--trials", "1",
                    "--out", str(out), *FAST)[0] == 0
        prompts = json.loads((out / "search.json").read_text())["settings"]["prompts"]
        assert (prompts["behavior"] != prompts["harmless"]) == marked  # harmless: test prompts


def test_generate_steers_in_the_window_the_vector_file_records(tmp_path, capsys):
    hooked = HookedModel.from_pretrained("mlux-toy")
    directions, _ = sweep_directions(hooked, CONTRAST_PROMPTS["sentiment"], [2])
    plain, windowed = tmp_path / "plain.safetensors", tmp_path / "windowed.safetensors"
    SteeringVector(dict(directions), model_id="mlux-toy").save(plain)
    SteeringVector(dict(directions), model_id="mlux-toy",
                   metadata={"positions": "prompt"}).save(windowed)

    def text(*argv: str) -> str:
        assert cli.main(["generate", "today the", "--max-tokens", "6", "--alpha", "8",
                         *argv]) == 0
        return capsys.readouterr().out

    recorded = text("--vector", str(windowed))
    assert recorded == text("--vector", str(plain), "--positions", "prompt")
    assert recorded != text("--vector", str(plain))  # "all" steers differently
    assert text("--vector", str(windowed), "--positions", "all") == text("--vector", str(plain))
