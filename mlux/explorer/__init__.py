"""The steering explorer: a local Flask app to steer a model interactively.

`create_app(hooked, vectors_dir=...)` builds the app; `python -m mlux.experiments.steering_explorer`
(or `mlux explore`) serves it at http://127.0.0.1:5001. The JSON API is in `docs/explorer.md`.

Modules, in reading order: `validation` (request schemas), `engine` (the model work), `state`
(per-app state), `api` and `library_api` (the blueprints), `app` (the factory); the guard
rails every route shares (field reader, `RequestError`, Host check, headers, strict JSON,
server start) are `mlux.web`.
"""

from __future__ import annotations

from mlux.explorer.app import create_app
from mlux.explorer.engine import SweepFn, projection_sweep
from mlux.explorer.state import ExplorerState, get_state
from mlux.explorer.validation import Limits
from mlux.web import RequestError

__all__ = [
    "ExplorerState",
    "Limits",
    "RequestError",
    "SweepFn",
    "create_app",
    "get_state",
    "projection_sweep",
]
