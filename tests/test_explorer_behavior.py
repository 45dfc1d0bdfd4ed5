"""The explorer's behaviour sweep on the built-in model agrees with the experiments' numbers."""

from __future__ import annotations

from mlux import HookedModel, extract_steering_vectors
from mlux.behavior import behavior_rates
from mlux.explorer import create_app
from mlux.explorer.behavior_sweep import toy_behavior_sweeps
from mlux.toy import CONTRAST_PROMPTS, TEST_PROMPTS, feature_label


def test_behavior_sweep_mode(tmp_path):
    hooked = HookedModel.from_pretrained("mlux-toy")
    app = create_app(hooked, vectors_dir=tmp_path, sweeps=toy_behavior_sweeps())
    c = app.test_client()
    assert "behavior:happy" in c.get("/api/model").json["sweeps"]
    pos, neg = CONTRAST_PROMPTS["sentiment"]
    vid = c.post("/api/compute", json={"positive": list(pos), "negative": list(neg)}).json["id"]
    r = c.post("/api/sweep", json={"prompt": "the", "vector": {"id": vid}, "alpha": 2.0,
                                   "layers": [0, 2], "mode": "behavior:happy",
                                   "max_tokens": 16})
    assert r.status_code == 200, r.json
    rows = {row["layer"]: row for row in r.json["layers"]}
    # Independent reference: the same cells through the library.
    vectors = extract_steering_vectors(hooked, pos, neg, [0, 2])

    def scorer(text):
        label = feature_label(text, "sentiment")
        return None if label is None else label == "happy"

    cells = behavior_rates(hooked, vectors, TEST_PROMPTS, scorer, alphas=[0.0, 2.0],
                           layers=[0, 2], max_tokens=16, positions="all")
    want = {c.layer: c.rate for c in cells if c.alpha == 2.0}
    assert {k: v["steered"] for k, v in rows.items()} == want
    assert rows[2]["steered"] >= 0.9 and rows[2]["baseline"] < 0.8
    # Each rate carries its 95% Wilson interval (mlux.evaluation), which holds the rate.
    for row in rows.values():
        for key in ("baseline", "steered"):
            lo, hi = row[f"{key}_ci"]
            assert 0 <= lo <= row[key] <= hi <= 1 and row["n"] > 0
    assert hooked.active_hooks() == {}


def test_default_projection_sweep_agrees_with_the_behaviour_sweep(tmp_path):
    """On the page's defaults (its prompt and alpha) the projection sweep reports the vector
    pushing forwards, as the behaviour sweep's rates do: a positive change at every layer where
    the happy rate rises."""
    hooked = HookedModel.from_pretrained("mlux-toy")
    app = create_app(hooked, vectors_dir=tmp_path, sweeps=toy_behavior_sweeps())
    c = app.test_client()
    d = c.get("/api/model").json["defaults"]
    assert len(d["prompt"].split()) > 1  # a one-token prompt gives the readout nothing to read
    vid = c.post("/api/compute", json={"positive": d["positive"],
                                       "negative": d["negative"]}).json["id"]
    body = {"prompt": d["prompt"], "vector": {"id": vid}, "alpha": d["alpha"], "max_tokens": 16,
            "layers": [1, 2, 3]}
    proj = c.post("/api/sweep", json={**body, "mode": "projection"}).json
    rate = c.post("/api/sweep", json={**body, "mode": "behavior:happy"}).json
    for p, r in zip(proj["layers"], rate["layers"], strict=True):
        assert r["steered"] > r["baseline"], r
        assert p["relative_delta"] > 0.05, p
