"""One entry style for every verb of `mlux` and every `python -m` alias (`mlux.entry`): a user
error is one line `mlux <verb>: error: ...` and exit code 2, Ctrl-C exit code 130 without a
traceback, a bug keeps its traceback."""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from pathlib import Path

import pytest
import werkzeug.serving

from mlux import HookedModel, cli, demo, entry
from mlux import __version__ as mlux_version
from mlux.collect import cli as collect_cli
from mlux.experiments import alpha_calibration, layer_sweep, steering_explorer, strength_sweep
from mlux.explorer import launch

ROOT = Path(__file__).resolve().parents[1]


def one_error_line(capsys: pytest.CaptureFixture[str], verb: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"mlux {verb}: error: "), err
    return err


@pytest.mark.parametrize(
    ("argv", "verb", "message"),
    [
        (["layer-sweep", "--alpha", "strong"], "layer-sweep", "invalid float value: 'strong'"),
        (["calibrate", "--alphas", "1,big"], "calibrate", "--alphas must be comma-separated"),
        (["strength-sweep", "--method", "ica"], "strength-sweep", "invalid choice: 'ica'"),
        (["info", "/nonexistent/model"], "info", "/nonexistent/model"),
        (["demo", "--feature", "colour"], "demo", "unknown feature 'colour'"),
        (["serve", "--port", "eighty"], "serve", "invalid int value"),
        (["explore", "--port", "70000"], "explore", "--port must be in 0..65535"),
        (["analyze-layers", "--result-dir", "/nonexistent"], "analyze-layers", "manifest"),
        (["layer-sweep", "--samples", "0"], "layer-sweep", "--samples: must be an integer >= 1"),
        (["strength-sweep", "--max-tokens", "-3"], "strength-sweep", "must be an integer >= 1"),
        (["layer-sweep", "--temperature", "-1"], "layer-sweep", "--temperature: must be >= 0"),
        (["layer-sweep", "--top-k", "0"], "layer-sweep", "--top-k: must be an integer >= 1"),
        (["demo", "--seed", "-1"], "demo", "--seed: must be an integer >= 0, got -1"),
        (["serve", "--port", "-5"], "serve", "--port: must be an integer in 0..65535, got -5"),
        (["serve", "--port", "99999"], "serve", "in 0..65535, got 99999"),
        (["strength-sweep", "--strengths", "-4,-2"], "strength-sweep",
         "must be joined with '=': --strengths=-4,-2"),
        (["generate", "the", "--alpha", "-2"], "generate", "give --vector FILE too"),  # -2 parsed
        (["calibrate", "--alphas", "1,inf"], "calibrate", "--alphas must be finite"),
        (["layer-sweep", "--positive", "pos.txt"], "layer-sweep",
         "--positive needs --negative too"),
        (["extract", "-o", "v.safetensors", "--negative", "n.txt"], "extract",
         "--negative needs --positive too"),
        (["strength-sweep", "--vector", "v.safetensors", "--positive", "p", "--negative", "n"],
         "strength-sweep", "--vector and --positive/--negative are alternatives"),
        (["layer-sweep", "--plot", "/nonexistent-dir/p.png"], "layer-sweep",
         "folder /nonexistent-dir does not exist"),
        (["extract", "-o", "/nonexistent-dir/v.safetensors"], "extract", "does not exist"),
        (["extract", "-o", "v.npy"], "extract", "--output must end in .safetensors or .gguf"),
        (["extract"], "extract", "the following arguments are required: -o/--output"),
        (["generate", "the", "--alpha", "2"], "generate", "give --vector FILE too"),
        (["generate", "the", "--vector", "/nonexistent.safetensors"], "generate",
         "/nonexistent.safetensors"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(argv, verb, message, capsys, monkeypatch):
    def no_model(*args, **kwargs):  # the cheap checks come before the model loads
        raise AssertionError("the model was loaded before the options were checked")

    if verb not in ("info", "demo", "explore", "analyze-layers", "generate"):
        monkeypatch.setattr(HookedModel, "from_pretrained", no_model)
    assert cli.main(argv) == 2
    assert message in one_error_line(capsys, verb)


def test_bad_command_is_one_line(capsys):
    assert cli.main(["no-such-verb"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mlux: error: argument COMMAND: invalid choice") and err.count("\n") == 1


@pytest.mark.parametrize(
    ("main", "argv", "verb"),
    [
        (layer_sweep.main, ["--alpha", "x"], "layer-sweep"),
        (alpha_calibration.main, ["--alphas", ","], "calibrate"),
        (strength_sweep.main, ["--strengths", "a"], "strength-sweep"),
        (steering_explorer.main, ["--port", "-1"], "explore"),
        (launch.main, ["--max-tokens", "0"], "explore"),
        (collect_cli.main, ["train-sae"], "train-sae"),
    ],
)
def test_python_m_aliases_report_errors_the_same_way(main, argv, verb, capsys):
    assert main(argv) == 2
    one_error_line(capsys, verb)


def test_python_m_mlux_without_arguments_lists_the_verbs():
    proc = subprocess.run([sys.executable, "-m", "mlux"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout.startswith("usage: mlux")
    for verb in cli.VERBS:
        assert f"    {verb.name}" in proc.stdout
    assert "mlux extract --layers 2 --output happy.safetensors" in proc.stdout  # examples


def test_version_and_help_return_instead_of_exiting(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"mlux {mlux_version}"
    assert cli.main(["generate", "--help"]) == 0
    assert "usage: mlux generate" in capsys.readouterr().out


MY_VERBS = ("demo", "extract", "generate", "layer-sweep", "calibrate", "strength-sweep", "serve")


@pytest.mark.parametrize("name", MY_VERBS)
def test_help_shows_every_flag_with_help_and_default_and_examples_verbatim(name, capsys):
    verb = next(v for v in cli.VERBS if v.name == name)
    assert verb.main(["--help"], prog=f"mlux {name}") == 0
    text = capsys.readouterr().out
    parser = argparse.ArgumentParser(formatter_class=entry.HelpFormatter)
    verb.add_arguments(parser)
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        assert action.help, f"{action.option_strings} has no help"
        if action.default is not None and action.default is not False:  # shown or said
            assert "default" in parser.formatter_class("x")._get_help_string(action).lower()
        else:
            assert "default" in action.help.lower() or action.required, action.option_strings
    for line in (verb.description or "").splitlines():
        if line.strip().startswith(("mlux ", "python -m")):
            assert line in text.splitlines()  # examples stay on their own lines, unwrapped


@pytest.mark.parametrize("module", ["mlux.cli", "mlux.experiments.layer_sweep"])
def test_exit_code_from_a_real_process(module):
    argv = ["layer-sweep"] if module == "mlux.cli" else []
    proc = subprocess.run([sys.executable, "-m", module, *argv, "--samples", "many"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("mlux layer-sweep: error: argument --samples: invalid int")
    assert proc.stderr.count("\n") == 1 and proc.stdout == ""


def test_ctrl_c_exits_130_without_traceback(monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "run_demo", interrupted)
    assert cli.main(["demo"]) == 130
    assert capsys.readouterr().err == "mlux demo: interrupted\n"
    monkeypatch.setattr(layer_sweep, "sweep_inputs", interrupted)
    assert layer_sweep.main([]) == 130
    err = capsys.readouterr().err
    assert err.startswith("mlux layer-sweep: interrupted; ") and "resume" in err
    assert "Traceback" not in err


def test_a_bug_keeps_its_traceback(monkeypatch):
    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(demo, "run_demo", broken)
    with pytest.raises(KeyError, match="a bug"):
        cli.main(["demo"])


def test_every_verb_is_a_verb_with_a_unique_name():
    assert all(isinstance(v, entry.Verb) for v in cli.VERBS)
    names = [v.name for v in cli.VERBS]
    assert len(names) == len(set(names)) and {"serve", "explore", "collect"} <= set(names)


def test_entry_imports_nothing_from_mlux():
    """So verbs and `mlux.cli` can both import it without a cycle."""
    tree = ast.parse((ROOT / "mlux" / "entry.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0 and not (node.module or "").startswith("mlux")
        elif isinstance(node, ast.Import):
            assert not any(a.name.startswith("mlux") for a in node.names)


class _FakeServer:
    server_port = 8080

    def __init__(self, apps: list, host: str, app) -> None:
        apps.append((host, app))

    def serve_forever(self) -> None:
        raise KeyboardInterrupt  # what Ctrl-C does to a running server: a clean stop

    def server_close(self) -> None:
        pass


def test_serve_verb_guards_the_host_header_it_binds_for(monkeypatch, capsys):
    apps: list = []
    monkeypatch.setattr(werkzeug.serving, "make_server",
                        lambda host, port, app, threaded: _FakeServer(apps, host, app))
    assert cli.main(["serve"]) == 0
    assert cli.main(["serve", "--host", "0.0.0.0"]) == 0
    assert "WARNING" in capsys.readouterr().err
    (_, local), (_, exposed) = apps
    evil = {"Host": "evil.example"}
    assert local.test_client().get("/v1/models", headers=evil).status_code == 400
    assert local.test_client().get("/v1/models").status_code == 200
    assert exposed.test_client().get("/v1/models", headers=evil).status_code == 200


def test_a_local_path_without_dot_slash_is_a_path_not_a_hub_id(tmp_path, monkeypatch):
    """`org/name` that exists on disk is loaded from disk; only a missing one goes to the hub."""
    from mlux.testing import save_tiny_model

    save_tiny_model(tmp_path / "models" / "tiny", "llama")
    save_tiny_model(tmp_path / "tiny2", "llama")
    monkeypatch.chdir(tmp_path)
    assert HookedModel.from_pretrained("models/tiny").num_layers == 4
    assert HookedModel.from_pretrained("tiny2").num_layers == 4


def test_mostly_unknown_prompt_warns_once_as_one_line(capsys):
    assert cli.main(["generate", "I love this", "--max-tokens", "2"]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "Traceback" not in err
    assert warnings[0].startswith("mlux generate: warning: 3 of the 3 tokens of the prompt "
                                  "'I love this' are unknown")
    assert "mlux.toy.TEST_PROMPTS" in warnings[0]
    assert cli.main(["generate", "the sunny farm", "--max-tokens", "2"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_demo_notes_a_missing_openblas_on_linux_only(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text("7f00 r-xp /site-packages/numpy.libs/libscipy_openblas64_-1.so\n")
    assert "LD_PRELOAD=" in demo.blas_note("linux", str(maps))
    maps.write_text("7f00 r-xp /usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3\n")
    assert demo.blas_note("linux", str(maps)) is None
    assert demo.blas_note("darwin", str(maps)) is None
