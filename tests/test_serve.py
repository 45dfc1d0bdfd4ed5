"""The OpenAI-compatible server, driven by the official `openai` client over localhost."""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.error
import urllib.request

import mlx.core as mx
import pytest

from mlux import HookedModel, SteeringVector, generate_from_cache, prefill_with_cache, web
from mlux.serve import create_server_app
from mlux.steering import Steering, row_steering_hooks
from mlux.testing import save_tiny_model
from mlux.vector_library import VectorLibrary

openai = pytest.importorskip("openai")

PROMPT = "w15 w16 w17 w8"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    hooked = HookedModel.from_pretrained(str(save_tiny_model(root / "model", "llama")))
    direction = mx.random.normal((hooked.hidden_size,), key=mx.random.key(2)) * 3
    VectorLibrary(root / "vectors").save("push", SteeringVector({1: direction, 2: direction}))
    app = create_server_app(hooked, vectors=root / "vectors", max_batch=4)
    srv = web.make_server(app, "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{srv.server_port}/v1", api_key="none",
                           max_retries=0, timeout=60)
    yield {"client": client, "hooked": hooked, "direction": direction, "port": srv.server_port,
           "model": app.extensions["mlux_serve"]["model_id"],
           "engine": app.extensions["mlux_serve"]["engine"], "app": app}
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
    plain = client.completions.create(model=server["model"], prompt=PROMPT, max_tokens=10,
                                      temperature=0)
    assert plain.choices[0].text == library_reference(hooked, ids, None, 10)
    steer = {"vector": "push", "layers": [1], "alpha": 2.0, "positions": "all"}
    steered = client.completions.create(model=server["model"], prompt=PROMPT, max_tokens=10,
                                        temperature=0, extra_body={"steering": steer})
    vec = SteeringVector({1: server["direction"], 2: server["direction"]})
    expected = library_reference(hooked, ids, [Steering(vec, 2.0, [1], "all")], 10)
    assert steered.choices[0].text == expected != plain.choices[0].text
    inline = {"vector": server["direction"].tolist(), "layers": [1], "alpha": 2.0}
    again = client.completions.create(model=server["model"], prompt=PROMPT, max_tokens=10,
                                      temperature=0,
                                      extra_body={"steering": [inline]})
    assert again.choices[0].text == expected
    assert steered.usage.completion_tokens == 10


def test_chat_and_streaming(server):
    client, hooked = server["client"], server["hooked"]
    messages = [{"role": "user", "content": "w9 w10"}]
    chat = client.chat.completions.create(model=server["model"], messages=messages, max_tokens=8,
                                          temperature=0)
    ids = hooked.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    assert chat.choices[0].message.content == library_reference(hooked, list(ids), None, 8)
    chunks = client.chat.completions.create(model=server["model"], messages=messages, max_tokens=8,
                                            temperature=0, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == chat.choices[0].message.content
    stream = client.completions.create(model=server["model"], prompt=PROMPT, max_tokens=6,
                                       temperature=0,
                                       stream=True)
    pieces = [c.choices[0].text for c in stream]
    assert "".join(pieces).strip() == client.completions.create(
        model=server["model"], prompt=PROMPT, max_tokens=6, temperature=0).choices[0].text.strip()


def test_concurrent_clients_get_their_own_steering(server):
    client, hooked = server["client"], server["hooked"]
    ids = hooked.tokenizer.encode(PROMPT)
    vec = SteeringVector({1: server["direction"], 2: server["direction"]})
    alphas = [0.0, 2.0, -2.0, 4.0, 1.0, -4.0]
    results: dict[float, str] = {}

    def call(alpha):
        extra = {"steering": {"vector": "push", "layers": [2], "alpha": alpha}} if alpha else {}
        r = client.completions.create(model=server["model"], prompt=PROMPT, max_tokens=12,
                                      temperature=0,
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
        ({"prompt": PROMPT, "steering": {"vector": "push", "colour": 1}}, "steering.colour"),
        ({"prompt": PROMPT, "steering": [{"vector": "push"}, {"vector": "push", "alpha": "x"}]},
         "steering[1].alpha"),
        ({"prompt": PROMPT, "steering": {"vector": "push", "layers": [1, 1]}},
         "steering.layers"),
        ({"prompt": PROMPT, "steering": {"vector": [1.0] * 63 + [10**400], "layers": [1]}},
         "steering.vector[63]"),
        ({"prompt": PROMPT, "steering": [{"vector": "push"}] * 9}, "steering"),
        ({"prompt": PROMPT, "steering": "push"}, "steering"),
        ({"prompt": " ".join(["w5"] * 5000)}, "prompt"),
        ({"prompt": 3}, "prompt"), ({"prompt": ""}, "prompt"), ({"prompt": "w5\ud800"}, "prompt"),
        ({"prompt": PROMPT, "seed": 10**4000}, "seed"), ({"prompt": PROMPT, "n": 2}, "n"),
        ({"prompt": PROMPT, "top_p": float("inf")}, "top_p"),
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
    assert status == 415 and "JSON object" in payload["error"]["message"]
    status, payload = post(server["port"], "/v1/chat/completions", {"messages": [{"x": 1}]})
    assert status == 400 and payload["error"]["param"] == "messages[0].role"
    status, payload = post(server["port"], "/v1/chat/completions", {"messages": "hi"})
    assert status == 400 and payload["error"]["param"] == "messages"
    with pytest.raises(openai.BadRequestError):
        server["client"].completions.create(model=server["model"], prompt=PROMPT, max_tokens=5,
                                            extra_body={"steering": {"vector": "nope",
                                                                     "layers": [1]}})


def raw_request(port, method, path, body=b"", headers=None):
    """(status, headers, parsed JSON or raw text) over a plain socket, any Host header."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request(method, path, body, {"Content-Type": "application/json", **(headers or {})})
    resp = conn.getresponse()
    data = resp.read().decode()
    conn.close()
    is_json = resp.getheader("Content-Type", "").startswith("application/json")
    return resp.status, resp.headers, json.loads(data) if is_json else data


def test_host_header_must_name_this_server(server):
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 still sends its own Host."""
    port, steps = server["port"], server["engine"].steps
    body = json.dumps({"prompt": PROMPT, "max_tokens": 5}).encode()
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", "[::1"):
        status, headers, payload = raw_request(port, "POST", "/v1/completions", body,
                                               {"Host": host})
        assert status == 400, host
        assert payload["error"]["type"] == "invalid_request_error", host
        assert "Host" in payload["error"]["message"] and payload["error"]["param"] is None
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert server["engine"].steps == steps  # refused before reaching the model
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}"):
        status, _, payload = raw_request(port, "GET", "/v1/models", headers={"Host": host})
        assert status == 200 and payload["object"] == "list", host


def test_security_headers_on_every_response(server):
    port = server["port"]
    stream = json.dumps({"prompt": PROMPT, "max_tokens": 2, "stream": True}).encode()
    responses = [raw_request(port, "GET", "/v1/models"),
                 raw_request(port, "POST", "/v1/completions", stream),
                 raw_request(port, "POST", "/v1/completions", b"{}"),
                 raw_request(port, "GET", "/nothing"),
                 raw_request(port, "DELETE", "/v1/models")]
    assert [r[0] for r in responses] == [200, 200, 400, 404, 405]
    assert responses[1][2].endswith("data: [DONE]\n\n")
    for status, headers, _ in responses:
        assert headers["Content-Security-Policy"].startswith("default-src 'none'"), status
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Referrer-Policy"] == "no-referrer"
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["Cache-Control"] == "no-store"
    for status, _, payload in responses[2:]:  # errors keep the OpenAI shape, 404/405 too
        assert set(payload["error"]) == {"message", "type", "param", "code"}, status
    assert responses[3][2]["error"]["type"] == "not_found_error"


def test_hostile_bodies_get_clean_400s(server):
    port = server["port"]
    deep = b'{"prompt": "w5", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    nested = b'{"prompt": "w5", "x": ' + b"[" * 40 + b"]" * 40 + b"}"
    cases = [
        (deep, 400, None, "nested too deeply"),
        (nested, 400, "x" + "[0]" * 31, "nested too deeply"),  # level 33
        (b'{"prompt": "w5", "max_tokens": 1' + b"0" * 5000 + b"}", 400, None, "not valid JSON"),
        (json.dumps({"messages": [{"role": "user", "content": "w5 \udfff"}]}).encode(), 400,
         "messages[0].content", "surrogate"),
        (b"\xff\xfe", 400, None, "not valid JSON"),
    ]
    for i, (body, status, param, words) in enumerate(cases):
        path = "/v1/chat/completions" if b"messages" in body else "/v1/completions"
        got, _, payload = raw_request(port, "POST", path, body)
        assert got == status, (i, payload)
        assert payload["error"]["param"] == param and words in payload["error"]["message"], i
    assert server["client"].models.list().data  # and the server carries on
    # Over the body cap (8 MiB by default): 413 before the body is read (the test client: a
    # real socket may see the connection close while it still sends).
    big = server["app"].test_client().post("/v1/completions", json={"prompt": "w5 " * (3 << 20)})
    assert big.status_code == 413 and big.json["error"]["type"] == "invalid_request_error"


def test_a_server_exposed_on_purpose_accepts_any_host(server):
    app = create_server_app(server["hooked"], allowed_hosts=None)
    try:
        r = app.test_client().get("/v1/models", headers={"Host": "gpu-box.lan:8080"})
        assert r.status_code == 200 and r.headers["X-Content-Type-Options"] == "nosniff"
    finally:
        app.extensions["mlux_serve"]["engine"].close()


def test_client_disconnect_cancels_its_generation(server):
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
    r = server["client"].completions.create(model=server["model"], prompt=PROMPT, max_tokens=3)
    assert r.choices[0].text
    deadline = time.monotonic() + 60
    while server["engine"].live and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server["engine"].live == 0
    assert server["engine"].steps - steps < 400


# -- stop strings, as the OpenAI API honours them ------------------------------------------------

def test_stop_strings_cut_the_text(server):
    """`stop` (a string or a list): the text ends before the first stop string, also one split
    across tokens, with finish_reason "stop", streamed or not; the reference is the library's
    own generation cut by hand."""
    client, hooked = server["client"], server["hooked"]
    full = library_reference(hooked, hooked.tokenizer.encode(PROMPT), None, 12)
    words = full.split()
    assert len(words) >= 6
    spanning = full[full.index(words[2]) + 1: full.index(words[3]) + 2]  # "5 w1": two tokens
    for stop in (words[3], [words[4], words[3]], spanning, ["nothing-like-this", spanning]):
        first = min(full.find(s) for s in ([stop] if isinstance(stop, str) else stop)
                    if s in full)
        want = full[:first]
        r = client.completions.create(model=server["model"], prompt=PROMPT, max_tokens=12,
                                      temperature=0, stop=stop)
        assert r.choices[0].text == want and r.choices[0].finish_reason == "stop", stop
        chunks = list(client.completions.create(model=server["model"], prompt=PROMPT,
                                                max_tokens=12, temperature=0, stop=stop,
                                                stream=True))
        assert "".join(c.choices[0].text for c in chunks) == want, stop
        assert chunks[-1].choices[0].finish_reason == "stop"
    # A stop string that never appears changes nothing: the run ends at max_tokens.
    r = client.completions.create(model=server["model"], prompt=PROMPT, max_tokens=12,
                                  temperature=0, stop=["zzz"])
    assert r.choices[0].text == full and r.choices[0].finish_reason == "length"


def test_stop_on_chat_streams(server):
    client = server["client"]
    messages = [{"role": "user", "content": "w9 w10"}]
    full = client.chat.completions.create(model=server["model"], messages=messages,
                                          max_tokens=10, temperature=0).choices[0].message.content
    stop = full.split()[2]
    chunks = list(client.chat.completions.create(model=server["model"], messages=messages,
                                                 max_tokens=10, temperature=0, stop=stop,
                                                 stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == full[:full.index(stop)]
    assert chunks[-1].choices[0].finish_reason == "stop"


class CharTokenizer:
    """Every token is one character: stop strings always split across tokens."""

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


@pytest.mark.parametrize(("text", "stops", "want"), [
    ("hello world", ["wor"], "hello "), ("hello world", ["lo w", "xyz"], "hel"),
    ("hello world", ["zz"], "hello world"), ("aab", ["ab"], "a"), ("hello", ["o"], "hell"),
    ("hello", ["hello!"], "hello"),
])
def test_stop_text_holds_back_only_what_may_start_a_stop(text, stops, want):
    from mlux.serve.stops import StopText

    st = StopText(CharTokenizer(), stops)
    pieces = []
    for ch in text:
        pieces.append(st.add(ord(ch)))
        sent = "".join(pieces)
        assert not any(s in sent for s in stops)  # never a stop string, even in part sent
        if st.stopped:
            break
    pieces.append(st.finish())
    assert "".join(pieces) == want
    assert st.stopped == (want != text)
