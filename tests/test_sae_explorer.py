"""The explorer's SAE panel: the features route equals `read_features` (and a clamped
generation equals the decoder's), bad requests are field errors, no SAE is a 404; in Chromium
the panel reads a prompt's features and clamps one."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from test_explorer_browser import _playwright, browser_page
from test_sae_steering import HOOK, make_sae
from werkzeug.serving import make_server

from mlux.explorer import create_app
from mlux.generate import generate_batch
from mlux.model import HookedModel
from mlux.sae.reading import read_features
from mlux.steering import Steering

PROMPT = "mood: happy the"


@pytest.fixture(scope="module")
def hooked():
    return HookedModel.from_pretrained("mlux-toy")


def test_features_route_matches_the_library(hooked, tmp_path):
    sae = make_sae(hooked)
    client = create_app(hooked, vectors_dir=tmp_path / "v", sae=sae).test_client()
    info = client.get("/api/sae").get_json()
    assert info["loaded"] and info["hook"] == HOOK and info["d_sae"] == 48
    got = client.post("/api/sae/features", json={"prompt": PROMPT, "k": 3,
                                                  "max_tokens": 4}).get_json()
    want = read_features(hooked, sae, PROMPT, k=3, max_tokens=4)
    assert got["tokens"] == [r.to_json() for r in want]
    n = len(hooked.tokenize([PROMPT]).tokens[0])
    assert [t["generated"] for t in got["tokens"]] == [False] * n + [True] * 4
    # The features are the SAE's encoding of the captured stream, largest first.
    acts = hooked.capture([PROMPT], [HOOK])[HOOK][0]
    f = np.asarray(sae.encode(acts))
    first = got["tokens"][1]["features"]
    assert [x["feature"] for x in first] == list(np.argsort(-f[1])[:len(first)])
    clamped = client.post("/api/sae/features", json={
        "prompt": PROMPT, "k": 3, "max_tokens": 4, "clamp": {"feature": 7, "value": 15}})
    tokens = [t["token"] for t in clamped.get_json()["tokens"] if t["generated"]]
    assert tokens == generate_batch(hooked, [PROMPT], max_tokens=4,
                                    steering=[Steering(sae_clamp=(sae, 7, 15.0))])[0]


def test_features_route_errors(hooked, tmp_path):
    client = create_app(hooked, vectors_dir=tmp_path / "v", sae=make_sae(hooked)).test_client()
    r = client.post("/api/sae/features", json={"prompt": PROMPT, "clamp": {"feature": 48,
                                                                           "value": 1}})
    assert r.status_code == 400 and r.get_json()["field"] == "clamp.feature"
    r = client.post("/api/sae/features", json={"prompt": PROMPT, "k": 0})
    assert r.status_code == 400 and r.get_json()["field"] == "k"
    r = client.post("/api/sae/features", json={"prompt": PROMPT, "colour": 1})
    assert r.status_code == 400 and r.get_json()["field"] == "colour"
    plain = create_app(hooked, vectors_dir=tmp_path / "v").test_client()
    assert plain.get("/api/sae").get_json() == {"loaded": False}
    r = plain.post("/api/sae/features", json={"prompt": PROMPT})
    assert r.status_code == 404 and "--sae" in r.get_json()["error"]


def test_sae_panel_in_chromium(hooked, tmp_path, monkeypatch):
    expect = _playwright()[1]
    app = create_app(hooked, vectors_dir=tmp_path / "v", sae=make_sae(hooked))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url, problems = f"http://127.0.0.1:{server.server_port}", []
    try:
        with browser_page(url, tmp_path, monkeypatch, problems) as page:
            page.goto(url)
            page.wait_for_selector("#sae-panel:not([hidden])")
            page.fill("#prompt", PROMPT)
            page.fill("#sae-tokens", "3")
            page.click("#sae-read")
            page.wait_for_selector("#sae-table tr.generated")
            n = len(hooked.tokenize([PROMPT]).tokens[0])
            assert page.locator("#sae-table tr").count() == 1 + n + 3  # header, prompt, +3
            page.locator("#sae-table .chip").first.click()  # fills the clamp box
            feature = page.input_value("#sae-feature")
            assert feature != ""
            page.click("#sae-clamp")
            expect(page.locator("#sae-status")).to_contain_text(f"feature {feature} clamped")
    finally:
        server.shutdown()
        server.server_close()
    assert problems == []
