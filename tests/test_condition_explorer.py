"""The explorer's conditional steering: the generation events report the prompt's condition
score and whether it fired; steered rows steer only when it fires (== the decoder's rows)."""

from __future__ import annotations

import pytest

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
