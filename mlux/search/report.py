"""How a search is shown: a console table of the Pareto front and a PNG of behaviour against
KL (every trial, the front, the chosen point)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from ..experiments.common import finish_axes, save_plot
from .result import SearchResult, Trial

__all__ = ["front_table", "plot_front"]


def _shape(t: Trial) -> str:
    p = t.params
    if "distance" not in p:
        return "one layer"
    return f"+-{p['distance']:.1f} to {p['min_weight']:.2f}"


def front_table(res: SearchResult, chosen: Optional[Trial] = None) -> str:
    """The front by increasing KL, one line per trial; `*` marks the chosen one."""
    size = "strength" if res.mode == "steer" else "weight"
    lines = [f"Pareto front of {len(res.trials)} trials ({res.mode}, behaviour "
             f"{res.settings.get('behavior')} {'up' if res.maximize else 'down'}, KL down):",
             f"  trial | layer | {size:>8} | window    | profile          | behaviour | KL     "
             "| ppl" + (" | avoid" if any("false_positive" in t.extras for t in res.trials)
                        else "")]
    for t in res.front:
        p = t.params
        ppl = t.extras.get("perplexity")
        mark = "*" if chosen is not None and t.number == chosen.number else " "
        lines.append(
            f"{mark} {t.number:>5} | {p['layer']:5.2f} | "
            f"{p.get('strength', p.get('max_weight', 0.0)):8.3f} | {p['window']:<9} | "
            f"{_shape(t):<16} | {t.behavior:9.1%} | {t.kl:6.4f} | "
            f"{'-' if ppl is None else f'{ppl:.3g}'}"
            + (f" | {t.extras['false_positive']:.1%}" if "false_positive" in t.extras else ""))
    return "\n".join(lines)


def plot_front(res: SearchResult, path: str | Path, chosen: Optional[Trial] = None) -> Path:
    front = res.front

    def draw(ax: Any) -> None:
        ax.scatter([t.kl for t in res.trials], [t.behavior for t in res.trials], s=14,
                   color="grey", alpha=0.6, label="trial")
        ax.plot([t.kl for t in front], [t.behavior for t in front], "o-", color="tab:red",
                label="Pareto front")
        if chosen is not None:
            ax.scatter([chosen.kl], [chosen.behavior], marker="*", s=220, color="gold",
                       edgecolor="black", zorder=5, label=f"chosen (trial {chosen.number})")
        ax.set_xscale("symlog", linthresh=1e-3)
        ax.set_xlabel("first-token KL on harmless prompts (damage)")
        ax.set_ylabel(f"behaviour ({res.settings.get('behavior')})")
        ax.set_ylim(-0.05, 1.05)
        ax.set_title(f"mlux search ({res.mode}): behaviour against damage")
        finish_axes(ax)

    return save_plot(path, draw)
