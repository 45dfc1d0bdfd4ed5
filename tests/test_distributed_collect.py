"""Data-parallel `mlux collect` (issue 17): 2 ranks on localhost with `mlx.launch --backend ring`
split the chunks; rank 0 writes every shard and the manifest. The result equals a single-process
collection shard for shard (the same bytes, compared per category, chunk and hook point), and a
launch killed mid-collection (one rank SIGKILLed, the launcher then stops the other) resumes to
the same result.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from mlux.collect import Manifest, read_shard_tensor
from mlux.testing import save_tiny_model

WORKER = Path(__file__).with_name("dist_collect_worker.py")
LAUNCH = shutil.which("mlx.launch")
TIMEOUT = 90
CATS = {"a": 7, "b": 5}  # prompts per category; shard_size 2: 4 + 3 chunks

pytestmark = pytest.mark.skipif(LAUNCH is None,
                                reason="mlx.launch is not on PATH (it comes with the mlx package)")


def _run(cmd: list[str], cwd: Path, *, ok: bool = True) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{' '.join(cmd)} timed out after {TIMEOUT} s:\n{e.stderr}")
    if ok and proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def _launch(die: str, config: Path, cwd: Path, *, ok: bool = True) -> subprocess.CompletedProcess:
    return _run([LAUNCH, "--backend", "ring", "-n", "2", "--python", sys.executable, str(WORKER),
                 die, str(config)], cwd, ok=ok)


def _config(root: Path, model: Path, data: Path, name: str) -> Path:
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"name": str(model), "activation_layers": ["residuals_all", "mlp_1"]},
        "inference": {"batch_size": 2, "positions": ["last", "mean", "all"],
                      "max_new_tokens": 2},
        "data": {"path": str(data)},
        "output": {"result_dir": str(root / name), "shard_size": 2},
    }))
    return path


def _contents(result_dir: Path) -> dict:
    """(category, chunk index, hook) -> the chunk's tensors, plus its generations, from disk."""
    m = Manifest.load(result_dir)
    out = {}
    for c in m.chunks():
        for hook, s in c["shards"].items():
            names = s["tensors"]
            out[(c["category"], c["index"], hook)] = (
                s["sha256"], {k: read_shard_tensor(result_dir / s["path"], k) for k in names})
        gen = json.loads((result_dir / c["generations"]).read_text())
        out[(c["category"], c["index"], "generations")] = gen
    return out


def _assert_same(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for key, w in want.items():
        if key[2] == "generations":
            assert got[key] == w, key
            continue
        assert got[key][0] == w[0], key  # the same bytes
        for k, x in w[1].items():
            np.testing.assert_array_equal(got[key][1][k], x, err_msg=f"{key} {k}")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist_collect")
    model = save_tiny_model(root / "model", "llama")
    data = root / "data.jsonl"
    data.write_text("".join(
        json.dumps({"text": " ".join(f"w{7 + (i * 7 + j * 3 + 10 * k) % 50}"
                                     for j in range(2 + (i * 3) % 6)), "category": c}) + "\n"
        for k, (c, n) in enumerate(CATS.items()) for i in range(n)))
    single = _config(root, model, data, "single")
    _run([sys.executable, str(WORKER), "none", str(single)], root)
    return root, model, data, _contents(root / "single")


def test_two_ranks_equal_one_process(setup):
    root, model, data, want = setup
    config = _config(root, model, data, "two")
    proc = _launch("none", config, root)
    assert proc.stdout.count("chunks written") == 1  # rank 0 speaks for the launch
    m = Manifest.load(root / "two")
    assert m.data["complete"] and len(m.chunks()) == 7
    _assert_same(_contents(root / "two"), want)
    assert json.loads((root / "two" / "manifest.json").read_text())["chunks"] == json.loads(
        (root / "single" / "manifest.json").read_text())["chunks"]


def test_killed_rank_resumes_to_the_same_result(setup):
    root, model, data, want = setup
    config = _config(root, model, data, "killed")
    proc = _launch("1:2", config, root, ok=False)  # rank 1 dies at its 2nd chunk (round 2)
    # (mlx.launch itself exits 0 here; it reports the ranks that died)
    assert "Node with rank 1 was killed" in proc.stderr or "rank 1" in proc.stderr, proc.stderr
    m = Manifest.load(root / "killed")
    assert not m.data["complete"] and len(m.chunks()) == 2  # round 1 was written
    proc = _launch("none", config, root)
    assert "5 chunks written, 2 already done" in proc.stdout
    _assert_same(_contents(root / "killed"), want)
