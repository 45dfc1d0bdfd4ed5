"""The explorer's conditional steering: a generation request may carry a condition; its steered
rows then steer only if the prompt fires it, and the events report the prompt's score."""

from __future__ import annotations

from typing import Any, Optional

import mlx.core as mx

from mlux.conditions import Condition
from mlux.explorer.state import ExplorerState
from mlux.explorer.validation import GenerateRequest
from mlux.model import HookedModel

__all__ = ["condition_report", "explorer_condition"]


def explorer_condition(state: ExplorerState, req: GenerateRequest) -> Optional[Condition]:
    """The request's condition on its (computed or library) vector, checked against the model;
    problems are 400s naming `condition.*`."""
    if req.condition is None:
        return None
    vector = state.resolve(req.condition.vector, field="condition.vector")
    return req.condition.settings.condition(vector, "condition.vector")


def condition_report(hooked: HookedModel, cond: Condition, tokens: list[int]) -> dict[str, Any]:
    """What the steered rows' decoder decides from the prompt, for display: the prompt's cosine
    with the condition vector and whether the condition fires (the baseline row never steers)."""
    (score,) = cond.scores(hooked, [tokens])
    return {"layer": cond.layer, "threshold": cond.threshold, "comparator": cond.comparator,
            "summary": cond.summary, "score": score[0],
            "fired": bool(cond.decide(mx.array(score)).tolist()[0])}
