"""`collect`: run a data set through a model and store activations as resumable shards.

Work is done in chunks of `output.shard_size` prompts per category. A chunk's shards (one per
hook point) and generations are written atomically, then the manifest lists the chunk; a rerun
skips every listed chunk whose files are intact, so a crash loses at most the chunk in flight.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Union

import mlx.core as mx
from mlx.utils import tree_flatten
from tqdm import tqdm

from mlux.atomic import PathLike, atomic_write_json
from mlux.distributed import world_size
from mlux.model import HookedModel
from mlux.untrusted import short

from .capture import encode_prompts
from .chunks import CollectionResult, chunk_tensors, claimed_dir, run_chunk, run_header
from .data import load_dataset
from .manifest import Manifest
from .parallel import collect_data_parallel
from .plan import CollectionPlan, make_plan
from .run_config import CollectConfig, load_config
from .shards import write_shard

__all__ = ["CollectionResult", "collect", "load_model_for", "resolve_hook_points"]


def load_model_for(config: CollectConfig) -> HookedModel:
    """Load `model.name` and cast it to `model.dtype` (unless `auto`)."""
    hooked = HookedModel.from_pretrained(config.model.name)
    if config.model.dtype != "auto":
        hooked.model.set_dtype(getattr(mx, config.model.dtype))
    return hooked


def resolve_hook_points(hooked: HookedModel, specs: Any) -> list[str]:
    """Expand `model.activation_layers`; the plan reports the >20 warning, so it is muted here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            names = hooked.expand_layer_specs(specs)
        except ValueError as e:
            raise ValueError(f"model.activation_layers: {e}") from None
    missing = [n for n in names if n not in hooked.hook_points]
    if missing:
        raise ValueError(f"model.activation_layers: {missing} do not exist in this "
                         f"{hooked.model_type} model")
    return names


def _check_vocab(rows: dict[str, list[list[int]]], prompts: dict[str, list[str]],
                 vocab_size: Optional[int]) -> None:
    """Name the prompt whose ids the model cannot embed (tokenizer and weights disagree)."""
    for c, rs in rows.items():
        for i, r in enumerate(rs):
            if vocab_size and max(r) >= vocab_size:
                raise ValueError(f"prompt {short(prompts[c][i])} (category {short(c)}) encodes "
                                 f"to token id {max(r)}, beyond the model's vocabulary of "
                                 f"{vocab_size}: the tokenizer does not match the model's weights")


def collect(config: Union[CollectConfig, PathLike], *, hooked: Optional[HookedModel] = None,
            progress: bool = True, dry_run: bool = False, force: bool = False,
            echo: Callable[[str], None] = print) -> CollectionResult:
    """Collect the activations a config describes (a `CollectConfig` or a YAML path).

    Prints the plan (hook points, storage and memory estimates, suggested batch size) first;
    `dry_run` stops there. `hooked` reuses an already loaded model as is. Reruns resume.
    A non-empty folder without an mlux manifest is refused unless `force`.
    """
    if not isinstance(config, CollectConfig):
        config = load_config(config)
    dataset = load_dataset(config.data, config.source)
    hooked = hooked if hooked is not None else load_model_for(config)
    hooks = resolve_hook_points(hooked, config.model.activation_layers)
    inf, out = config.inference, config.output
    rows = {c: encode_prompts(hooked, p, chat_template=inf.chat_template)
            for c, p in dataset.prompts.items()}
    _check_vocab(rows, dataset.prompts, hooked.vocab_size)
    lengths = {c: [len(r) for r in rs] for c, rs in rows.items()}
    weights = sum(v.nbytes for _, v in tree_flatten(hooked.model.parameters()))
    plan = make_plan(config, hook_points=hooks, hidden_size=hooked.hidden_size,
                     vocab_size=hooked.vocab_size or 0, weights_bytes=weights, lengths=lengths)
    group = _data_parallel_group(hooked)
    if group is not None and group.rank() != 0:  # rank 0 speaks for the launch
        echo, progress = (lambda s: None), False
    echo(plan.describe())
    result_dir = Path(out.result_dir).expanduser()
    if dry_run:
        return CollectionResult(result_dir, plan, None, 0, 0)
    if group is not None:

        return collect_data_parallel(group, config, hooked, hooks, dataset, rows, lengths, plan,
                                     result_dir, progress, echo, force=force)
    with claimed_dir(result_dir, force=force, echo=echo):
        return _collect_chunks(config, hooked, hooks, dataset, rows, lengths, plan, result_dir,
                               progress)


def _data_parallel_group(hooked: HookedModel) -> Optional[Any]:
    """The world group when launched on several ranks (`mlx.launch -n N`), else None: today's
    single-process collection."""
    if world_size() <= 1:
        return None
    if hooked.sharding is not None:
        raise ValueError("collect over a sharded model is not supported: data-parallel "
                         "collection needs the whole model on every rank (load it with "
                         "HookedModel.from_pretrained, or leave `hooked` unset)")
    return mx.distributed.init()


def _collect_chunks(config: CollectConfig, hooked: HookedModel, hooks: list[str], dataset: Any,
                    rows: dict[str, list[list[int]]], lengths: dict[str, list[int]],
                    plan: CollectionPlan, result_dir: Path, progress: bool) -> CollectionResult:
    inf, out = config.inference, config.output
    manifest = Manifest.open(result_dir, run_header(config, hooked, hooks, dataset.prompts,
                                                 lengths, dataset.source))
    work = [(c, i, s, min(s + out.shard_size, len(rs))) for c, rs in rows.items()
            for i, s in enumerate(range(0, len(rs), out.shard_size))]
    todo = [w for w in work if not manifest.chunk_done(w[0], w[1])]
    done_samples = sum(stop - start for _, _, start, stop in work) - sum(
        stop - start for _, _, start, stop in todo)
    with tqdm(total=len(dataset), initial=done_samples, unit="prompt", desc="collect",
              disable=not progress, file=sys.stderr) as bar:
        for category, index, start, stop in todo:
            acts, texts = run_chunk(hooked, config, hooks, rows[category][start:stop],
                                     dataset.prompts[category][start:stop], start, bar)
            shards = {}
            for h in hooks if inf.save_activations else []:
                rel = manifest.shard_relpath(category, h, index)
                meta = {"hook": h, "category": category, "index": str(index)}
                info = write_shard(result_dir / rel, chunk_tensors(acts.pop(h), start,
                                                                    out.activation_dtype), meta)
                shards[h] = {"path": rel, "num_samples": stop - start, **info}
            gen_rel = manifest.generations_relpath(category, index) if texts else None
            if gen_rel:
                (result_dir / gen_rel).parent.mkdir(parents=True, exist_ok=True)
                atomic_write_json(result_dir / gen_rel, texts)
            manifest.record_chunk(category, index, start, stop, shards, gen_rel)
            manifest.save()
    manifest.data["complete"] = True
    manifest.save()
    return CollectionResult(result_dir, plan, manifest, len(todo), len(work) - len(todo))
