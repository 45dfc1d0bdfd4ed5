"""The explorer's conditional steering: the generation events report the prompt's condition
score and whether it fired; steered rows steer only when it fires (== the decoder's rows)."""

from __future__ import annotations

import re
import threading

import pytest
from werkzeug.serving import make_server

from mlux import HookedModel, Steering, extract_steering_vectors, generate_batch
from mlux.conditions import Condition
from mlux.explorer import create_app, get_state
from mlux.toy import CONTRAST_PROMPTS

FORMAL, CASUAL = "furthermore the garden was remarkably", "so the garden was super"


@pytest.fixture(scope="module")
def explorer(tmp_path_factory):
    hooked = HookedModel.from_pretrained("mlux-toy")
    app = create_app(hooked, vectors_dir=tmp_path_factory.mktemp("vectors"))
    client = app.test_client()
    formal = extract_steering_vectors(hooked, *CONTRAST_PROMPTS["formality"], [1])
    happy = extract_steering_vectors(hooked, *CONTRAST_PROMPTS["sentiment"], [2])
    with app.app_context():
        state = get_state()
        state.library.save("formal", formal)
        state.library.save("happy", happy)
    return hooked, client, formal, happy


def generate(client, prompt, condition):
    return client.post("/api/generate", json={
        "prompt": prompt, "vector": {"name": "happy"}, "layers": [2], "alpha": 2.0,
        "max_tokens": 10, "condition": condition})


@pytest.mark.parametrize("prompt", [FORMAL, CASUAL])
def test_generation_reports_the_condition_and_steers_only_when_fired(explorer, prompt):
    hooked, client, formal, happy = explorer
    spec = {"vector": {"name": "formal"}, "layer": 1, "threshold": 0.05}
    r = generate(client, prompt, spec)
    assert r.status_code == 200, r.json
    cond = Condition(formal, 1, 0.05)
    (score,) = cond.scores(hooked, [prompt])
    report = r.json["condition"]
    assert report["fired"] == cond.fires(hooked, [prompt])[0] == (prompt == FORMAL)
    assert report["score"] == pytest.approx(score[0])
    assert (report["layer"], report["threshold"], report["comparator"]) == (1, 0.05, "larger")
    ids = hooked.tokenizer.encode(prompt)
    want = generate_batch(hooked, [ids], max_tokens=10,
                          steering=[Steering({2: happy[2]}, 2.0, condition=cond)])[0]
    base, steered = r.json["rows"]
    assert steered["token_ids"] == want
    assert (steered["token_ids"] != base["token_ids"]) == report["fired"]


@pytest.mark.parametrize(("spec", "field"), [
    ({"vector": {"name": "formal"}, "layer": 9, "threshold": 0.05}, "condition.layer"),
    ({"vector": {"name": "formal"}, "layer": 1, "threshold": 0.05, "comparator": "x"},
     "condition.comparator"),
    ({"vector": {"name": "formal"}, "layer": 3, "threshold": 0.05}, "condition.vector"),
    ({"vector": {"name": "nope"}, "layer": 1, "threshold": 0.05}, "condition.vector"),
    ({"vector": {"name": "formal"}, "layer": 1}, "condition.threshold"),
    ("formal", "condition"),
])
def test_bad_conditions_are_400s_naming_the_field(explorer, spec, field):
    _, client, _, _ = explorer
    r = generate(client, FORMAL, spec)
    assert r.status_code in (400, 404) and r.json["field"] == field, r.json


def test_condition_in_chromium(tmp_path, monkeypatch):
    """The page's condition section: tick it, name a library vector, generate; the status line
    says fired (formal prompt) or not (casual), with the prompt's cosine."""
    from test_explorer_browser import ARTIFACTS, _chromium, _playwright, browser_page

    _chromium(), _playwright()
    expect = _playwright()[1]
    hooked = HookedModel.from_pretrained("mlux-toy")
    app = create_app(hooked, vectors_dir=tmp_path / "vectors")
    with app.app_context():
        get_state().library.save("formal", extract_steering_vectors(
            hooked, *CONTRAST_PROMPTS["formality"], [1]))
        get_state().library.save("happy", extract_steering_vectors(
            hooked, *CONTRAST_PROMPTS["sentiment"], [2]))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    problems: list[str] = []
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        with browser_page(url, tmp_path, monkeypatch, problems) as page:
            page.goto(url)
            page.click(".tab[data-tab='library']")
            page.wait_for_selector("#library-list option[value='happy']", state="attached")
            page.select_option("#library-list", "happy")
            page.click("#library-load")
            expect(page.locator("#vector-status")).to_contain_text("Loaded")
            page.fill("#layers", "2")
            page.fill("#alpha-value", "2")
            page.fill("#max-tokens", "8")
            page.check("#condition-on")
            page.fill("#condition-vector", "formal")
            page.fill("#condition-layer", "1")
            page.fill("#condition-threshold", "0.05")
            for prompt, status in ((FORMAL, "condition fired"), (CASUAL, "did not fire")):
                page.fill("#prompt", prompt)
                page.click("#generate")
                page.wait_for_selector("#outputs[data-done='1']")
                expect(page.locator("#condition-status")).to_contain_text(status)
                expect(page.locator("#condition-status")).to_contain_text("at layer 1")
                if prompt == FORMAL:
                    ARTIFACTS.mkdir(exist_ok=True)
                    page.locator("#steer-panel").screenshot(path=ARTIFACTS / "condition.png")
            page.fill("#condition-layer", "9")
            page.click("#generate")
            expect(page.locator("#error")).to_contain_text("condition.layer")
            expect(page.locator("#condition-panel")).to_have_class(re.compile("invalid"))
    finally:
        server.shutdown()
        server.server_close()
    assert problems == [] or all("400" in p or "BAD REQUEST" in p for p in problems), problems
