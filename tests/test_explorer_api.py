"""The explorer's JSON API through Flask's test client: results equal the library's own
generation, concurrent streams queue on the model lock, a closed stream stops generating, and
no hook outlives a request. Bad input and the command line: test_explorer_inputs.py."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import mlx.core as mx
import pytest
from werkzeug.serving import make_server

from mlux import HookedModel, generate_from_cache, prefill_with_cache, steering_hooks
from mlux.explorer import Limits, create_app, get_state
from mlux.extract import extract_steering_vectors
from mlux.testing import save_tiny_model
from mlux.vectors import SteeringVector

POS = ["w10 w11 w12", "w13 w14 w15", "w16 w17 w18"]
NEG = ["w20 w21 w22", "w23 w24 w25", "w26 w27 w28"]
PROMPT = "w30 w31 w32"
LAYER, ALPHA = 1, 4.0


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("explorer") / "tiny", "llama", num_layers=4)


@pytest.fixture(scope="module")
def hooked(model_dir: Path) -> HookedModel:
    return HookedModel.from_pretrained(str(model_dir))


@pytest.fixture
def app(hooked: HookedModel, tmp_path: Path) -> Any:
    app = create_app(hooked, vectors_dir=tmp_path / "vectors")
    yield app
    assert hooked.active_hooks() == {}, "a request left hooks installed"
    assert not get_state_of(app).worker.busy, "a request left the model lock held"


def get_state_of(app: Any) -> Any:
    with app.app_context():
        return get_state()


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


@pytest.fixture
def vid(client: Any) -> str:
    r = client.post("/api/compute", json={"positive": POS, "negative": NEG})
    assert r.status_code == 200, r.json
    return r.json["id"]


def gen_body(vid: str, **kw: Any) -> dict[str, Any]:
    return {"prompt": PROMPT, "vector": {"id": vid}, "layers": [LAYER], "alpha": ALPHA,
            "max_tokens": 12, **kw}


def parse_sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in text.split("\n\n"):
        lines = [ln for ln in block.split("\n") if ln and not ln.startswith(":")]
        if lines:
            name = lines[0].removeprefix("event: ")
            events.append((name, json.loads(lines[1].removeprefix("data: "))))
    return events


def reference(hooked: HookedModel, vector: mx.array, alpha: float, n: int = 12) -> str:
    tokens = hooked.tokenize(PROMPT).tokens[0].tolist()
    hooks = steering_hooks({LAYER: vector}, alpha) if alpha else None  # the default, "all"
    cache, logits = prefill_with_cache(hooked, tokens, hooks=hooks)
    return hooked.tokenizer.decode(generate_from_cache(hooked, cache, logits, max_tokens=n,
                                                       hooks=hooks))


# -- the happy path ------------------------------------------------------------------------------

def test_model_info_and_page(client: Any, hooked: HookedModel) -> None:
    m = client.get("/api/model").json
    assert m["info"]["num_layers"] == 4 and m["info"]["hidden_size"] == hooked.hidden_size
    assert m["info"]["quantization"] is None and m["info"]["recommended_layers"]["default"]
    assert m["limits"]["max_tokens"] == Limits().max_tokens and m["sweeps"] == ["projection"]
    page = client.get("/")
    assert page.status_code == 200 and b"explorer.js" in page.data
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    static = sorted(f.name for f in (Path(client.application.root_path) / "static").iterdir())
    assert static == ["charts.js", "conditions.js", "explorer.css", "explorer.js", "sae.js",
                      "util.js"]
    for path in ("/", *(f"/static/{name}" for name in static)):
        body = client.get(path).data.decode()
        external = body.replace("http://www.w3.org/2000/svg", "")
        assert "http://" not in external and "https://" not in external, path  # works offline


def test_compute_then_generate_equals_library(client: Any, hooked: HookedModel, vid: str
                                              ) -> None:
    expected = extract_steering_vectors(hooked, POS, NEG, "all")
    state = get_state_of(client.application)
    assert mx.allclose(state.vectors[vid][LAYER], expected[LAYER]).item()
    r = client.post("/api/generate", json=gen_body(vid))
    assert r.status_code == 200, r.json
    base, steered = r.json["rows"]
    assert base["alpha"] == 0 and steered["alpha"] == ALPHA
    assert base["text"] == reference(hooked, expected[LAYER], 0.0)
    assert steered["text"] == reference(hooked, expected[LAYER], ALPHA)
    assert base["text"] != steered["text"]
    assert "".join(steered["pieces"]) == steered["text"]
    assert len(steered["projections"]) == len(steered["token_ids"]) == 12


def test_stream_matches_generate_and_compare_mode(client: Any, vid: str) -> None:
    body = gen_body(vid, alphas=[-ALPHA, ALPHA])
    del body["alpha"]
    r = client.post("/api/stream", json=body)
    assert r.status_code == 200 and r.mimetype == "text/event-stream"
    events = parse_sse(r.data.decode())
    names = [e for e, _ in events]
    assert names[0] == "start" and names[-1] == "done" and names.count("tokens") == 12
    done = events[-1][1]
    assert [row["alpha"] for row in done["rows"]] == [0.0, -ALPHA, ALPHA]
    for row in done["rows"]:  # the streamed pieces add up to each row's final text
        streamed = "".join(t["piece"] for e, d in events if e == "tokens" for t in d["tokens"]
                           if t["row"] == row["row"])
        assert streamed == row["text"]
    plain = client.post("/api/generate", json=body).json
    assert [row["text"] for row in plain["rows"]] == [row["text"] for row in done["rows"]]


def test_rows_one_by_one_equal_the_batch(model_dir: Path, client: Any, vid: str,
                                         tmp_path: Path) -> None:
    """Models that can't batch decode the rows in turn: same text, greedy."""
    alone = HookedModel.from_pretrained(str(model_dir))
    alone._padded_batch_ok = False
    other = create_app(alone, vectors_dir=tmp_path / "v2").test_client()
    other_vid = other.post("/api/compute", json={"positive": POS, "negative": NEG}).json["id"]
    for positions in ("generated", "all", "prompt"):
        a = client.post("/api/generate", json=gen_body(vid, positions=positions)).json
        b = other.post("/api/generate", json=gen_body(other_vid, positions=positions)).json
        assert [r["text"] for r in a["rows"]] == [r["text"] for r in b["rows"]], positions
    assert alone.active_hooks() == {}


def test_projection_sweep(client: Any, vid: str) -> None:
    r = client.post("/api/sweep", json={"prompt": PROMPT, "vector": {"id": vid}, "alpha": ALPHA,
                                        "max_tokens": 8})
    assert r.status_code == 200, r.json
    layers = r.json["layers"]
    assert [p["layer"] for p in layers] == [0, 1, 2, 3]
    assert all(isinstance(p["baseline"], float) and isinstance(p["steered"], float)
               for p in layers)
    for p in layers:  # the change as a fraction of the layer's residual norm, for ranking
        assert p["residual_norm"] > 0
        assert p["relative_delta"] == pytest.approx(p["delta"] / p["residual_norm"])
    assert r.json["quantity"] == "projection_change" and "residual" in r.json["y_label"]
    assert "steered minus baseline" in r.json["metric"] and r.json["alpha_unit"] == "raw"
    one = client.post("/api/generate", json=gen_body(vid, max_tokens=8)).json
    assert layers[LAYER]["text"] == one["rows"][1]["text"]  # row L of the sweep = steering L
    assert r.json["baseline_text"] == one["rows"][0]["text"]
    # Identity: alpha 0 steers nothing, so every change is exactly 0.
    zero = client.post("/api/sweep", json={"prompt": PROMPT, "vector": {"id": vid}, "alpha": 0,
                                           "max_tokens": 8}).json
    for p in zero["layers"]:  # (batched rows agree to float32 rounding under OpenBLAS)
        assert p["text"] == zero["baseline_text"]
        assert abs(p["delta"]) <= 1e-5 * p["residual_norm"]


def test_alpha_relative_to_the_residual_norm(client: Any, hooked: HookedModel, vid: str
                                             ) -> None:
    """alpha_unit "residual": alpha x (the layer's residual norm at the prompt's last token /
    the vector's norm) x the vector, the same text as that raw alpha; sweeps too."""
    rel = client.post("/api/generate", json=gen_body(vid, alpha=0.5, alpha_unit="residual"))
    assert rel.status_code == 200, rel.json
    tokens = hooked.tokenize(PROMPT).tokens[0].tolist()
    residual = hooked.capture([tokens], [f"residuals_{LAYER}"])[f"residuals_{LAYER}"][0, -1]
    vector = get_state_of(client.application).vectors[vid][LAYER]
    scale = (mx.linalg.norm(residual) / mx.linalg.norm(vector)).item()
    (effective,) = rel.json["rows"][1]["effective_alphas"]
    assert effective == pytest.approx(0.5 * scale, rel=1e-4)
    assert rel.json["residual_norms"] == [pytest.approx(mx.linalg.norm(residual).item())]
    raw = client.post("/api/generate", json=gen_body(vid, alpha=effective)).json
    assert [r["text"] for r in raw["rows"]] == [r["text"] for r in rel.json["rows"]]
    assert raw["alpha_unit"] == "raw" and raw["rows"][1]["effective_alphas"] == [effective]
    body = {"prompt": PROMPT, "vector": {"id": vid}, "alpha": 0.5, "layers": [LAYER],
            "max_tokens": 6}
    sweep = client.post("/api/sweep", json={**body, "alpha_unit": "residual"}).json
    (row,) = sweep["layers"]
    assert row["effective_alpha"] == pytest.approx(effective, rel=1e-4)
    assert row["norm"] == pytest.approx(mx.linalg.norm(vector).item())
    plain = client.post("/api/sweep", json={**body, "alpha": effective}).json
    assert plain["layers"][0]["text"] == row["text"]


def test_custom_sweep_mode_and_errors_inside_remove_hooks(hooked: HookedModel,
                                                          tmp_path: Path) -> None:
    def broken(h: HookedModel, vector: SteeringVector, tokens: list[int], **kw: Any) -> dict:
        with h.hooks({"residuals_0": lambda x, ctx: None}):
            raise RuntimeError("boom")

    def constant(h: HookedModel, vector: SteeringVector, tokens: list[int], **kw: Any) -> dict:
        return {"mode": "constant", "layers": [{"layer": i} for i in kw["layers"]]}

    app = create_app(hooked, vectors_dir=tmp_path, sweeps={"constant": constant,
                                                           "broken": broken})
    c = app.test_client()
    assert c.get("/api/model").json["sweeps"] == ["projection", "constant", "broken"]
    v = c.post("/api/compute", json={"positive": POS, "negative": NEG}).json["id"]
    body = {"prompt": PROMPT, "vector": {"id": v}, "alpha": 1.0, "layers": [2]}
    assert c.post("/api/sweep", json={**body, "mode": "constant"}).json["layers"] == [{"layer": 2}]
    r = c.post("/api/sweep", json={**body, "mode": "broken"})
    assert r.status_code == 500 and "boom" in r.json["error"]
    assert hooked.active_hooks() == {} and not get_state_of(app).worker.busy


# -- concurrency, disconnects, the lock ----------------------------------------------------------

def test_concurrent_streams_both_finish(app: Any, hooked: HookedModel, vid: str) -> None:
    want = {a: app.test_client().post("/api/generate", json=gen_body(vid, alpha=a, max_tokens=24))
            .json["rows"][1]["text"] for a in (ALPHA, -ALPHA)}
    got: dict[float, Any] = {}

    def run(alpha: float) -> None:
        r = app.test_client().post("/api/stream", json=gen_body(vid, alpha=alpha, max_tokens=24))
        got[alpha] = parse_sse(r.data.decode())

    order: list[int] = []  # which thread ran each forward pass

    def slow(x: mx.array, ctx: Any) -> None:
        order.append(threading.get_ident())
        time.sleep(0.005)  # long enough for the two requests to overlap

    threads = [threading.Thread(target=run, args=(a,)) for a in want]
    with hooked.hooks({"residuals_0": slow}):
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    # Every forward pass ran on the app's one model thread, none on a request thread.
    assert set(order) == {get_state_of(app).worker._thread.ident}
    for alpha, text in want.items():
        name, done = got[alpha][-1]
        assert name == "done" and done["rows"][1]["text"] == text


def slow_counter(counts: list[int], delay: float) -> Any:
    def hook(x: mx.array, ctx: Any) -> None:
        counts.append(1)
        time.sleep(delay)

    return hook


def test_closing_the_stream_stops_generation(app: Any, hooked: HookedModel, vid: str) -> None:
    counts: list[int] = []
    with hooked.hooks({"residuals_0": slow_counter(counts, 0.0)}):
        r = app.test_client().post("/api/stream", json=gen_body(vid, max_tokens=256),
                                   buffered=False)
        chunks = iter(r.response)
        seen = [next(chunks) for _ in range(5)]  # comment, start, 3 token steps
        assert b"event: tokens" in seen[-1]
        r.close()
        assert not get_state_of(app).worker.busy
        assert len(counts) < 12  # stopped after a few of the 256 steps
        assert hooked.active_hooks() == {"residuals_0": 1}  # only the test's own
    assert hooked.active_hooks() == {}


def test_client_disconnect_on_a_real_server(app: Any, hooked: HookedModel, vid: str) -> None:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    counts: list[int] = []
    try:
        with hooked.hooks({"residuals_0": slow_counter(counts, 0.02)}):
            body = json.dumps(gen_body(vid, max_tokens=256)).encode()
            sock = socket.create_connection(("127.0.0.1", server.server_port), timeout=30)
            sock.sendall(b"POST /api/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                         b"application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(body), body))
            received = b""
            while b"event: tokens" not in received:
                received += sock.recv(4096)
            assert received.startswith(b"HTTP/1.1 200")
            sock.close()  # the browser tab went away
            state = get_state_of(app)
            deadline = time.time() + 20
            while state.worker.busy and time.time() < deadline:
                time.sleep(0.05)
            assert not state.worker.busy, "the server kept generating for a gone client"
            assert len(counts) < 100
    finally:
        server.shutdown()
        server.server_close()


def test_busy_model_answers_503(hooked: HookedModel, tmp_path: Path) -> None:
    app = create_app(hooked, vectors_dir=tmp_path, lock_timeout=0.05)
    c = app.test_client()
    v = c.post("/api/compute", json={"positive": POS, "negative": NEG}).json["id"]
    state = get_state_of(app)
    release = threading.Event()
    state.worker.submit(release.wait, 30)  # the model thread is busy with other work
    try:
        r = c.post("/api/compute", json={"positive": POS, "negative": NEG})
        assert r.status_code == 503 and r.is_json
        r = c.post("/api/stream", json=gen_body(v))  # refused before any event is sent
        assert r.status_code == 503 and "busy" in r.json["error"]
    finally:
        release.set()
    assert c.post("/api/compute", json={"positive": POS, "negative": NEG}).status_code == 200
    state.close()


# -- sampling seeds, warnings, counts, layer specs, the compute cap ------------------------------

def test_sampling_draws_a_fresh_seed_and_reports_it(client: Any, vid: str) -> None:
    """temperature > 0 without a seed: each request its own seed, named in the answer; sending
    that seed back repeats the run exactly."""
    runs = [client.post("/api/generate", json=gen_body(vid, temperature=1.0)).json
            for _ in range(3)]
    seeds = [r["seed"] for r in runs]
    assert all(isinstance(s, int) for s in seeds) and len(set(seeds)) == 3
    assert len({r["rows"][1]["text"] for r in runs}) > 1  # not the same sample every click
    again = client.post("/api/generate", json=gen_body(vid, temperature=1.0,
                                                       seed=seeds[0])).json
    assert again["seed"] == seeds[0]
    assert [r["text"] for r in again["rows"]] == [r["text"] for r in runs[0]["rows"]]
    greedy = client.post("/api/generate", json=gen_body(vid)).json
    assert greedy["seed"] is None  # greedy decoding uses no seed
    events = parse_sse(client.post("/api/stream", json=gen_body(vid, temperature=1.0,
                                                                seed=seeds[1])).data.decode())
    assert events[0][1]["seed"] == events[-1][1]["seed"] == seeds[1]


def test_unknown_tokens_warn_on_the_page(client: Any, hooked: HookedModel) -> None:
    """The library warns when a prompt is mostly unknown tokens; the API hands the warning on."""
    from mlux.inputs import warn_if_unknown

    with pytest.warns(UserWarning, match="unknown") as caught:
        warn_if_unknown(hooked.tokenizer, ["zzz qqq xxx"], hooked.tokenize("zzz qqq xxx"),
                        hooked.model_id)
    expected = str(caught[-1].message)
    r = client.post("/api/compute", json={"positive": ["zzz qqq xxx", *POS], "negative": NEG})
    assert r.status_code == 200 and r.json["warnings"] == [expected]
    clean = client.post("/api/compute", json={"positive": POS, "negative": NEG}).json
    assert clean["warnings"] == []
    events = parse_sse(client.post("/api/stream", json={**gen_body(clean["id"]),
                                                        "prompt": "zzz qqq xxx"}).data.decode())
    assert any("unknown" in w for w in events[0][1]["warnings"])


def test_counts_of_prompts_used(client: Any) -> None:
    r = client.post("/api/compute", json={"positive": POS + POS[:1] * 15, "negative": NEG[:2]})
    assert (r.json["num_positive"], r.json["num_negative"]) == (18, 2)


def test_layer_specs_in_the_one_grammar(client: Any, vid: str) -> None:
    """"1-3", "-1", "residuals_2" and lists of them mean what they mean everywhere else."""
    def rows(layers: Any) -> list[str]:
        r = client.post("/api/generate", json=gen_body(vid, layers=layers, max_tokens=6))
        assert r.status_code == 200, r.json
        assert r.json["layers"] == expected
        return [row["text"] for row in r.json["rows"]]

    expected = [1, 2, 3]
    want = rows([1, 2, 3])
    assert rows("1-3") == rows(["1-2", 3]) == rows("residuals_1-3") == want
    expected = [3]
    assert rows("-1") == rows([-1]) == rows([3])


def test_compute_caps_the_tokens_of_one_request(hooked: HookedModel, tmp_path: Path) -> None:
    app = create_app(hooked, vectors_dir=tmp_path, limits=Limits(max_compute_tokens=20))
    c = app.test_client()
    r = c.post("/api/compute", json={"positive": POS * 3, "negative": NEG * 3})  # 54 tokens
    assert r.status_code == 413 and r.json["field"] == "positive"
    assert "54 tokens" in r.json["error"] and "at most 20" in r.json["error"]
    assert "few seconds" in r.json["error"]
    small = c.post("/api/compute", json={"positive": POS[:1], "negative": NEG[:1]})
    assert small.status_code == 200
    get_state_of(app).close()


def test_each_column_is_scored(hooked: HookedModel, tmp_path: Path, vid: str) -> None:
    """Every row carries its perplexity under the unsteered model (the library's own) and each
    scorer's verdict, so degenerate text is flagged in compare mode."""
    from mlux.evaluation import perplexity

    app = create_app(hooked, vectors_dir=tmp_path, scorers={"w5": lambda t: "w5" in t})
    c = app.test_client()
    v = c.post("/api/compute", json={"positive": POS, "negative": NEG}).json["id"]
    out = c.post("/api/generate", json=gen_body(v, alpha=None, alphas=[-4, 4, 40])).json
    ids = hooked.tokenize(PROMPT).tokens[0].tolist()
    for row in out["rows"]:
        assert row["scores"]["perplexity"] == pytest.approx(
            perplexity(hooked, ids, row["token_ids"]), rel=1e-5)
        assert row["scores"]["w5"] == ("w5" in row["text"])
    get_state_of(app).close()


def test_vector_folder_must_be_a_folder(hooked: HookedModel, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        create_app(hooked, vectors_dir=tmp_path / "file")
