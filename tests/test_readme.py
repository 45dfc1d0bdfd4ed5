"""The README's `python` and `bash` blocks, run verbatim in order on the built-in model (issue 26,
items 15-17). The rules (what is substituted, skipped or shortened) are stated in the README's
section "Every example here runs (tested)", and the substitution table is read from there."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCE = re.compile(r"^```(python|bash)\n(.*?)^```", re.MULTILINE | re.DOTALL)
TABLE_ROW = re.compile(r"^\| `(.+?)` \| `(.+?)` \|$", re.MULTILINE)
SECTION = "## Every example here runs (tested)"
# Blocks that need a running server or several ranks (stated in the README).
NEEDS_SERVER_OR_RANKS = ("mlux serve", "mlux explore", "OpenAI(", "mlx.launch",
                         "mx.distributed.init()")
LONG_VERB = re.compile(r"^(\s*mlux (demo|layer-sweep|strength-sweep|calibrate|search)\b.*?)"
                       r"(\s*#.*)?$")
SHORTEN = {"demo": " --max-tokens 4", "layer-sweep": " --samples 1 --max-tokens 4",
           "strength-sweep": " --samples 1 --max-tokens 4",
           "calibrate": " --samples 1 --max-tokens 4",
           "search": " --trials 4 --samples 1 --max-tokens 4"}
SHORTER_CONFIG = (("epochs: 30", "epochs: 2"),
                  ("max_samples_per_category: null", "max_samples_per_category: 32"))
TOKEN_IDS = re.compile(r"^\[\[?\d+, \d+, \d+", re.MULTILINE)  # a printed list of token ids
# `mlux` and mlx-lm's console scripts, as this interpreter's modules (no install needed).
PRELUDE = f"""set -euo pipefail
mlux() {{ "{sys.executable}" -m mlux "$@"; }}
mlx_lm.generate() {{ "{sys.executable}" -m mlx_lm.generate "$@"; }}
"""


def _substitutions(text: str) -> list[tuple[str, str]]:
    section = text[text.index(SECTION):]
    section = section[:section.index("\n## ", 1)]
    pairs = TABLE_ROW.findall(section)
    assert pairs, "the README's substitution table is missing"
    return pairs


def _blocks() -> list[tuple[int, str, str]]:
    text = README.read_text(encoding="utf-8")
    subs = _substitutions(text)
    out = []
    for match in FENCE.finditer(text):
        lang, code = match.group(1), match.group(2)
        for shown, run_as in subs:
            code = code.replace(shown, run_as)
        out.append((text[:match.start()].count("\n") + 1, lang, code))
    return out


def _bash(code: str) -> str:
    """The block as run: install and test-suite commands dropped, sweeps shortened."""
    lines = []
    for line in code.replace("\\\n", " ").splitlines():  # a continued command is one line
        parts = [p for p in line.split(" && ") if not re.match(
            r"\s*(python -m )?pip install|.*\bpytest\b", p)]
        line = " && ".join(parts)
        line = LONG_VERB.sub(lambda m: m.group(1) + SHORTEN[m.group(2)] + (m.group(3) or ""),
                             line)
        lines.append(line)
    return PRELUDE + "\n".join(lines) + "\n"


def _skipped(code: str) -> bool:
    return any(marker in code for marker in NEEDS_SERVER_OR_RANKS)


def test_readme_blocks_are_found_and_rules_apply() -> None:
    blocks = _blocks()
    langs = {lang for _, lang, _ in blocks}
    assert langs == {"python", "bash"} and len(blocks) >= 10
    assert not any("mlx-community/" in code for _, _, code in blocks if not _skipped(code))
    script = _bash("pip install . && mlux demo\nmlux calibrate --output r.json  # note\n")
    assert "pip install" not in script and "mlux calibrate --output r.json --samples 1" in script


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh folder with the repository's configs, the toy config shortened (README rules)."""
    root = tmp_path_factory.mktemp("readme")
    shutil.copytree(ROOT / "configs", root / "configs")
    toy = root / "configs" / "models" / "mlux-toy.yaml"
    text = toy.read_text()
    for shown, run_as in SHORTER_CONFIG:
        assert shown in text
        text = text.replace(shown, run_as)
    toy.write_text(text)
    return root


def test_readme_blocks_run(workdir: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    ran = 0
    for line, lang, code in _blocks():
        if _skipped(code):
            continue
        if lang == "python":
            cmd = [sys.executable, "-c", code]
        else:
            cmd = ["bash", "-c", _bash(code)]
        proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, (f"README block at line {line} ({lang}) failed:\n{code}\n"
                                      f"--- stdout\n{proc.stdout[-2000:]}\n"
                                      f"--- stderr\n{proc.stderr[-3000:]}")
        assert "Traceback" not in proc.stderr, (line, proc.stderr[-3000:])
        assert not TOKEN_IDS.search(proc.stdout), (line, "prints token ids, not text",
                                                    proc.stdout[-1000:])
        ran += 1
    assert ran >= 7
    assert (workdir / "results" / "happy.safetensors").is_file()
    assert (workdir / "results" / "toy-happy" / "config.json").is_file()
    assert not [p.name for p in workdir.iterdir() if p.name not in ("configs", "results")]
