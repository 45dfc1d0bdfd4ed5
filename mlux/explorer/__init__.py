"""The steering explorer: a local Flask app to steer a model interactively.

`create_app(hooked, vectors_dir=...)` builds the app; `python -m mlux.experiments.steering_explorer`
(or `mlux explore`) serves it at http://127.0.0.1:5001. The JSON API is in `docs/explorer.md`.
"""

from __future__ import annotations

from mlux.explorer.app import ExplorerState, create_app, get_state
from mlux.explorer.engine import SweepFn, projection_sweep
from mlux.explorer.validation import Limits, ValidationError

__all__ = [
    "ExplorerState",
    "Limits",
    "SweepFn",
    "ValidationError",
    "create_app",
    "get_state",
    "projection_sweep",
]
