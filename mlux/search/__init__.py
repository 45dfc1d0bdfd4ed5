"""`mlux search`: find the layer, strength and window of a steering vector (or the weights of a
directional ablation) with optuna's multi-objective TPE, scoring behaviour and damage (first-token
KL on harmless prompts) together, and hand back the Pareto front.

    from mlux.search import search
    res = search(hooked, (positive, negative), prompts, scorer, harmless=neutral, trials=40,
                 seed=0, out="search-out")
    res.best(max_kl=0.1).params; res.to_vector().save("picked.safetensors")
"""

from __future__ import annotations

from .engine import SCHEMA, search
from .objectives import Measurement, TrialScorer, ablation_hooks, steering_of
from .result import SearchResult, Trial, pareto_front
from .space import MODES, WINDOWS, SearchSpace, interpolated_direction, layer_weights
from .tokens import behavior_words, token_ids, token_logodds

__all__ = ["MODES", "SCHEMA", "WINDOWS", "Measurement", "SearchResult", "SearchSpace", "Trial",
           "TrialScorer", "ablation_hooks", "behavior_words", "interpolated_direction",
           "layer_weights", "pareto_front", "search", "steering_of", "token_ids",
           "token_logodds"]
