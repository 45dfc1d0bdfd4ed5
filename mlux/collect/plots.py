"""Figures of the collection pipeline (matplotlib, Agg backend), written atomically as PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from mlux.atomic import atomic_write

__all__ = ["plot_separability", "plot_training_curve"]


def _figure(ncols: int, title: str):  # noqa: ANN202 - matplotlib types
    import matplotlib

    matplotlib.use("Agg")  # no display needed; never opens a window
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(5.5 * ncols, 4), squeeze=False)
    fig.suptitle(title)
    return plt, fig, axes[0]


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110,
                                                   bbox_inches="tight"))
    finally:
        plt.close(fig)
    return path


def _legend(ax: Any, twin: Any = None) -> None:
    """Below the axes, never over the data."""
    lines = ax.get_lines() + (twin.get_lines() if twin is not None else [])
    ax.legend(lines, [ln.get_label() for ln in lines], loc="upper center",
              bbox_to_anchor=(0.5, -0.2), ncol=2, fontsize="small", frameon=False)


def plot_training_curve(history: Mapping[str, Sequence[float]], path: Path, *, title: str
                        ) -> Path:
    """Reconstruction (MSE, FVE) and sparsity (L0, dead fraction) against training step."""
    plt, fig, (ax1, ax2) = _figure(2, title)
    steps = history["step"]
    ax1.plot(steps, history["mse"], color="tab:blue", label="MSE (scaled input)")
    ax1.set_xlabel("training step")
    ax1.set_ylabel("MSE")
    ax1.set_yscale("log")
    t1 = ax1.twinx()
    t1.plot(steps, history["fve"], color="tab:green", label="fraction of variance explained")
    t1.set_ylabel("FVE")
    _legend(ax1, t1)
    ax2.plot(steps, history["l0"], color="tab:orange", label="L0 (active latents per row)")
    ax2.set_xlabel("training step")
    ax2.set_ylabel("L0")
    t2 = ax2.twinx()
    t2.plot(steps, history["dead_fraction"], color="tab:red",
            label="dead fraction (no firing in log window)")
    t2.set_ylabel("dead fraction")
    t2.set_ylim(-0.02, 1.02)
    _legend(ax2, t2)
    return _save(plt, fig, path)


def plot_separability(rows: Sequence[Mapping[str, Any]], path: Path, *, title: str,
                      chance: float) -> Path:
    """Probe accuracy and relative difference-of-means norm per layer, one line per hook kind."""
    plt, fig, (ax1, ax2) = _figure(2, title)
    from matplotlib.ticker import MaxNLocator

    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    for kind in kinds:
        mine = sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["layer"])
        layers = [r["layer"] for r in mine]
        ax1.plot(layers, [r["probe_accuracy"] for r in mine], marker="o",
                 label=f"{kind}: linear probe (held out)")
        ax1.plot(layers, [r["mean_diff_accuracy"] for r in mine], marker="x", linestyle="--",
                 label=f"{kind}: mean-difference projection")
        ax2.plot(layers, [r["relative_diff_norm"] for r in mine], marker="o", label=kind)
    ax1.axhline(chance, color="gray", linestyle=":", label=f"chance ({chance:.2f})")
    lowest = min([chance] + [r[k] for r in rows for k in ("probe_accuracy",
                                                          "mean_diff_accuracy")])
    ax1.set_ylim(lowest - 0.05, 1.02)
    ax1.set_title("linear separability")
    ax1.set_ylabel("held-out accuracy")
    _legend(ax1)
    ax2.set_title("difference of means")
    ax2.set_ylabel("||mean_a - mean_b|| / mean ||x||")
    _legend(ax2)
    for ax in (ax1, ax2):
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _save(plt, fig, path)
