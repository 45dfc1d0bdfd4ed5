"""Where do two categories separate? Per hook point: difference-of-means norm and held-out
accuracy of a linear probe (L2 logistic regression, numpy) and of the mean-difference direction.

The figure this makes is the "where does refusal emerge" plot: collect harmful vs harmless
prompts at every layer, then `analyze_layers`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from mlux.atomic import PathLike, atomic_write_json
from mlux.evaluation import wilson_interval
from mlux.layers import parse_hook_name

from .manifest import open_collection
from .plots import plot_separability

__all__ = ["analyze_layers", "fit_logistic_probe", "layer_separability", "split_indices"]

_ANALYSIS_POSITIONS = ("last", "mean")


def split_indices(n: int, test_fraction: float, rng: np.random.Generator
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Random train/test index split with at least one row on each side."""
    order = rng.permutation(n)
    n_test = min(max(1, round(n * test_fraction)), n - 1)
    return order[n_test:], order[:n_test]


def fit_logistic_probe(x: np.ndarray, y: np.ndarray, *, l2: float = 1e-2, steps: int = 300
                       ) -> Callable[[np.ndarray], np.ndarray]:
    """L2-regularised logistic regression by Nesterov gradient descent on standardised features;
    returns a function giving P(y = 1) for new rows."""
    mu, sd = x.mean(axis=0), x.std(axis=0)
    # Constant features stay unscaled: dividing float noise by ~0 would make it look like signal.
    sd = np.where(sd > 1e-6 * (np.abs(x).mean() + 1e-12), sd, 1.0)
    z = np.concatenate([(x - mu) / sd, np.ones((len(x), 1))], axis=1)
    # Step 1/L, with L bounding the loss's curvature: ||Z||_2^2 / (4n) + l2 (power iteration).
    v = np.ones(z.shape[1]) / math.sqrt(z.shape[1])
    for _ in range(20):
        v = z.T @ (z @ v)
        v /= np.linalg.norm(v)
    lr = 1.0 / (np.linalg.norm(z @ v) ** 2 / (4 * len(z)) + l2)
    w = prev = np.zeros(z.shape[1])
    for t in range(1, steps + 1):
        look = w + (t - 1) / (t + 2) * (w - prev)
        p = 1 / (1 + np.exp(-np.clip(z @ look, -30, 30)))
        grad = z.T @ (p - y) / len(z) + l2 * np.r_[look[:-1], 0.0]
        prev, w = w, look - lr * grad
    return lambda q: 1 / (1 + np.exp(-np.clip(
        np.concatenate([(q - mu) / sd, np.ones((len(q), 1))], axis=1) @ w, -30, 30)))


def layer_separability(a: np.ndarray, b: np.ndarray, *, test_fraction: float = 0.3,
                       seed: int = 0) -> dict[str, float]:
    """Separability of two sets of activations `(n_a, D)`, `(n_b, D)` at one hook point."""
    if min(len(a), len(b)) < 2:
        raise ValueError(f"need at least 2 samples per category for a held-out split, got "
                         f"{len(a)} and {len(b)}")
    rng = np.random.default_rng(seed)
    (tr_a, te_a), (tr_b, te_b) = (split_indices(len(a), test_fraction, rng),
                                  split_indices(len(b), test_fraction, rng))
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    diff = a64.mean(0) - b64.mean(0)
    scale = float(np.linalg.norm(np.concatenate([a64, b64]), axis=1).mean())
    x_tr = np.concatenate([a64[tr_a], b64[tr_b]])
    y_tr = np.r_[np.ones(len(tr_a)), np.zeros(len(tr_b))]
    x_te = np.concatenate([a64[te_a], b64[te_b]])
    y_te = np.r_[np.ones(len(te_a)), np.zeros(len(te_b))]
    probe = fit_logistic_probe(x_tr, y_tr)
    # Mean-difference direction from the training split, threshold halfway between the means.
    d_tr = a64[tr_a].mean(0) - b64[tr_b].mean(0)
    mid = (a64[tr_a].mean(0) + b64[tr_b].mean(0)) / 2
    accuracy = float(((probe(x_te) > 0.5) == y_te).mean())
    return {
        "diff_norm": float(np.linalg.norm(diff)),
        "relative_diff_norm": float(np.linalg.norm(diff) / scale) if scale > 0 else 0.0,
        "mean_norm": scale,
        "probe_accuracy": accuracy,
        "probe_accuracy_ci95": list(wilson_interval(accuracy * len(y_te), len(y_te))),
        "probe_train_accuracy": float(((probe(x_tr) > 0.5) == y_tr).mean()),
        "mean_diff_accuracy": float((((x_te - mid) @ d_tr > 0) == y_te).mean()),
        "n_train": int(len(y_tr)), "n_test": int(len(y_te)),
    }


def _first_reaching(rows: list[dict[str, Any]], threshold: float) -> Optional[dict[str, Any]]:
    """The earliest layer (manifest order within a layer) whose probe accuracy >= threshold."""
    order = sorted(range(len(rows)), key=lambda i: (rows[i]["layer"], i))
    for i in order:
        if rows[i]["probe_accuracy"] >= threshold:
            r = rows[i]
            return {"hook": r["hook"], "layer": r["layer"], "threshold": threshold,
                    "probe_accuracy": r["probe_accuracy"],
                    "probe_accuracy_ci95": r["probe_accuracy_ci95"], "n_test": r["n_test"]}
    return None


def analyze_layers(result_dir: PathLike, *, categories: Optional[Sequence[str]] = None,
                   position: str = "last", hooks: Optional[Sequence[str]] = None,
                   test_fraction: float = 0.3, seed: int = 0, threshold: float = 0.9,
                   allow_partial: bool = False, out_dir: Optional[PathLike] = None,
                   echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Separability of two collected categories at every collected hook point; writes
    `separability.json` and `separability.png` to `out_dir` (default `<result_dir>/analysis`).

    `separates_at` is the first layer whose held-out probe accuracy reaches `threshold`, with a
    95% Wilson interval from the test-set size; `best_hook` the most accurate one (ties: the
    earliest). An incomplete collection is refused unless `allow_partial`; the counts actually
    used are in `samples` (and `samples_requested`)."""
    cats = list(categories) if categories else None
    if cats is not None and len(set(cats)) != len(cats):
        raise ValueError(f"categories must be two different names, got {cats}")
    if position not in _ANALYSIS_POSITIONS:
        raise ValueError(f"analysis takes one row per prompt: position must be one of "
                         f"{', '.join(_ANALYSIS_POSITIONS)}, got {position!r}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    manifest = open_collection(Path(result_dir), categories=cats, allow_partial=allow_partial,
                               echo=echo)
    cats = cats or manifest.categories
    if len(cats) != 2:
        raise ValueError(f"analyze-layers compares exactly two categories; the collection has "
                         f"{manifest.categories} (choose two with --categories A B)")
    num_layers = manifest.data["model"]["num_layers"]
    rows = []
    for hook in hooks or manifest.hook_points:
        kind, layer = parse_hook_name(hook, num_layers)
        a, b = (manifest.store(hook, position, [c]).load_all() for c in cats)
        stats = layer_separability(a, b, test_fraction=test_fraction, seed=seed)
        rows.append({"hook": hook, "kind": kind, "layer": layer, **stats})
        lo, hi = stats["probe_accuracy_ci95"]
        echo(f"{hook:<16} probe {stats['probe_accuracy']:.3f} [{lo:.2f}, {hi:.2f}]  mean-diff "
             f"{stats['mean_diff_accuracy']:.3f}  |diff|/|x| {stats['relative_diff_norm']:.3f}")
    used = {c: n for c, (n, _) in manifest.samples(cats).items()}
    best = max(range(len(rows)), key=lambda i: (rows[i]["probe_accuracy"], -rows[i]["layer"], -i))
    first = _first_reaching(rows, threshold)
    echo(f"separates at {first['hook']} (probe {first['probe_accuracy']:.3f} >= {threshold})"
         if first else f"no hook point reaches probe accuracy {threshold}")
    report = {"result_dir": str(result_dir), "model": manifest.model_id, "categories": cats,
              "samples": used, "samples_requested": {c: n for c, (_, n) in
                                                     manifest.samples(cats).items()},
              "position": position, "test_fraction": test_fraction, "seed": seed,
              "threshold": threshold, "separates_at": first, "best_hook": rows[best]["hook"],
              "layers": rows}
    out = Path(out_dir) if out_dir else Path(result_dir) / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "separability.json", report)
    chance = max(used.values()) / sum(used.values())
    plot_separability(rows, out / "separability.png", chance=chance,
                      title=f"{cats[0]} vs {cats[1]} ({manifest.model_id}, position: {position})")
    report["paths"] = {"json": str(out / "separability.json"),
                       "plot": str(out / "separability.png")}
    return report
