"""Conditional steering served: the openai client sends a formal and a casual prompt with the
same condition; the response says which fired, and the text is the in-process result."""

from __future__ import annotations

import threading

import pytest
from werkzeug.serving import make_server

from mlux import HookedModel, Steering, extract_steering_vectors, generate_batch
from mlux.conditions import Condition
from mlux.serve import create_server_app
from mlux.toy import CONTRAST_PROMPTS
from mlux.vector_library import VectorLibrary
from mlux.web import post_json

openai = pytest.importorskip("openai")

FORMAL, CASUAL = "furthermore the garden was remarkably", "so the garden was super"
CONDITION = {"vector": "formal", "layer": 1, "threshold": 0.05, "comparator": "larger"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_cond")
    hooked = HookedModel.from_pretrained("mlux-toy")
    formal = extract_steering_vectors(hooked, *CONTRAST_PROMPTS["formality"], [1])
    happy = extract_steering_vectors(hooked, *CONTRAST_PROMPTS["sentiment"], [2])
    library = VectorLibrary(root / "vectors")
    library.save("formal", formal)
    library.save("happy", happy)
    app = create_server_app(hooked, vectors=root / "vectors", max_batch=4)
    srv = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{srv.server_port}/v1", api_key="none",
                           max_retries=0, timeout=60)
    yield {"client": client, "hooked": hooked, "formal": formal, "happy": happy,
           "port": srv.server_port}
    srv.shutdown()
    app.extensions["mlux_serve"]["engine"].close()


def in_process(server, prompt, condition):
    hooked = server["hooked"]
    ids = hooked.tokenizer.encode(prompt)
    term = Steering(server["happy"], 2.0, condition=condition)
    return hooked.tokenizer.decode(generate_batch(hooked, [ids], max_tokens=12,
                                                  steering=[term])[0])


@pytest.mark.parametrize("comparator", ["larger", "smaller"])
def test_served_condition_fires_as_in_process(server, comparator):
    client = server["client"]
    cond = Condition(server["formal"], 1, 0.05, comparator)
    steering = {"vector": "happy", "alpha": 2.0, "condition": {**CONDITION,
                                                               "comparator": comparator}}
    fired = {}
    for prompt in (FORMAL, CASUAL):
        resp = client.completions.create(model="mlux-toy", prompt=prompt, max_tokens=12,
                                         temperature=0, extra_body={"steering": steering})
        assert resp.choices[0].text == in_process(server, prompt, cond)
        fired[prompt] = resp.model_extra["steering_fired"]
        plain = client.completions.create(model="mlux-toy", prompt=prompt, max_tokens=12,
                                          temperature=0)
        assert "steering_fired" not in plain.model_extra
        assert (resp.choices[0].text != plain.choices[0].text) == fired[prompt][0]
    want = [[True], [False]] if comparator == "larger" else [[False], [True]]
    assert [fired[FORMAL], fired[CASUAL]] == want
    assert want == [[f] for f in cond.fires(server["hooked"], [FORMAL, CASUAL])]


def test_streamed_and_chat_responses_report_the_decision(server):
    client = server["client"]
    steering = [{"vector": "happy", "alpha": 2.0}, {"vector": "happy", "alpha": -2.0,
                                                    "condition": CONDITION}]
    chunks = list(client.completions.create(model="mlux-toy", prompt=CASUAL, max_tokens=6,
                                            temperature=0, stream=True,
                                            extra_body={"steering": steering}))
    assert chunks[-1].model_extra["steering_fired"] == [True, False]
    chat = client.chat.completions.create(model="mlux-toy", max_tokens=6, temperature=0,
                                          messages=[{"role": "user", "content": FORMAL}],
                                          extra_body={"steering": steering})
    assert chat.model_extra["steering_fired"] == [True, True]


def post(port, body):
    return post_json(port, "/v1/completions", body, timeout=30)


@pytest.mark.parametrize(("condition", "param", "message"), [
    ({**CONDITION, "vector": [1.0] * 8}, "steering.condition.vector", "must hold 96 numbers"),
    ({**CONDITION, "threshold": float("nan")}, "steering.condition.threshold", "finite"),
    ({**CONDITION, "comparator": "bigger"}, "steering.condition.comparator",
     "must be one of larger, smaller"),
    ({**CONDITION, "layer": 6}, "steering.condition.layer", "between 0 and 5"),
    ({**CONDITION, "layer": 3}, "steering.condition.vector", "layer 3"),
    ({key: v for key, v in CONDITION.items() if key != "layer"}, "steering.condition.layer",
     "is required"),
    ({**CONDITION, "colour": 1}, "steering.condition.colour", "not a known field"),
    ("formal", "steering.condition", "must be an object"),
])
def test_bad_conditions_get_openai_style_400s(server, condition, param, message):
    status, payload = post(server["port"], {"prompt": FORMAL, "steering": {
        "vector": "happy", "condition": condition}})
    assert status == 400
    assert payload["error"]["type"] == "invalid_request_error"
    assert payload["error"]["param"] == param
    assert message in payload["error"]["message"]
