"""One entry style for every verb of `mlux` and every `python -m` alias (`mlux.entry`): a user
error is one line `mlux <verb>: error: ...` and exit code 2, Ctrl-C exit code 130 without a
traceback, a bug keeps its traceback."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import werkzeug.serving

from mlux import cli, demo, entry
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
    ],
)
def test_user_errors_are_one_line_and_exit_2(argv, verb, message, capsys):
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
