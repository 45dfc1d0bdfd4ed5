"""The explorer's Flask app factory: `create_app(hooked, vectors_dir=...)`.

The app gets the shared web guard rails (`mlux.web.install`: Host allow-list, security headers,
body cap, strict JSON errors), its state in `app.extensions` (`state.py`) and two blueprints:
the page, generation and sweeps (`api.py`), the vector library (`library_api.py`).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Optional

from flask import Flask

from mlux import web
from mlux.builtin import BUILTIN_MODELS
from mlux.contrasts import contrast_task
from mlux.explorer.api import bp, error_body
from mlux.explorer.engine import SweepFn, projection_sweep
from mlux.explorer.library_api import library_bp
from mlux.explorer.sae_api import install_sae
from mlux.explorer.state import STATE_KEY, ExplorerState, get_state
from mlux.explorer.validation import Limits
from mlux.info import model_info
from mlux.model import HookedModel
from mlux.vector_library import VectorLibrary
from mlux.web import LOOPBACK_HOSTS

__all__ = ["LOOPBACK_HOSTS", "ExplorerState", "create_app", "default_settings", "get_state"]


def default_settings(hooked: HookedModel) -> dict[str, Any]:
    """Starting values for the page: contrast prompts, a prompt, a layer and an alpha."""
    task = contrast_task(hooked.model_id or "", None)
    # A prompt of more than one word: after one token the sweep's readout has little to read.
    prompt = next((p for p in task.prompts if len(p.split()) > 1), task.prompts[0])
    pos, neg = task.positive, task.negative
    alpha = max(task.alphas)
    builtin = hooked.model_id in BUILTIN_MODELS
    layers = hooked.config.get_recommended_layers("default") or [hooked.num_layers // 2]
    has_template = getattr(hooked.tokenizer, "chat_template", None) is not None
    return {"positive": list(pos), "negative": list(neg), "prompt": prompt,
            "layers": [int(layers[0])], "alpha": alpha, "alpha_range": max(20.0, 2.5 * alpha),
            "compare_alphas": [-alpha, alpha, 2 * alpha], "max_tokens": 32,
            "chat": bool(has_template and not builtin)}


def create_app(
    hooked: HookedModel,
    *,
    vectors_dir: str | os.PathLike[str],
    limits: Optional[Limits] = None,
    defaults: Optional[Mapping[str, Any]] = None,
    sweeps: Optional[Mapping[str, SweepFn]] = None,
    lock_timeout: float = 300.0,
    allowed_hosts: Optional[frozenset[str]] = LOOPBACK_HOSTS,
    sae: Any = None,
    scorers: Optional[Mapping[str, Callable[[str], Optional[bool]]]] = None,
) -> Flask:
    """The explorer app for an already loaded model.

    `sweeps` adds layer-sweep modes next to the built-in "projection" (see `engine.SweepFn`);
    `scorers` (label -> text -> True/False/None) score every generated column;
    `allowed_hosts=None` accepts any Host header (for `--host`), else requests naming another
    host are refused, which stops DNS-rebinding pages from reaching a loopback server
    (`mlux.web.allowed_hosts_for(bind_address)` picks the right one). `sae` (a
    `mlux.sae.SparseAutoencoder`) enables the SAE panel (`sae_api.py`).
    """
    # It may not exist yet (the first save makes it), but must be nothing else than a folder.
    library = VectorLibrary(web.vector_folder(vectors_dir, must_exist=False))
    limits = limits or Limits()
    app = Flask(__name__)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    web.install(app, error_body=error_body, allowed_hosts=allowed_hosts, csp=web.PAGE_CSP,
                max_body_bytes=limits.max_body_bytes, no_store_prefix="/api/")
    settings = default_settings(hooked)
    settings.update(defaults or {})
    app.extensions[STATE_KEY] = ExplorerState(
        hooked=hooked, library=library, scorers=dict(scorers or {}),
        limits=limits, info=model_info(hooked), defaults=settings,
        sweeps={"projection": projection_sweep, **(sweeps or {})}, lock_timeout=lock_timeout,
        allowed_hosts=allowed_hosts)
    app.register_blueprint(bp)
    app.register_blueprint(library_bp)
    install_sae(app, sae)
    return app
