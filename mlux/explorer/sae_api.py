"""The explorer's SAE panel: the top active features of a loaded SAE (`mlux explore --sae DIR`)
for each token of the prompt and of its greedy continuation, optionally generated with one
feature clamped (error term kept). The SAE lives in `app.extensions[SAE_KEY]`; these routes
answer 404 when none was loaded.

    GET  /api/sae            {"loaded": bool, "hook", "architecture", "d_sae", ...}
    POST /api/sae/features   {"prompt", "k", "max_tokens", "chat", "clamp": {"feature", "value"}}
"""

from __future__ import annotations

from typing import Any, Optional

from flask import Blueprint, Flask, Response, current_app, jsonify

from mlux.explorer.state import get_state
from mlux.sae.reading import read_features
from mlux.web import Fields, RequestError, json_object

__all__ = ["SAE_KEY", "install_sae", "sae_bp"]

SAE_KEY = "mlux.explorer.sae"
sae_bp = Blueprint("explorer_sae", __name__)
_MAX_K = 20


def install_sae(app: Flask, sae: Any) -> None:
    """Give the app an SAE (checked against its model) and the panel's routes."""
    if sae is not None:
        hooked = app.extensions["mlux.explorer"].hooked
        sae.check_model(hooked.hidden_size, hooked.num_layers)
        if sae.config.hook not in hooked.hook_points:
            raise ValueError(f"the SAE's hook_name {sae.config.hook_name!r} is not a hook "
                             "point of this model")
    app.extensions[SAE_KEY] = sae
    app.register_blueprint(sae_bp)


def _sae() -> Any:
    sae = current_app.extensions.get(SAE_KEY)
    if sae is None:
        raise RequestError("no SAE is loaded (start the explorer with --sae DIR)", status=404)
    return sae


@sae_bp.get("/api/sae")
def describe() -> Response:
    sae = current_app.extensions.get(SAE_KEY)
    if sae is None:
        return jsonify(loaded=False)
    c = sae.config
    return jsonify(loaded=True, hook=c.hook, hook_name=c.hook_name, architecture=c.architecture,
                   d_sae=c.d_sae, model_name=c.model_name, neuronpedia_id=c.neuronpedia_id)


def _clamp(f: Fields, d_sae: int) -> Optional[tuple[int, float]]:
    raw = f.get("clamp")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise f.fail("clamp", 'must be an object {"feature": int, "value": number} or null')
    c = Fields(raw, "clamp.")
    feature = c.integer("feature", 0, d_sae - 1)
    if feature is None:
        raise c.fail("feature", f"is required (0..{d_sae - 1})")
    value = c.number("value", -1e6, 1e6)
    c.done()
    return feature, value


@sae_bp.post("/api/sae/features")
def features() -> Response:
    sae, state = _sae(), get_state()
    f = Fields(json_object())
    prompt = f.text("prompt", state.limits.max_prompt_chars)
    k = f.integer("k", 1, min(_MAX_K, sae.config.d_sae), 5)
    max_tokens = f.integer("max_tokens", 0, state.limits.max_tokens, 16)
    chat = f.boolean("chat", False)
    clamp = _clamp(f, sae.config.d_sae)
    f.done()
    rows = state.run(lambda: read_features(  # on the model's thread; a ValueError is a 400
        state.hooked, sae, prompt, k=k, max_tokens=max_tokens, clamp=clamp, chat=chat))
    return jsonify(hook=sae.config.hook, clamp=None if clamp is None else
                   {"feature": clamp[0], "value": clamp[1]},
                   tokens=[r.to_json() for r in rows])
