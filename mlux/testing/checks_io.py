"""The on-disk half of the coverage checks: a saved tiny folder loads through every mlx-lm loader
(`load`, `sharded_load`) to the same logits, and `mlux bake` either works exactly (plain mlx-lm
on the baked folder == the hooked original) or refuses, naming why."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

import mlx.core as mx
import mlx_lm
from mlx_lm.utils import sharded_load

from mlux.bake import bake_ablation, bake_steering
from mlux.model import HookedModel
from mlux.steering import steering_hooks
from mlux.vectors import SteeringVector

from .checks import PROMPT, Outcome, close
from .modules import tiny_model

__all__ = ["check_bake_ablation", "check_bake_steering", "check_loaders", "run_io_checks"]

_WORDS = "w7 w8 w9"


def check_loaders(src: Path, reference: mx.array) -> dict[str, Outcome]:
    """`mlx_lm.load` and `sharded_load` (one process: a 1-rank group) with mlx-lm's defaults."""
    out: dict[str, Outcome] = {}
    tokens = mx.array([PROMPT])
    model, tok = mlx_lm.load(str(src))
    ids = list(tok.encode(_WORDS, add_special_tokens=False))
    same = close(model(tokens), reference, 1e-5)
    out["load"] = Outcome("ok" if same and ids == [7, 8, 9] else "fail",
                          "" if same else "logits differ from the saved model's")
    if not same or ids != [7, 8, 9]:
        out["load"].detail += f" tokenizer gave {ids}" if ids != [7, 8, 9] else ""
    try:
        model, tok = sharded_load(str(src))
    except ValueError as e:
        if "does not support any sharding" in str(e):
            out["load_sharded"] = Outcome("refused", "mlx-lm cannot shard this model")
            return out
        raise
    ids = list(tok.encode(_WORDS, add_special_tokens=False))
    same = close(model(tokens), reference, 1e-5)
    out["load_sharded"] = Outcome("ok" if same and ids == [7, 8, 9] else "fail",
                                  "" if same else "sharded logits differ")
    return out


def _vector(hooked: HookedModel, layer: int) -> SteeringVector:
    d = mx.random.normal((hooked.hidden_size,), key=mx.random.key(1)) * 3.0
    return SteeringVector({layer: d}, model_id="tiny")


def _refusal(fn: Callable[[], Outcome]) -> Outcome:
    try:
        return fn()
    except ValueError as e:  # bake names why it cannot take this architecture
        return Outcome("refused", str(e)[:240])


def check_bake_steering(hooked: HookedModel, src: Path, out: Path) -> Outcome:
    """Additive bake: plain mlx-lm on the folder == `alpha * v` added at residuals_L by hooks."""
    vec, alpha = _vector(hooked, 1), 1.5

    def run() -> Outcome:
        bake_steering(hooked, vec, alpha, out=out, source=src)
        baked, _ = mlx_lm.load(str(out))
        tokens = mx.array([PROMPT])
        reference = hooked.run_with_hooks(tokens, steering_hooks(vec, alpha))
        if close(baked(tokens), reference, 1e-4):
            return Outcome("ok")
        return Outcome("fail", "baked logits differ from the hooked reference")

    return _refusal(run)


def check_bake_ablation(hooked: HookedModel, src: Path, out: Path) -> Outcome:
    """Ablation bake: the baked model's residual stream never carries the direction."""
    vec = _vector(hooked, 1)

    def run() -> Outcome:
        bake_ablation(hooked, vec, out=out, source=src)
        baked = HookedModel(*mlx_lm.load(str(out)))
        u = vec[1] / mx.linalg.norm(vec[1])
        for name, a in baked.capture(mx.array([PROMPT]), "all").items():
            if float(mx.abs(a @ u).max()) > 1e-4 * float(mx.abs(a).max()):
                return Outcome("fail", f"{name} still carries the ablated direction")
        return Outcome("ok")

    return _refusal(run)


def run_io_checks(model_type: str) -> dict[str, dict[str, str]]:
    """Loaders and both bake modes on a saved fp32 tiny folder of `model_type`."""
    from . import save_tiny_model

    results: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            src = save_tiny_model(Path(tmp) / "src", model_type)
            reference = tiny_model(model_type)[0](mx.array([PROMPT]))
            for name, outcome in check_loaders(src, reference).items():
                results[name] = outcome.as_dict()
            hooked = HookedModel.from_pretrained(str(src))
        except Exception as e:  # noqa: BLE001 - recorded, not raised
            results.setdefault("load", Outcome("fail", f"{type(e).__name__}: {str(e)[:200]}")
                               .as_dict())
            return results
        for name, check in (("bake_add", check_bake_steering), ("bake_ablate",
                                                                check_bake_ablation)):
            try:
                results[name] = check(hooked, src, Path(tmp) / name).as_dict()
            except Exception as e:  # noqa: BLE001
                results[name] = Outcome("fail", f"{type(e).__name__}: {str(e)[:200]}").as_dict()
    return results
