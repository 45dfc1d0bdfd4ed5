"""The explorer's bad-input handling (every field: a JSON 4xx naming it; no path escapes the
library folder) and its command line (`python -m mlux.experiments.steering_explorer`,
`mlux explore`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlx.core as mx
import pytest

from mlux import HookedModel
from mlux.explorer import create_app, get_state
from mlux.testing import save_tiny_model
from mlux.vectors import SteeringVector

POS = ["w10 w11 w12", "w13 w14 w15", "w16 w17 w18"]
NEG = ["w20 w21 w22", "w23 w24 w25", "w26 w27 w28"]
PROMPT = "w30 w31 w32"


@pytest.fixture(scope="module")
def hooked(tmp_path_factory: pytest.TempPathFactory) -> HookedModel:
    """A tiny model loaded from disk like a user's; `model_id` is its folder."""
    folder = tmp_path_factory.mktemp("explorer-inputs") / "tiny"
    return HookedModel.from_pretrained(str(save_tiny_model(folder, "llama", num_layers=4)))


def get_state_of(app: Any) -> Any:
    with app.app_context():
        return get_state()


@pytest.fixture
def client(hooked: HookedModel, tmp_path: Path) -> Any:
    app = create_app(hooked, vectors_dir=tmp_path / "vectors")
    yield app.test_client()
    assert hooked.active_hooks() == {} and not get_state_of(app).worker.busy


@pytest.fixture
def vid(client: Any) -> str:
    return client.post("/api/compute", json={"positive": POS, "negative": NEG}).json["id"]


def gen_body(vid: str, **kw: Any) -> dict[str, Any]:
    return {"prompt": PROMPT, "vector": {"id": vid}, "layers": [1], "alpha": 4.0,
            "max_tokens": 12, **kw}


# -- bad input: a JSON 4xx that names the field --------------------------------------------------

LONG = "w9 " * 2000
BAD_GENERATE = [
    ({"prompt": None}, "prompt"), ({"prompt": ""}, "prompt"), ({"prompt": "   "}, "prompt"),
    ({"prompt": 5}, "prompt"), ({"prompt": LONG}, "prompt"),
    ({"max_tokens": 0}, "max_tokens"), ({"max_tokens": 257}, "max_tokens"),
    ({"max_tokens": "10"}, "max_tokens"), ({"max_tokens": 1.5}, "max_tokens"),
    ({"max_tokens": True}, "max_tokens"),
    ({"alpha": "x"}, "alpha"), ({"alpha": float("nan")}, "alpha"), ({"alpha": 1e9}, "alpha"),
    ({"alphas": [1.0] * 9}, "alphas"), ({"alphas": []}, "alphas"),
    ({"alphas": ["a"]}, "alphas[0]"), ({"alphas": 3}, "alphas"),
    ({"layers": None}, "layers"), ({"layers": []}, "layers"), ({"layers": [99]}, "layers"),
    ({"layers": [-5]}, "layers"), ({"layers": ["1-9"]}, "layers"), ({"layers": [1, 1]}, "layers"),
    ({"layers": "mlp_1"}, "layers"), ({"layers": "1-"}, "layers"), ({"layers": "3-1"}, "layers"),
    ({"layers": "1, -3"}, "layers"),
    ({"layers": [True]}, "layers"), ({"layers": 1}, "layers"),
    ({"vector": None}, "vector"), ({"vector": "abc"}, "vector"), ({"vector": {}}, "vector"),
    ({"vector": {"id": "a", "name": "b"}}, "vector"), ({"vector": {"id": 5}}, "vector.id"),
    ({"vector": {"name": "../../etc/passwd"}}, "vector.name"),
    ({"vector": {"name": "a/b"}}, "vector.name"),
    ({"vector": {"id": "x", "extra": 1}}, "vector.extra"),
    ({"temperature": -1}, "temperature"), ({"temperature": 50}, "temperature"),
    ({"seed": -1}, "seed"), ({"seed": "1"}, "seed"), ({"positions": "prefix"}, "positions"),
    ({"chat": "yes"}, "chat"), ({"surprise": 1}, "surprise"),
    ({"prompt": "w30 \ud800"}, "prompt"), ({"alpha": 10**400}, "alpha"),
    ({"alphas": [1.0, -(10**400)]}, "alphas[1]"), ({"temperature": 10**400}, "temperature"),
    ({"max_tokens": 10**400}, "max_tokens"), ({"seed": 10**400}, "seed"),
    ({"alpha_unit": "percent"}, "alpha_unit"), ({"vector": {"id": "\udc00"}}, "vector.id"),
]


@pytest.mark.parametrize("change,field", BAD_GENERATE,
                         ids=[f"{f}-{i}" for i, (_, f) in enumerate(BAD_GENERATE)])
@pytest.mark.parametrize("path", ["/api/generate", "/api/stream"])
def test_bad_generate_request(client: Any, vid: str, path: str, change: dict, field: str
                              ) -> None:
    body = {**gen_body(vid), **change}
    if "alphas" in change:
        del body["alpha"]
    body = {k: v for k, v in body.items() if v is not None or k == "vector"}
    # Python's json writes NaN as the browser never would; the test client's own JSON (the
    # app's, strict) would turn it into null, so send the text.
    r = client.post(path, data=json.dumps(body), content_type="application/json")
    assert r.status_code == 400, r.data
    assert r.is_json and r.json["field"] == field and r.json["error"]


BAD_COMPUTE = [
    ({"positive": "w10"}, "positive"), ({"positive": []}, "positive"),
    ({"positive": ["w10"] * 65}, "positive"), ({"positive": ["w10", 3]}, "positive[1]"),
    ({"positive": ["w10", ""]}, "positive[1]"), ({"positive": [LONG]}, "positive[0]"),
    ({"negative": None}, "negative"), ({"method": "svd"}, "method"),
    ({"method": "pca", "negative": NEG[:2]}, "negative"), ({"chat": 1}, "chat"),
    ({"layer": 2}, "layer"),
]


@pytest.mark.parametrize("change,field", BAD_COMPUTE, ids=[f for _, f in BAD_COMPUTE])
def test_bad_compute_request(client: Any, change: dict, field: str) -> None:
    body = {k: v for k, v in {"positive": POS, "negative": NEG, **change}.items()
            if v is not None}
    r = client.post("/api/compute", json=body)
    assert r.status_code == 400 and r.json["field"] == field, r.json


def test_surrogates_huge_numbers_and_deep_nesting_everywhere(client: Any, vid: str) -> None:
    """Each a 400 naming the field (or none, for nesting), never a 500."""
    sweep = {"prompt": PROMPT, "vector": {"id": vid}, "alpha": 1.0}
    cases = [
        ("/api/compute", {"positive": ["w10 \udfff"], "negative": NEG}, "positive[0]"),
        ("/api/compute", {"positive": POS, "negative": NEG, "method": "\ud800"}, "method"),
        ("/api/sweep", {**sweep, "prompt": "\ud800"}, "prompt"),
        ("/api/sweep", {**sweep, "alpha": 10**400}, "alpha"),
        ("/api/sweep", {**sweep, "max_tokens": -(10**400)}, "max_tokens"),
        ("/api/sweep", {**sweep, "layers": [10**400]}, "layers"),
        ("/api/vectors", {"name": "a\ud800", "vector": {"id": vid}}, "name"),
    ]
    for path, body, field in cases:
        r = client.post(path, data=json.dumps(body), content_type="application/json")
        assert r.status_code == 400 and r.json["field"] == field, (path, r.json)
    for path in ("/api/compute", "/api/generate", "/api/stream", "/api/sweep", "/api/vectors"):
        for deep in ("[" * 100_000 + "]" * 100_000, '{"a": ' * 100_000 + "1" + "}" * 100_000):
            r = client.post(path, data=deep, content_type="application/json")
            assert r.status_code == 400 and "nested too deeply" in r.json["error"], path


@pytest.mark.filterwarnings("ignore:.*unknown to")  # the prompts are unknown tokens on purpose
def test_contrast_prompts_that_give_a_zero_vector(client: Any) -> None:
    """Prompts that encode to the same tokens (here: characters the tiny vocabulary lacks)
    give the same activations: a 400 saying so, not a vector that steers nothing."""
    for method in ("mean_diff", "pca"):
        r = client.post("/api/compute", json={"positive": ["\u200b", "\u200c"],
                                              "negative": ["x", "y"], "method": method})
        assert r.status_code == 400 and r.json["field"] == "positive", r.json
        assert "vector is zero" in r.json["error"] and "same tokens" in r.json["error"]


def test_other_bad_requests(client: Any, vid: str, hooked: HookedModel, tmp_path: Path) -> None:
    ok = {"positive": POS, "negative": NEG}
    cases = [
        (client.post("/api/compute", data=json.dumps(ok), content_type="text/plain"), 415, None),
        (client.post("/api/compute", data=json.dumps(ok)), 415, None),
        (client.post("/api/compute", data="{not json", content_type="application/json"),
         400, None),
        (client.post("/api/compute", json=[1, 2]), 400, None),
        (client.post("/api/compute", json={"positive": ["w1 " * 100] * 64,
                                           "negative": ["w2 " * 10000] * 64}), 413, None),
        (client.get("/api/compute"), 405, None),
        (client.get("/api/nothing"), 404, None),
        (client.get("/api/model", headers={"Host": "evil.example:5001"}), 400, None),
        (client.post("/api/vectors", json={"name": "../x", "vector": {"id": vid}}), 400, "name"),
        (client.post("/api/vectors", json={"name": ".hidden", "vector": {"id": vid}}),
         400, "name"),
        (client.post("/api/vectors", json={"name": "a" * 65, "vector": {"id": vid}}), 400,
         "name"),
        (client.post("/api/vectors", json={"name": "x", "vector": {"id": "gone"}}), 404,
         "vector.id"),
        (client.get("/api/vectors/.hidden"), 400, "name"),
        (client.delete("/api/vectors/nothing-here"), 404, "name"),
        (client.post("/api/sweep", json={"prompt": PROMPT, "vector": {"id": vid}}), 400, "alpha"),
        (client.post("/api/sweep", json={"prompt": PROMPT, "vector": {"id": vid}, "alpha": 1,
                                         "max_tokens": 65}), 400, "max_tokens"),
        (client.post("/api/sweep", json={"prompt": PROMPT, "vector": {"id": vid}, "alpha": 1,
                                         "mode": "behavior"}), 400, "mode"),
    ]
    for i, (r, status, field) in enumerate(cases):
        assert r.status_code == status, (i, r.data)
        assert r.is_json and r.json["error"] and r.json.get("field") == field, (i, r.json)
    # Traversal attempts never reach a file outside the library folder.
    secret = tmp_path / "secret.safetensors"
    SteeringVector({1: mx.ones((hooked.hidden_size,))}).save(secret)
    for path in ("/api/vectors/..%2Fsecret", "/api/vectors/../secret", "/api/vectors/%2E%2E"):
        assert client.delete(path).status_code in (400, 404, 405)
        assert client.get(path).status_code in (400, 404)
    assert secret.is_file()


# -- the command line ----------------------------------------------------------------------------

class _FakeServer:
    server_port = 5001

    def __init__(self, apps: list[Any], host: str, app: Any) -> None:
        apps.append((host, app))

    def serve_forever(self) -> None:
        raise KeyboardInterrupt

    def server_close(self) -> None:
        pass


def test_command_line(hooked: HookedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                      capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    import werkzeug.serving

    from mlux.experiments import steering_explorer as cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["explore"])
    assert (args.host, args.port, args.vectors, args.model) == (None, 5001, "~/.mlux/vectors",
                                                                  None)
    assert args.func is cli.run
    from mlux import web

    apps: list[Any] = []
    # Port 5001 may be in use on a shared machine: the busy-port check is tested on its own.
    monkeypatch.setattr(web, "check_port", lambda host, port: None)
    monkeypatch.setattr(werkzeug.serving, "make_server",
                        lambda host, port, app, **kw: _FakeServer(apps, host, app))
    common = ["--model", hooked.model_id, "--vectors", str(tmp_path)]
    assert cli.main(common) == 0
    assert apps[-1][0] == "127.0.0.1" and "WARNING" not in capsys.readouterr().err
    assert get_state_of(apps[-1][1]).allowed_hosts is not None
    assert cli.main([*common, "--host", "0.0.0.0", "--max-tokens", "64"]) == 0
    assert apps[-1][0] == "0.0.0.0" and "WARNING" in capsys.readouterr().err
    state = get_state_of(apps[-1][1])
    assert state.allowed_hosts is None and state.limits.max_tokens == 64
    assert cli.main([*common, "--port", "70000"]) == 2
    assert cli.main(["--model", str(tmp_path / "nothing")]) == 2
