"""The real `sae-lens` package loads the SAELens folders mlux writes and encodes as mlux does
(experiments/check_saelens.py). sae-lens pulls torch, so it is optional: skipped unless
`sae_lens` imports here or $MLUX_SAELENS_PYTHON names a Python where it does."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "check_saelens.py"
PYTHON = os.environ.get("MLUX_SAELENS_PYTHON") or (
    sys.executable if importlib.util.find_spec("sae_lens") else None)


@pytest.mark.skipif(PYTHON is None or not Path(PYTHON).exists(),
                    reason="sae_lens is not installed (set MLUX_SAELENS_PYTHON to a Python "
                           "that has it)")
def test_sae_lens_loads_what_mlux_writes(tmp_path):
    out = tmp_path / "check.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--saelens-python", str(PYTHON),
                           "--out", str(out), "--toy-sae", str(tmp_path / "none")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 9 and all(r["same_active_features"] for r in rows)
    assert all(r["max_abs_diff_features"] <= 1e-5 * max(1.0, r["feature_scale"])
               for r in rows), rows
