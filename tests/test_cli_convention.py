"""One command-line convention across verbs (issue 26, items 9-13 and 16-17): `--model`
everywhere, `--layers`/`--layer`, unknown options named with a "did you mean", option help with
defaults, `--chat` refused where it would change nothing, a closed stdout ends quietly, bad values
refused before any output, clear errors for a folder as a vector and for GGUF / missing models."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlux.cli import VERBS, main
from mlux.collect import Manifest, collect, config_from_dict
from mlux.collect.cli import VERBS as COLLECT_VERBS
from mlux.entry import EXIT_BROKEN_PIPE, HelpFormatter
from mlux.experiments import strength_sweep
from mlux.experiments.alpha_calibration import start_ranges
from mlux.loading import load_sharded
from mlux.model import HookedModel
from mlux.testing import save_tiny_model


def _run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_info_takes_model_as_option_and_positional(capsys: pytest.CaptureFixture) -> None:
    code, by_option, err = _run(capsys, "info", "--model", "mlux-toy")
    assert code == 0 and err == ""
    assert _run(capsys, "info", "mlux-toy") == (0, by_option, "")
    assert _run(capsys, "info") == (0, by_option, "")  # the default is the built-in model
    code, _, err = _run(capsys, "info", "mlux-toy", "--model", "mlux-toy-4bit")
    assert code == 2 and err.startswith("mlux info: error: two models given")


def test_every_verb_that_loads_a_model_takes_model() -> None:
    for verb in VERBS:
        if verb.name in ("collect", "train-sae", "analyze-layers", "bake"):
            continue  # collection reads model.name from its config; bake: its own helper
        parser = argparse.ArgumentParser()
        verb.add_arguments(parser)
        options = {o for a in parser._actions for o in a.option_strings}
        assert "--model" in options, verb.name


@pytest.mark.parametrize("flag", ["--layers", "--layer"])
def test_strength_sweep_takes_layers_and_layer(flag: str) -> None:
    parser = argparse.ArgumentParser()
    strength_sweep.add_arguments(parser)
    assert parser.parse_args([flag, "1-2"]).layers == "1-2"


@pytest.mark.parametrize(("argv", "unknown", "hint"), [
    (["info", "--modle", "mlux-toy"], "--modle", "did you mean --model?"),
    (["generate", "the", "--alpah=2"], "--alpah=2", "did you mean --alpha?"),
    (["collect", "--config", "c.yaml", "--dryrun"], "--dryrun", "did you mean --dry-run?"),
])
def test_unknown_option_names_verb_and_suggests(argv: list[str], unknown: str, hint: str,
                                                capsys: pytest.CaptureFixture) -> None:
    code, out, err = _run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith(f"mlux {argv[0]}: error: unrecognized arguments: {unknown} (")
    assert hint in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("verb", COLLECT_VERBS, ids=lambda v: v.name)
def test_collection_verbs_document_every_option(verb: object) -> None:
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter)
    verb.add_arguments(parser)  # type: ignore[attr-defined]
    formatter = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        text = formatter._get_help_string(action) or ""
        assert text.strip(), f"{verb.name} {action.option_strings}: no help"  # type: ignore
        if action.nargs != 0:  # takes a value: its default is shown, or it is required
            assert "default" in text or action.required, (verb.name, action.option_strings, text)


def test_chat_refused_for_a_model_without_a_real_template(capsys: pytest.CaptureFixture,
                                                          tmp_path: Path) -> None:
    code, out, err = _run(capsys, "generate", "the", "--chat", "--max-tokens", "2")
    assert code == 2 and out == ""
    assert err.strip() == ("mlux generate: error: --chat: model 'mlux-toy' has no chat template "
                           "that adds anything (it only joins the messages' text); leave --chat "
                           "out")
    code, _, err = _run(capsys, "extract", "--chat", "--layers", "1", "-o",
                        str(tmp_path / "v.safetensors"))
    assert code == 2 and "--chat: model 'mlux-toy'" in err
    assert not (tmp_path / "v.safetensors").exists()
    tiny = save_tiny_model(tmp_path / "tiny", "llama")  # a real role template: accepted
    code, out, _ = _run(capsys, "generate", "w9", "--model", str(tiny), "--chat",
                        "--max-tokens", "2")
    assert code == 0 and out.strip()


@pytest.mark.parametrize("verb", [["info"], ["demo", "--max-tokens", "2"]])
def test_closed_stdout_exits_quietly(verb: list[str]) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "mlux", *verb], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=os.environ.copy())
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # like `| head -0`: closed before the verb writes a line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == EXIT_BROKEN_PIPE
    assert err.strip() in ("", "mlux demo: warning: OpenBLAS is not preloaded") or \
        "Broken pipe" not in err and "Traceback" not in err, err


def test_values_checked_before_any_output(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    code, out, err = _run(capsys, "generate", "the", "--top-p", "0", "--baseline")
    assert code == 2 and out == ""
    assert "argument --top-p: must be in (0, 1], got 0" in err
    code, out, err = _run(capsys, "generate", "the", "--vector", str(tmp_path), "--baseline")
    assert code == 2 and out == ""
    assert f"{tmp_path} is a folder, not a steering vector file" in err


def test_gguf_and_missing_models_are_one_clear_line(capsys: pytest.CaptureFixture,
                                                    tmp_path: Path) -> None:
    gguf_model = tmp_path / "model.gguf"
    gguf_model.write_bytes(b"GGUF" + bytes(60))
    code, _, err = _run(capsys, "info", "--model", str(gguf_model))
    assert code == 2 and "GGUF model file" in err and "mlx-lm cannot load GGUF" in err
    assert len(err.strip().splitlines()) == 1
    for loader in (HookedModel.from_pretrained, load_sharded):
        with pytest.raises(ValueError, match="model 'path/to/model' not found"):
            loader("path/to/model")
    code, _, err = _run(capsys, "generate", "the", "--model", "path/to/model")
    assert code == 2 and err.startswith("mlux generate: error: model 'path/to/model' not found")


def test_calibration_start_range_never_exceeds_the_layer_limit() -> None:
    # issue 26.12: layer 0 stood 14.5 while the median c / norm suggested 8.06-16.1
    rows = [{"layer": 0, "max_safe_alpha": 14.5, "vector_norm": 2.0},
            {"layer": 1, "max_safe_alpha": 32.2, "vector_norm": 1.0},
            {"layer": 2, "max_safe_alpha": 64.4, "vector_norm": 0.5}]
    ranges = start_ranges(rows)
    assert ranges == {0: [3.625, 7.25], 1: [8.05, 16.1], 2: [16.1, 32.2]}
    assert all(ranges[r["layer"]][1] <= r["max_safe_alpha"] for r in rows)


def test_train_sae_settings_come_from_the_collection(tmp_path: Path) -> None:
    model = save_tiny_model(tmp_path / "m", "llama")
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps({"text": f"w{8 + i} w9"}) + "\n" for i in range(4)))
    cfg = config_from_dict({"model": {"name": str(model), "activation_layers": "residuals_1"},
                            "data": {"path": str(data)},
                            "output": {"result_dir": str(tmp_path / "out")},
                            "sae": {"k": 3, "max_steps": 7, "expansion": 2}})
    result = collect(cfg, progress=False, echo=lambda s: None)
    assert Manifest.load(result.result_dir).sae_settings() == cfg.sae
    bare = cfg.replace("output", result_dir=str(tmp_path / "bare"))
    plain = config_from_dict({**bare.to_dict(), "sae": {}})
    collect(plain.replace("output", result_dir=str(tmp_path / "bare")), progress=False,
            echo=lambda s: None)
    assert Manifest.load(tmp_path / "bare").sae_settings() == plain.sae
