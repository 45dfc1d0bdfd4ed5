"""The explorer's vector library routes: save, list, load and delete; one 201 among concurrent
creators; files that are damaged, too large or not files at all answered cleanly, in strict
JSON, and never with the library folder's path."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import mlx.core as mx
import pytest

from mlux import HookedModel
from mlux.explorer import create_app
from mlux.testing import save_tiny_model
from mlux.vectors import SteeringVector

POS, NEG = ["w10 w11 w12", "w13 w14 w15"], ["w20 w21 w22", "w23 w24 w25"]


@pytest.fixture(scope="module")
def hooked(tmp_path_factory: pytest.TempPathFactory) -> HookedModel:
    folder = tmp_path_factory.mktemp("explorer-library") / "tiny"
    return HookedModel.from_pretrained(str(save_tiny_model(folder, "llama", num_layers=3)))


@pytest.fixture
def lib(tmp_path: Path) -> Path:
    return tmp_path / "private" / "vectors"


@pytest.fixture
def app(hooked: HookedModel, lib: Path) -> Any:
    app = create_app(hooked, vectors_dir=lib)
    yield app
    assert hooked.active_hooks() == {}


def strict(r: Any) -> Any:
    """The body as browsers parse it: NaN or Infinity would fail here."""
    def refuse(token: str) -> None:
        raise AssertionError(f"not JSON: {token} in {r.data[:200]!r}")

    return json.loads(r.data, parse_constant=refuse)


def test_save_list_load_delete(app: Any, lib: Path) -> None:
    client = app.test_client()
    vid = client.post("/api/compute", json={"positive": POS, "negative": NEG}).json["id"]
    body = {"name": "happy-sad", "vector": {"id": vid}}
    r = client.post("/api/vectors", json=body)
    assert r.status_code == 201 and r.json["file"] == "happy-sad.safetensors"
    assert (lib / "happy-sad.safetensors").is_file()
    again = client.post("/api/vectors", json=body)
    assert again.status_code == 409 and again.json["field"] == "name"
    assert client.post("/api/vectors", json={**body, "overwrite": True}).status_code == 201
    (listed,) = client.get("/api/vectors").json["vectors"]
    assert listed["name"] == "happy-sad" and listed["compatible"] and len(listed["norms"]) == 3
    loaded = client.get("/api/vectors/happy-sad").json
    assert loaded["metadata"]["positive"] == POS and loaded["layers"] == [0, 1, 2]
    gen = {"prompt": "w30 w31", "layers": [1], "alpha": 4.0, "max_tokens": 6}
    by_id = client.post("/api/generate", json={**gen, "vector": {"id": vid}}).json
    by_name = client.post("/api/generate", json={**gen, "vector": {"name": "happy-sad"}}).json
    assert [r["text"] for r in by_name["rows"]] == [r["text"] for r in by_id["rows"]]
    # The answer carries the library as it now is, for the page to show.
    assert client.delete("/api/vectors/happy-sad").json == {"deleted": "happy-sad", "vectors": []}
    gone = client.get("/api/vectors/happy-sad")
    assert gone.status_code == 404 and gone.json["field"] == "name"


def test_concurrent_creates_one_201_the_rest_409(app: Any, lib: Path) -> None:
    vid = app.test_client().post("/api/compute", json={"positive": POS, "negative": NEG}
                                 ).json["id"]
    barrier, statuses = threading.Barrier(8), []

    def save() -> None:
        client = app.test_client()
        barrier.wait()
        r = client.post("/api/vectors", json={"name": "race", "vector": {"id": vid},
                                              "overwrite": False})
        statuses.append((r.status_code, r.json.get("field")))

    threads = [threading.Thread(target=save) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(statuses) == [(201, None)] + [(409, "name")] * 7
    assert sorted(p.name for p in lib.iterdir()) == ["race.safetensors"]


def test_a_folder_named_like_a_vector(app: Any, lib: Path) -> None:
    client = app.test_client()
    vid = client.post("/api/compute", json={"positive": POS, "negative": NEG}).json["id"]
    (lib / "adir.safetensors").mkdir(parents=True)
    r = client.delete("/api/vectors/adir")
    assert r.status_code == 404 and r.json["field"] == "name" and "is a folder" in r.json["error"]
    for overwrite in (False, True):
        r = client.post("/api/vectors", json={"name": "adir", "vector": {"id": vid},
                                              "overwrite": overwrite})
        assert r.status_code == 409 and "is a folder" in r.json["error"], r.json
    assert client.get("/api/vectors/adir").status_code == 404
    assert client.get("/api/vectors").json["vectors"] == []
    assert (lib / "adir.safetensors").is_dir()


def test_unusable_files_answer_cleanly(app: Any, hooked: HookedModel, lib: Path,
                                       tmp_path: Path) -> None:
    """A vector whose norm overflows float32, a truncated file, junk, one of another width:
    listed with an error (or as incompatible), refused with 422 / 400 on use, strict JSON,
    and no message shows where the library is."""
    d = hooked.hidden_size
    lib.mkdir(parents=True)
    mx.save_safetensors(str(lib / "huge.safetensors"), {"residuals_1": mx.full((d,), 3e38)})
    good = SteeringVector({1: mx.ones((d,))}).save(lib / "only-one.safetensors").read_bytes()
    (lib / "cut.safetensors").write_bytes(good[:-8])
    (lib / "junk.safetensors").write_bytes(b"not a file")
    SteeringVector({1: mx.ones((32,))}).save(lib / "narrow.safetensors")
    client = app.test_client()
    listing = {v["name"]: v for v in strict(client.get("/api/vectors"))["vectors"]}
    assert sorted(listing) == ["cut", "huge", "junk", "narrow", "only-one"]
    assert "norm overflows float32" in listing["huge"]["error"]
    assert "truncated" in listing["cut"]["error"] and "error" in listing["junk"]
    assert not listing["narrow"]["compatible"] and listing["only-one"]["compatible"]
    messages = [v["error"] for v in listing.values() if "error" in v]
    gen = {"prompt": "w30 w31", "layers": [1], "alpha": 1.0, "max_tokens": 4}
    for name in ("huge", "cut", "junk"):
        r = client.get(f"/api/vectors/{name}")
        assert r.status_code == 422 and strict(r)["field"] == "name", r.json
        g = client.post("/api/generate", json={**gen, "vector": {"name": name}})
        assert g.status_code == 422 and g.json["field"] == "vector.name"
        messages += [r.json["error"], g.json["error"]]
    r = client.post("/api/generate", json={**gen, "vector": {"name": "only-one"}, "layers": [2]})
    assert r.status_code == 400 and r.json["field"] == "layers"
    r = client.post("/api/generate", json={**gen, "vector": {"name": "narrow"}})
    assert r.status_code == 400 and r.json["field"] == "vector" and "hidden size" in r.json["error"]
    missing = client.delete("/api/vectors/nothing")
    messages.append(missing.json["error"])
    assert len(messages) == 10 and not [m for m in messages if str(tmp_path) in m], messages


def test_write_failures_name_no_folder(app: Any, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    client = app.test_client()
    vid = client.post("/api/compute", json={"positive": POS, "negative": NEG}).json["id"]

    def refuse(self: SteeringVector, path: Path) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(SteeringVector, "save", refuse)
    for overwrite in (True, False):
        r = client.post("/api/vectors", json={"name": "x", "vector": {"id": vid},
                                              "overwrite": overwrite})
        assert r.status_code == 500 and r.json["field"] == "name", r.json
        assert "Permission denied" in r.json["error"] and "x.safetensors" in r.json["error"]
        assert str(tmp_path) not in r.json["error"]
