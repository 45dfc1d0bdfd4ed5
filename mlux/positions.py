"""Where to steer: windows of absolute token positions, one meaning everywhere.

A window is the set of *input* positions whose residuals get the vector; n is the prompt length
and the output at position n - 1 predicts the first generated token:

    position   0    1   ...  n-2      n-1      n    n+1 ...
    predicts   p1   p2  ...  p(n-1)   g0       g1   g2  ...
               |---- "prompt" ---|    |---- "generated" ---->    "all" = both
"""

from __future__ import annotations

from typing import Optional, Union

__all__ = ["Positions", "resolve_positions"]

# "all" | "prompt" | "generated" | k (from position k on) | (start, end), half-open
Positions = Union[str, int, tuple[int, Optional[int]]]
_POSITION_CHOICES = "'all', 'prompt', 'generated', an int k (from position k on) or (start, end)"


def resolve_positions(positions: Positions, prompt_length: Optional[int]) -> tuple[int, float]:
    """Turn a where-to-steer option into a half-open range [start, end) of absolute positions:
    "all" = [0, inf), "prompt" = [0, n - 1), "generated" = [n - 1, inf)."""
    if positions in ("prompt", "generated") and prompt_length is None:
        raise ValueError(f"positions={positions!r} needs prompt_length (the prompt's token count)")
    if positions == "all":
        return 0, float("inf")
    if positions == "prompt":
        return 0, max(prompt_length - 1, 0)
    if positions == "generated":
        return max(prompt_length - 1, 0), float("inf")
    if isinstance(positions, int) and not isinstance(positions, bool) and positions >= 0:
        return positions, float("inf")
    if (isinstance(positions, tuple) and len(positions) == 2 and isinstance(positions[0], int)
            and (positions[1] is None or isinstance(positions[1], int))):
        end = float("inf") if positions[1] is None else positions[1]
        if positions[0] < 0 or end < positions[0]:
            raise ValueError(f"positions range {positions!r} must satisfy 0 <= start <= end")
        return positions[0], end
    raise ValueError(f"unknown positions {positions!r}; valid: {_POSITION_CHOICES}")
