"""The vector library's routes: list, save, load and delete the named vectors in the app's
folder (`mlux.vector_library`). Messages name files, never the folder they are in."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

from mlux.explorer.api import describe_vector
from mlux.explorer.state import ExplorerState, get_state
from mlux.explorer.validation import SaveRequest, VectorRef, parse_save
from mlux.vector_library import validate_name
from mlux.web import RequestError, json_object

__all__ = ["library_bp"]

library_bp = Blueprint("explorer_library", __name__)


def _name(name: str) -> str:
    try:
        return validate_name(name)
    except ValueError as exc:
        raise RequestError(str(exc), "name") from None


def _listing(state: ExplorerState) -> list[dict[str, Any]]:
    """The library as the page lists it (on the model's thread: a file without mlux's header
    is loaded for its norms); a file that cannot be read is listed with its error."""
    out = []
    for entry in state.library.list():
        norms = entry.get("norms")
        if isinstance(norms, dict):
            entry["norms"] = [norms[k] for k in sorted(norms)]
        entry["compatible"] = entry.get("hidden_size") == state.hooked.hidden_size
        out.append(entry)
    return out


@library_bp.get("/api/vectors")
def list_vectors() -> Response:
    state = get_state()
    return jsonify(vectors=state.run(lambda: _listing(state)))


@library_bp.post("/api/vectors")
def save_vector() -> tuple[Response, int]:
    """Create (one of many concurrent creators wins, the rest get 409) or, with overwrite,
    replace; both atomic."""
    state = get_state()
    req = parse_save(json_object())
    return jsonify(state.run(lambda: _save(state, req))), 201


def _save(state: ExplorerState, req: SaveRequest) -> dict[str, Any]:
    vector = state.resolve(req.vector)
    try:
        path = state.library.save(req.name, vector, overwrite=req.overwrite)
    except FileExistsError:
        raise RequestError(f'a vector named {req.name!r} exists; send "overwrite": true to '
                           "replace it", "name", 409) from None
    except IsADirectoryError as exc:
        raise RequestError(str(exc), "name", 409) from None
    except OSError as exc:
        raise RequestError(f"could not save the vector: {exc}", "name", 500) from None
    return {"name": req.name, "file": path.name, **describe_vector(vector)}


@library_bp.get("/api/vectors/<name>")
def load_vector(name: str) -> Response:
    state = get_state()
    ref = VectorRef(name=_name(name))

    def load() -> dict[str, Any]:
        vector = state.resolve(ref, field="name")
        return {"name": name, "metadata": vector.metadata, **describe_vector(vector)}

    return jsonify(state.run(load))


@library_bp.delete("/api/vectors/<name>")
def delete_vector(name: str) -> Response:
    """Delete, then answer with the library as it now is: the page shows that list, so it can
    never say "Deleted" next to a list that still holds the vector."""
    state = get_state()
    try:
        state.library.delete(_name(name))
    except FileNotFoundError as exc:
        raise RequestError(str(exc), "name", 404) from None
    except OSError as exc:
        raise RequestError(f"could not delete {name!r}: {exc}", "name", 500) from None
    return jsonify(deleted=name, vectors=state.run(lambda: _listing(state)))
