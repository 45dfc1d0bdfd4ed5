"""The OpenAI-compatible server, driven by the official `openai` client over localhost."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import mlx.core as mx
import pytest
from werkzeug.serving import make_server

from mlux import HookedModel, SteeringVector, generate_from_cache, prefill_with_cache
from mlux.serve import create_server_app
from mlux.steering import Steering, row_steering_hooks
from mlux.testing import save_tiny_model
from mlux.vector_library import VectorLibrary

openai = pytest.importorskip("openai")

PROMPT = "w5 w6 w7 w8"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    hooked = HookedModel.from_pretrained(str(save_tiny_model(root / "model", "llama")))
    direction = mx.random.normal((hooked.hidden_size,), key=mx.random.key(2)) * 3
    VectorLibrary(root / "vectors").save("push", SteeringVector({1: direction, 2: direction}))
    app = create_server_app(hooked, vectors=root / "vectors", max_batch=4)
    srv = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{srv.server_port}/v1", api_key="none",
                           max_retries=0, timeout=60)
    yield {"client": client, "hooked": hooked, "direction": direction, "port": srv.server_port,
           "engine": app.extensions["mlux_serve"]["engine"]}
    srv.shutdown()
    app.extensions["mlux_serve"]["engine"].close()


def library_reference(hooked, prompt_ids, steering, max_tokens):
    """The same request through the library: generate_from_cache with the same hooks."""
    hooks = row_steering_hooks(hooked, [steering], [len(prompt_ids)]) if steering else None
    cache, logits = prefill_with_cache(hooked, prompt_ids, hooks=hooks)
    ids = generate_from_cache(hooked, cache, logits, max_tokens=max_tokens, hooks=hooks)
    return hooked.tokenizer.decode(ids)


def test_models(server):
    assert [m.id for m in server["client"].models.list().data]


def test_plain_and_steered_completions_match_the_library(server):
    client, hooked = server["client"], server["hooked"]
    ids = hooked.tokenizer.encode(PROMPT)
    plain = client.completions.create(model="m", prompt=PROMPT, max_tokens=10, temperature=0)
    assert plain.choices[0].text == library_reference(hooked, ids, None, 10)
    steer = {"vector": "push", "layers": [1], "alpha": 2.0, "positions": "all"}
    steered = client.completions.create(model="m", prompt=PROMPT, max_tokens=10,
                                        temperature=0, extra_body={"steering": steer})
    vec = SteeringVector({1: server["direction"], 2: server["direction"]})
    expected = library_reference(hooked, ids, [Steering(vec, 2.0, [1], "all")], 10)
    assert steered.choices[0].text == expected != plain.choices[0].text
    inline = {"vector": server["direction"].tolist(), "layers": [1], "alpha": 2.0}
    again = client.completions.create(model="m", prompt=PROMPT, max_tokens=10, temperature=0,
                                      extra_body={"steering": [inline]})
    assert again.choices[0].text == expected
    assert steered.usage.completion_tokens == 10


def test_chat_and_streaming(server):
    client, hooked = server["client"], server["hooked"]
    messages = [{"role": "user", "content": "w9 w10"}]
    chat = client.chat.completions.create(model="m", messages=messages, max_tokens=8,
                                          temperature=0)
    ids = hooked.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    assert chat.choices[0].message.content == library_reference(hooked, list(ids), None, 8)
    chunks = client.chat.completions.create(model="m", messages=messages, max_tokens=8,
                                            temperature=0, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == chat.choices[0].message.content
    stream = client.completions.create(model="m", prompt=PROMPT, max_tokens=6, temperature=0,
                                       stream=True)
    pieces = [c.choices[0].text for c in stream]
    assert "".join(pieces).strip() == client.completions.create(
        model="m", prompt=PROMPT, max_tokens=6, temperature=0).choices[0].text.strip()


def test_concurrent_clients_get_their_own_steering(server):
    client, hooked = server["client"], server["hooked"]
    ids = hooked.tokenizer.encode(PROMPT)
    vec = SteeringVector({1: server["direction"], 2: server["direction"]})
    alphas = [0.0, 2.0, -2.0, 4.0, 1.0, -4.0]
    results: dict[float, str] = {}

    def call(alpha):
        extra = {"steering": {"vector": "push", "layers": [2], "alpha": alpha}} if alpha else {}
        r = client.completions.create(model="m", prompt=PROMPT, max_tokens=12, temperature=0,
                                      extra_body=extra)
        results[alpha] = r.choices[0].text

    steps_before = server["engine"].steps
    threads = [threading.Thread(target=call, args=(a,)) for a in alphas]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for alpha in alphas:
        steering = [Steering(vec, alpha, [2])] if alpha else None
        assert results[alpha] == library_reference(hooked, ids, steering, 12), alpha
    assert len(set(results.values())) > 2
    # Batched: far fewer decode steps than 6 requests x 12 tokens run one after another.
    assert server["engine"].steps - steps_before < len(alphas) * 12


def post(port, path, body, content_type="application/json"):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                 headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": PROMPT, "steering": {"vector": "nope", "layers": [1]}}, "steering.vector"),
        ({"prompt": PROMPT, "steering": {"vector": "push", "layers": [9]}}, "steering.layers"),
        ({"prompt": PROMPT, "steering": {"vector": "push", "alpha": float("nan")}},
         "steering.alpha"),
        ({"prompt": PROMPT, "steering": {"vector": [1.0, 2.0], "layers": [1]}},
         "steering.vector"),
        ({"prompt": PROMPT, "steering": {"vector": "push", "positions": "middle"}},
         "steering.positions"),
        ({"prompt": PROMPT, "steering": {"vector": "push", "colour": 1}}, "steering"),
        ({"prompt": " ".join(["w5"] * 5000)}, "prompt"),
        ({"prompt": 3}, "prompt"),
        ({"prompt": PROMPT, "max_tokens": "ten"}, "max_tokens"),
        ({"prompt": PROMPT, "max_tokens": 100000}, "max_tokens"),
        ({"prompt": PROMPT, "temperature": -1}, "temperature"),
        ({"prompt": PROMPT, "stream": "yes"}, "stream"),
    ],
)
def test_bad_requests_get_openai_style_400s(server, body, param):
    raw = json.dumps(body).replace("NaN", "NaN").encode()
    status, payload = post(server["port"], "/v1/completions", raw)
    assert status == 400
    assert payload["error"]["type"] == "invalid_request_error"
    assert payload["error"]["param"] == param
    assert payload["error"]["message"]


def test_non_json_and_bad_messages(server):
    status, payload = post(server["port"], "/v1/completions", b"prompt=x", "text/plain")
    assert status == 400 and "JSON object" in payload["error"]["message"]
    status, payload = post(server["port"], "/v1/chat/completions", {"messages": [{"x": 1}]})
    assert status == 400 and payload["error"]["param"] == "messages"
    with pytest.raises(openai.BadRequestError):
        server["client"].completions.create(model="m", prompt=PROMPT, max_tokens=5,
                                            extra_body={"steering": {"vector": "nope",
                                                                     "layers": [1]}})


def test_client_disconnect_cancels_its_generation(server):
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", server["port"], timeout=30)
    body = json.dumps({"prompt": PROMPT, "max_tokens": 500, "stream": True})
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    resp.fp.readline()  # first event arrives: the job is running
    steps = server["engine"].steps
    resp.close()  # hang up mid-stream
    conn.close()
    # The next request is served, and the abandoned job stops well short of its 500 tokens.
    r = server["client"].completions.create(model="m", prompt=PROMPT, max_tokens=3)
    assert r.choices[0].text
    deadline = time.monotonic() + 60
    while server["engine"].live and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server["engine"].live == 0
    assert server["engine"].steps - steps < 400
