"""`train_saes`: one SAE per collected hook point, resumable, never mixing settings or data.

    <out>/<hook>/cfg.json, sae_weights.safetensors   a SAELens folder (`SparseAutoencoder.load`)
    <out>/<hook>/mlux.json (metrics, settings, data), training_curve.png
    <out>/summary.json                       rebuilt from the layer directories after each layer

Metrics include CE loss recovered and KL with each SAE spliced into the model, on up to
`splice_prompts` of the collected prompts (0: skip, and do not load the model).

Each layer directory is replaced as a whole, so an interrupted run leaves finished layers and no
half-written one. A rerun skips every layer already trained with the same settings on the same
data; if any layer on disk was trained otherwise the run is refused, naming what changed, unless
`fresh=True` (which first deletes them). The output folder is locked while training.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

from mlux.atomic import PathLike, atomic_write_json
from mlux.collect.lock import folder_lock, remove_orphans
from mlux.collect.manifest import Manifest, open_collection
from mlux.collect.run_config import SAESection
from mlux.layers import expand_layer_specs, hook_point_names
from mlux.model import HookedModel

from .fit import (
    FewStepsWarning,
    SAETrainResult,
    few_steps_message,
    latents_for,
    train_sae,
    training_settings,
)
from .formats import EXTRA_NAME, WEIGHTS_NAME
from .metrics import spliced_metrics
from .model import SparseAutoencoder

__all__ = ["SPLICE_PROMPTS", "train_saes"]

SPLICE_PROMPTS = 32  # collected prompts the spliced CE/KL metrics are measured on


def _hooks(manifest: Manifest, settings: SAESection) -> list[str]:
    hooks = manifest.hook_points
    if settings.hook_points is None:
        return hooks
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wanted = expand_layer_specs(settings.hook_points, manifest.data["model"]["num_layers"])
    missing = [h for h in wanted if h not in hooks]
    if missing:
        raise ValueError(f"sae.hook_points {missing} were not collected; collected: "
                         f"{', '.join(hooks)}")
    return wanted


def _data_identity(manifest: Manifest, hook: str, position: str, rows: int) -> dict[str, Any]:
    """Which shards (by path, size and checksum) a layer's SAE was trained on."""
    shards = [[s["path"], s["bytes"], s.get("sha256")]
              for s in manifest.shard_entries(hook, position)]
    return {"rows": rows, "shards_sha256": hashlib.sha256(json.dumps(shards).encode()).hexdigest()}


def _on_disk(out: Path) -> dict[str, dict[str, Any]]:
    """hook -> mlux.json (metrics, settings, data) of every finished layer directory."""
    found = {}
    for d in sorted(out.iterdir()) if out.is_dir() else []:
        if d.is_dir() and not d.name.startswith(".") and (d / WEIGHTS_NAME).is_file():
            try:
                record = json.loads((d / EXTRA_NAME).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue  # not a finished layer: trained again if asked for
            if isinstance(record, dict) and {"metrics", "training"} <= set(record):
                found[d.name] = record
    return found


def _changes(record: dict[str, Any], training: dict[str, Any],
             data: Optional[dict[str, Any]]) -> list[str]:
    old = record.get("training", {})
    out = [f"{k}: {old.get(k)!r} before, {training.get(k)!r} now"
           for k in sorted(set(old) | set(training)) if old.get(k) != training.get(k)]
    if data is not None and record.get("data") != data:
        before = (record.get("data") or {}).get("rows")
        out.append(f"the collected data changed ({before} rows before, {data['rows']} now)")
    return out


def _refuse_changed(out: Path, done: dict[str, dict[str, Any]], training: dict[str, Any],
                    data: dict[str, dict[str, Any]]) -> None:
    by_change: dict[str, list[str]] = {}
    for hook, record in done.items():
        for change in _changes(record, training, data.get(hook)):
            by_change.setdefault(change, []).append(hook)
    if by_change:
        what = "; ".join(f"{c} ({', '.join(h)})" for c, h in by_change.items())
        raise ValueError(f"{out} holds SAEs trained differently: {what}. Pass fresh=True "
                         "(train-sae --fresh) to replace them, or choose another out_dir "
                         "(--out-dir)")


def _write_summary(out: Path, manifest: Manifest, training: dict[str, Any],
                   samples: dict[str, Any]) -> None:
    done = _on_disk(out)
    order = {h: i for i, h in enumerate(manifest.hook_points)}
    layers = {h: done[h].get("metrics", {}) for h in sorted(done, key=lambda h: (
        order.get(h, len(order)), h))}
    atomic_write_json(out / "summary.json", {"settings": training, "samples": samples,
                                             "layers": layers})


def _splicer(manifest: Manifest, count: int, hooked: Optional[HookedModel]
             ) -> Optional[Callable[[SparseAutoencoder], dict[str, float]]]:
    """`splice(sae)` on the first `count` collected prompts (categories interleaved), loading
    the model on first use; None when `count` is 0."""
    if count <= 0:
        return None
    per_category = [c["prompts"] for c in manifest.data["categories"].values()]
    prompts = [p for group in itertools.zip_longest(*per_category) for p in group
               if p is not None][:count]
    model: list[HookedModel] = [hooked] if hooked is not None else []

    def splice(sae: SparseAutoencoder) -> dict[str, float]:
        if not model:
            model.append(HookedModel.from_pretrained(manifest.model_id))
        return spliced_metrics(model[0], sae, prompts)

    return splice


def train_saes(result_dir: PathLike, settings: Optional[SAESection] = None, *,
               out_dir: Optional[PathLike] = None, allow_partial: bool = False,
               fresh: bool = False, progress: bool = True,
               echo: Callable[[str], None] = print, splice_prompts: int = SPLICE_PROMPTS,
               hooked: Optional[HookedModel] = None) -> dict[str, SAETrainResult]:
    """One SAE per collected hook point (or `settings.hook_points`), saved under
    `out_dir` (default `<result_dir>/sae/<position>`)/<hook>, plus a `summary.json`.

    Layers already trained with these settings on this data are loaded, not retrained. An
    incomplete collection is refused unless `allow_partial`. The spliced metrics load the
    collection's model (or use `hooked`) once, when a layer is trained."""
    manifest = open_collection(Path(result_dir), allow_partial=allow_partial, echo=echo)
    settings = settings or manifest.sae_settings()  # the config's sae: section, as the CLI
    hooks = _hooks(manifest, settings)
    latents_for(settings, manifest.hidden_size)  # a bad k fails now, not after the first layer
    stores = {h: manifest.store(h, settings.position) for h in hooks}
    data = {h: _data_identity(manifest, h, settings.position, s.num_rows)
            for h, s in stores.items()}
    training = training_settings(settings)
    samples = {c: {"used": n, "requested": r} for c, (n, r) in manifest.samples().items()}
    out = Path(out_dir) if out_dir else Path(result_dir) / "sae" / settings.position
    results: dict[str, SAETrainResult] = {}
    with folder_lock(out, "train-sae", echo=echo):
        # only what train-sae writes here: a user's own temp-like files stay
        layers = int(manifest.data["model"]["num_layers"])
        remove_orphans(out, targets=("summary.json", *hook_point_names(layers)))
        done = _on_disk(out)
        if fresh:
            for h in done:
                shutil.rmtree(out / h)
            (out / "summary.json").unlink(missing_ok=True)
            done = {}
        _refuse_changed(out, done, training, data)
        warned = False
        splice = _splicer(manifest, splice_prompts, hooked)
        for h in hooks:
            if h in done:
                r = done[h]
                results[h] = SAETrainResult(h, SparseAutoencoder.load(out / h), r["metrics"],
                                            r.get("history", {}), out / h)
                echo(f"{h:<16} already trained (resumed): fve {r['metrics']['fve']:.3f}")
                continue
            message = few_steps_message(stores[h].num_rows, settings)
            if message and not warned:
                echo(f"warning: {message}")
                warned = True
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FewStepsWarning)  # echoed once above
                r = results[h] = train_sae(stores[h], settings, hook=h,
                                           model_id=manifest.model_id, out_dir=out / h,
                                           progress=progress, extra={"data": data[h]},
                                           splice=splice)
            m = r.metrics
            spliced = (f"  CE recovered {m['ce_loss_recovered']:.3f}  KL {m['kl_div_with_sae']:.4f}"
                       if "ce_loss_recovered" in m else "")
            echo(f"{h:<16} mse {m['mse']:.4g}  fve {m['fve']:.3f}  L0 {m['l0']:.1f}  "
                 f"dead {m['dead_latents']}/{r.sae.config.d_sae}{spliced}")
            _write_summary(out, manifest, training, samples)
        _write_summary(out, manifest, training, samples)
    return results
