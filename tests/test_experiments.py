"""Experiment modules on a tiny model: JSON against the documented schemas, plots, resume,
and clear errors for bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest

from mlux import HookedModel, extract_steering_vectors
from mlux.behavior import behavior_rates
from mlux.cli import main as mlux_main
from mlux.experiments import alpha_calibration, layer_sweep, strength_sweep
from mlux.experiments.common import ResultFile
from mlux.testing import save_tiny_model

SCHEMAS = Path(__file__).resolve().parents[1] / "mlux" / "experiments" / "schemas"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("exp")
    model = save_tiny_model(root / "model", "llama")
    (root / "pos.txt").write_text("w15 w16 w7\nw8 w9\nw10 w11 w12\n")
    (root / "neg.txt").write_text("w30 w31\nw32 w33 w34\nw35\n")
    (root / "prompts.txt").write_text("w40 w41\nw42\n")
    (root / "empty.txt").write_text("\n\n")
    return root, str(model)


def common_args(root, model, out, contrast=True):
    files = ["--positive", str(root / "pos.txt"), "--negative", str(root / "neg.txt")]
    return ["--model", model, *(files if contrast else []), "--prompts",
            str(root / "prompts.txt"), "--behavior", "contains:w20,w21,w22,w23", "--samples",
            "1", "--max-tokens", "6", "--output", str(out)]


def validate(path, kind):
    data = json.loads(Path(path).read_text())
    jsonschema.validate(data, json.loads((SCHEMAS / f"{kind}.schema.json").read_text()))
    assert data["model"]["num_layers"] == 4 and data["finished"]
    return data


def is_png(path):
    return Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("verb", "kind", "extra"),
    [
        ("layer-sweep", "layer_sweep", ["--alpha", "0.5", "--layers", "1,2"]),
        ("calibrate", "alpha_calibration", ["--layers", "residuals_1-2", "--alphas", "1,100"]),
        ("strength-sweep", "strength_sweep", ["--layer", "1", "--strengths=-3,0,3",
                                              "--instruction", "w20"]),
    ],
)
def test_cli_writes_schema_valid_json_and_a_png(setup, tmp_path, verb, kind, extra, capsys):
    root, model = setup
    out = tmp_path / f"{kind}.json"
    assert mlux_main([verb, *common_args(root, model, out), *extra]) == 0
    data = validate(out, kind)
    assert is_png(out.with_suffix(".png"))
    assert data["settings"]
    assert "wrote" in capsys.readouterr().out.lower()


def test_python_module_entry_point(setup, tmp_path):
    root, model = setup
    out = tmp_path / "ls.json"
    assert layer_sweep.main([*common_args(root, model, out), "--layers", "0"]) == 0
    validate(out, "layer_sweep")


def test_interrupted_layer_sweep_resumes_without_redoing_cells(setup, tmp_path):
    root, model = setup
    hooked = HookedModel.from_pretrained(model)
    pos, neg = ["w15 w16", "w8 w9"], ["w30 w31", "w32"]
    calls = {"n": 0, "fail_at": 6}

    def scorer(text):
        calls["n"] += 1
        if calls["n"] == calls["fail_at"]:
            raise KeyboardInterrupt
        return "w20" in text

    settings = {"run": 1}
    out = tmp_path / "resume.json"
    kw = dict(layers=[0, 1, 2], samples_per_prompt=1, max_tokens=5)
    with pytest.raises(KeyboardInterrupt):
        layer_sweep.layer_sweep(hooked, (pos, neg), ["w40"], scorer, **kw,
                                result=ResultFile(out, "layer_sweep", hooked, settings))
    saved = json.loads(out.read_text())["cells"]
    assert set(saved) == {"baseline", "layer_0", "layer_1"}  # finished cells survived
    calls.update(n=0, fail_at=-1)
    resumed = layer_sweep.layer_sweep(hooked, (pos, neg), ["w40"], scorer, **kw,
                                      result=ResultFile(out, "layer_sweep", hooked, settings))
    assert calls["n"] == 2  # only layer 2's two cells ran again
    calls.update(n=0)
    fresh = layer_sweep.layer_sweep(hooked, (pos, neg), ["w40"], scorer, **kw)
    assert resumed.rows == fresh.rows


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--layers", "residuals_9"], "out of range"),
        (["--prompts", "EMPTY"], "holds no prompts"),
        (["--prompts", "MISSING"], "does not exist"),
        (["--behavior", "no_such_module:fn"], "unknown behaviour"),
        (["--behavior", "tests.test_experiments:raising_behavior"], "raised ValueError"),
        (["--output", "/nonexistent-dir/out.json"], "nonexistent-dir"),
    ],
)
def test_bad_input_is_one_clear_error(setup, tmp_path, capsys, extra, message):
    root, model = setup
    args = common_args(root, model, tmp_path / "x.json") + ["--layers", "1"]
    for i, a in enumerate(extra):
        extra[i] = {"EMPTY": str(root / "empty.txt"), "MISSING": str(root / "nope.txt")}.get(a, a)
    assert mlux_main(["layer-sweep", *args, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def raising_behavior(text):
    raise ValueError("boom")


def test_result_file_refuses_other_settings(setup, tmp_path):
    root, model = setup
    hooked = HookedModel.from_pretrained(model)
    ResultFile(tmp_path / "r.json", "layer_sweep", hooked, {"a": 1})
    with pytest.raises(ValueError, match="other settings.*--fresh"):
        ResultFile(tmp_path / "r.json", "layer_sweep", hooked, {"a": 2})
    assert ResultFile(tmp_path / "r.json", "layer_sweep", hooked, {"a": 2}, fresh=True)


def test_sweeps_share_one_calling_convention(setup):
    """(hooked, vector, prompts, scorer, ...): a ready vector or a contrast to extract from."""
    root, model = setup
    hooked = HookedModel.from_pretrained(model)
    contrast = (["w15 w16", "w8"], ["w30", "w31 w32"])
    scorer = lambda t: "w20" in t  # noqa: E731
    kw = dict(samples_per_prompt=1, max_tokens=4)
    vec = extract_steering_vectors(hooked, *contrast, [1, 2])
    rows = strength_sweep.strength_sweep(hooked, vec, ["w40"], scorer, strengths=[0.0, 5.0],
                                         **kw)
    assert [r["strength"] for r in rows] == [0.0, 5.0]
    assert {"behavior_rate", "coherence", "samples", "control_rate"} <= set(rows[0])
    # a contrast is extracted where the sweep steers: the same vector gives the same rows
    assert strength_sweep.strength_sweep(hooked, contrast, ["w40"], scorer, layers=[1, 2],
                                         strengths=[0.0, 5.0], **kw) == rows
    best = strength_sweep.find_best_layers(hooked, contrast, ["w40"], scorer, layers=[0, 1],
                                           **kw)
    assert len(best["best_layers"]) == 2 and set(best["per_layer"]) == {0, 1}
    ls = layer_sweep.layer_sweep(hooked, vec, ["w40"], scorer, alpha=0.5, **kw)
    assert [r["layer"] for r in ls.rows] == [1, 2]  # a ready vector: its own layers
    assert layer_sweep.layer_sweep(hooked, contrast, ["w40"], scorer, layers=[1],
                                   method="pca", **kw).rows[0]["layer"] == 1
    cal = alpha_calibration.alpha_calibration(hooked, vec.select([1]), ["w40"], scorer,
                                              alphas=[1.0], **kw)
    assert [r["layer"] for r in cal.layers] == [1] and "rate" in cal.layers[0]["sweep"][0]
    assert alpha_calibration.THRESHOLDS


def test_chat_formats_every_prompt_with_the_template(setup):
    root, model = setup
    hooked = HookedModel.from_pretrained(model)
    vec = {1: extract_steering_vectors(hooked, ["w15 w16"], ["w30"], [1])[1]}
    kw = dict(alphas=[0.0, 4.0], samples_per_prompt=1, max_tokens=4, keep_tokens=True)
    chat = behavior_rates(hooked, vec, ["w40 w41", "w42"], None, chat=True, **kw)
    ids = behavior_rates(hooked, vec, [hooked.encode_chat(p) for p in ["w40 w41", "w42"]],
                         None, **kw)
    plain = behavior_rates(hooked, vec, ["w40 w41", "w42"], None, **kw)
    assert [c.token_ids for c in chat] == [c.token_ids for c in ids]
    assert [c.token_ids for c in chat] != [c.token_ids for c in plain]


@pytest.mark.parametrize("extra", [["--chat"], ["--method", "pca"]])
def test_cli_chat_and_method(setup, tmp_path, extra):
    root, model = setup
    out = tmp_path / "ls.json"
    assert mlux_main(["layer-sweep", *common_args(root, model, out), "--layers", "1", *extra]) == 0
    settings = validate(out, "layer_sweep")["settings"]
    assert settings["chat"] == ("--chat" in extra)
    assert settings["method"] == ("pca" if "pca" in extra else "mean_diff")


def test_cli_sweeps_a_saved_vector(setup, tmp_path):
    root, model = setup
    hooked = HookedModel.from_pretrained(model)
    vec = extract_steering_vectors(hooked, ["w15 w16"], ["w30"], [1, 2])
    path = vec.save(tmp_path / "v.safetensors")
    out = tmp_path / "cal.json"
    assert mlux_main(["calibrate", *common_args(root, model, out, contrast=False), "--vector",
                      str(path), "--alphas", "1,100"]) == 0
    data = validate(out, "alpha_calibration")
    assert data["settings"]["vector"] == str(path) and "positive" not in data["settings"]
    assert set(data["summary"]["max_safe_alpha"]) == {"1", "2"}


def test_layer_sweep_from_unmeasurable_rates_exits_2_without_best_layers(setup, tmp_path,
                                                                         monkeypatch, capsys):
    root, model = setup
    (tmp_path / "undecided.py").write_text("def never(text):\n    return None\n")
    monkeypatch.chdir(tmp_path)
    args = [*common_args(root, model, tmp_path / "x.json"), "--layers", "1-2"]
    assert mlux_main(["layer-sweep", *args, "--behavior", "undecided:never"]) == 2
    captured = capsys.readouterr()
    assert "best layers" not in captured.out and "n/a (n=0)" in captured.out
    assert captured.err.splitlines()[-1].startswith(
        "mlux layer-sweep: error: the behaviour function undecided:never labelled none")


def test_layer_sweep_table_has_intervals_perplexity_and_a_few_samples_warning(setup, tmp_path,
                                                                              capsys):
    root, model = setup
    args = common_args(root, model, tmp_path / "l.json")
    assert mlux_main(["layer-sweep", *args, "--layers", "1-2", "--behavior", "contains:w20"]) == 0
    captured = capsys.readouterr()
    assert "unsteered ppl" in captured.out and "ppl -a / +a" in captured.out
    assert re.search(r"^\s+1 \|.*n=2 .*\| [\d.e+]+ / [\d.e+]+", captured.out, flags=re.M)
    assert "mlux layer-sweep: warning: only 2 of 2 samples" in captured.err
    cell = json.loads((tmp_path / "l.json").read_text())["cells"]["layer_1"]
    assert cell["perplexity_positive"] > 0 and cell["labelled_positive"] == 2


def test_calibrate_says_when_c_is_only_a_lower_bound(setup, tmp_path, capsys):
    root, model = setup
    out = tmp_path / "c.json"
    assert mlux_main(["calibrate", *common_args(root, model, out), "--layers", "1",
                      "--alphas", "0.001,0.002"]) == 0
    text = capsys.readouterr().out
    assert "is a lower bound: no layer degenerated" in text
    assert re.search(r"^\s+1 \|.*never, up to 0.002 .*\| +>=0.002 \| >=", text, flags=re.M)
    assert json.loads(out.read_text())["summary"]["lower_bound"] is True
