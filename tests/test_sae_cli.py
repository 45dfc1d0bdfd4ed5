"""`mlux features` and `mlux sae-eval` print what the library computes; bad input is one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save_file
from test_sae_steering import HOOK, PROMPTS, make_sae

from mlux.cli import main
from mlux.collect import ActivationStore
from mlux.model import HookedModel
from mlux.sae import evaluate_sae, spliced_metrics
from mlux.sae.reading import read_features


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    hooked = HookedModel.from_pretrained("mlux-toy")
    sae = make_sae(hooked)
    return hooked, sae, sae.save(tmp_path_factory.mktemp("s") / "sae")


def test_features_verb(saved, capsys):
    hooked, sae, folder = saved
    args = ["features", PROMPTS[0], "--sae", str(folder), "--model", "mlux-toy", "--k", "3"]
    assert main([*args, "--max-tokens", "3", "--clamp", "7=15", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    want = read_features(hooked, sae, PROMPTS[0], k=3, max_tokens=3, clamp=(7, 15.0))
    assert got["tokens"] == [r.to_json() for r in want] and got["hook"] == "residuals_2"
    assert main(args) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("top 3 features per token at residuals_2 (jumprelu, 48 features)")
    assert len(table) == 1 + len(hooked.tokenize([PROMPTS[0]]).tokens[0])
    assert main([*args, "--clamp", "seven"]) == 2
    assert capsys.readouterr().err == ("mlux features: error: --clamp must be FEATURE=VALUE "
                                       "such as 17=12.5, got 'seven'\n")


def test_sae_eval_verb(saved, capsys, tmp_path):
    hooked, sae, folder = saved
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps({"text": p}) + "\n" for p in PROMPTS))
    assert main(["sae-eval", "--sae", str(folder), "--model", "mlux-toy", "--prompts",
                 str(data), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    want = spliced_metrics(hooked, sae, PROMPTS)
    assert got == pytest.approx(want, rel=1e-5)
    acts = np.asarray(hooked.capture(PROMPTS, [HOOK])[HOOK]).reshape(-1, hooked.hidden_size)
    save_file({"last": acts}, str(tmp_path / "s.safetensors"))
    assert main(["sae-eval", "--sae", str(folder), "--model", "mlux-toy", "--prompts",
                 str(data), "--shards", str(tmp_path / "s.safetensors"), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    stored = evaluate_sae(sae, ActivationStore([tmp_path / "s.safetensors"]))
    assert got == pytest.approx({**stored, **want}, rel=1e-5) and got["rows"] == len(acts)
    assert main(["sae-eval", "--sae", str(tmp_path), "--prompts", str(data)]) == 2
    assert "cfg.json is missing" in capsys.readouterr().err
