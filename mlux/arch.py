"""Find where an mlx-lm model keeps its decoder blocks and their attention / MLP submodules.

Read from the module tree itself (dict entries, never properties): some `Model.layers`
properties return a slice copy (`pipeline_layers`), and a wrapper written into a copy never runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping, Optional

import mlx.nn as nn

__all__ = [
    "ATTENTION_NAMES",
    "BLOCK_LIST_PATHS",
    "MLP_NAMES",
    "STREAM_AXES",
    "UNHOOKABLE",
    "Architecture",
    "child",
    "detect_architecture",
    "set_child",
    "hidden_size_of",
]

# Where the forward pass iterates its blocks, most common first; a generic search follows.
BLOCK_LIST_PATHS = (
    "model.layers",
    "layers",
    "model.h",
    "transformer.h",
    "h",
    "model.transformer.h",
    "language_model.model.layers",
    "language_model.layers",
    "model.language_model.layers",
    "backbone.layers",
    "transformer.layers",
    "model.decoder.layers",
    "transformer.blocks",
    "gpt_neox.layers",
)
# The token mixer of a block: attention first, then the mixers of hybrid stacks (linear
# attention, state-space, short convolution, recurrent), which `attention_i` then names.
# Dotted names reach into a wrapper module (dbrx's norm -> attention -> norm).
ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention", "mixer", "linear_attn",
                   "mamba", "conv", "temporal_block", "norm_attn_norm.attn")
MLP_NAMES = ("mlp", "feed_forward", "block_sparse_moe", "ffn", "moe", "mlp_block", "ff")


# Models whose forward never calls its blocks, so no block wrapper can see the residual stream.
UNHOOKABLE: Mapping[str, str] = MappingProxyType({
    "iquestloopcoder": "its forward computes every block inline from the block's submodules "
                       "(two loops over the same layers) and never calls a block, so "
                       "residuals_i hooks would never fire",
})


# Blocks that carry S parallel residual streams, and the axis of S in what they return:
# gemma3n's AltUp (S, B, T, D), deepseek_v41's hyper-connections (B, T, S, D). Their
# `residuals_i` is the mean over the streams, (B, T, D); see `HookWrapper`.
STREAM_AXES: Mapping[str, int] = MappingProxyType({"gemma3n": 0, "deepseek_v41": 2})


@dataclass
class Architecture:
    """Where things live in one loaded model."""

    model_type: str
    blocks_owner: Any  # the module or dict whose entry is the block list
    blocks_key: str
    blocks_path: str
    attention_names: list[Optional[str]]  # per block (global numbering); None if not found
    mlp_names: list[Optional[str]]
    total_layers: Optional[int] = None  # a pipeline-sharded model's global block count
    stream_axis: Optional[int] = None  # blocks with several residual streams: their axis

    @property
    def blocks(self) -> list:
        """The block list the forward pass iterates; on a pipeline-sharded model, `None` in the
        slots of blocks other ranks run (and shorter than `num_layers` on all but rank 0)."""
        return self.blocks_owner[self.blocks_key]

    @property
    def num_layers(self) -> int:
        return self.total_layers if self.total_layers is not None else len(self.blocks)

    @property
    def local_layers(self) -> list[int]:
        """The blocks this process runs (every block unless the model is pipeline-sharded)."""
        return [i for i, b in enumerate(self.blocks) if b is not None]


def _entry(obj: Any, key: str) -> Any:
    """A dict entry of a module (not a property or plain attribute)."""
    if isinstance(obj, dict) and key in obj:
        return obj[key]
    return None


def _resolve(root: nn.Module, path: str) -> tuple[Any, str, Any]:
    parts = path.split(".")
    owner: Any = root
    for p in parts[:-1]:
        owner = _entry(owner, p)
        if owner is None:
            return None, parts[-1], None
    return owner, parts[-1], _entry(owner, parts[-1])


def _is_block_list(value: Any) -> bool:
    """A list of blocks with a token mixer or an MLP; `None` slots (a pipeline-sharded model's
    blocks that other ranks run) are allowed around at least one block. Hybrid stacks may
    start with a block whose mixer has another name, so any block may qualify the list."""
    if not isinstance(value, list):
        return False
    local = [b for b in value if b is not None]
    return (
        len(local) > 0
        and all(isinstance(b, nn.Module) for b in local)
        and any(_find_child(b, ATTENTION_NAMES + MLP_NAMES) is not None for b in local)
    )


def child(block: Any, name: str) -> Any:
    """The submodule at dotted `name` below `block` (dict entries only), or None."""
    node = block
    for part in name.split("."):
        node = _entry(node, part)
    return node


def set_child(block: Any, name: str, module: nn.Module) -> None:
    """Put `module` in the slot at dotted `name` below `block`."""
    owner, _, last = name.rpartition(".")
    setattr(child(block, owner) if owner else block, last, module)


def _find_child(block: Any, names: tuple[str, ...]) -> Optional[str]:
    for n in names:
        if isinstance(child(block, n), nn.Module):
            return n
    return None


def _search(module: Any, prefix: str, depth: int) -> Optional[str]:
    """Breadth-first look for a list of attention-bearing modules below `module`."""
    if depth < 0 or not isinstance(module, dict):
        return None
    for k, v in module.items():
        if _is_block_list(v):
            return f"{prefix}{k}"
    for k, v in module.items():
        if isinstance(v, nn.Module):
            found = _search(v, f"{prefix}{k}.", depth - 1)
            if found:
                return found
    return None


def detect_architecture(model: nn.Module) -> Architecture:
    """Locate the decoder-block list and per-block attention/MLP names, or raise ValueError."""
    if not isinstance(model, nn.Module):
        raise ValueError(
            f"expected an mlx.nn.Module (an mlx-lm model), got {type(model).__name__}"
        )
    kind = str(getattr(model, "model_type", None) or _args_value(model, "model_type"))
    if kind in UNHOOKABLE:
        raise ValueError(f"unsupported architecture {kind!r}: {UNHOOKABLE[kind]}")
    candidates = list(BLOCK_LIST_PATHS)
    path = next((p for p in candidates if _is_block_list(_resolve(model, p)[2])), None)
    path = path or _search(model, "", depth=4)
    model_type = str(getattr(model, "model_type", None) or _args_value(model, "model_type"))
    if path is None:
        raise ValueError(
            f"unsupported architecture {model_type!r} ({type(model).__module__}): found no list "
            f"of decoder blocks with a token mixer or MLP submodule. Tried the paths "
            f"{', '.join(candidates)} and a search of the module tree for lists whose blocks "
            f"have one of the submodules {', '.join(ATTENTION_NAMES + MLP_NAMES)}."
        )
    owner, key, blocks = _resolve(model, path)
    # The forward pass must see these very objects (not a copy); check against Model.layers.
    exposed = getattr(model, "layers", None)
    if isinstance(exposed, list) and exposed and not any(b is exposed[0] for b in blocks):
        raise ValueError(
            f"unsupported architecture {model_type!r}: the blocks at '{path}' are not the ones "
            "`model.layers` returns, so hooks installed there would not run"
        )
    total = _pipeline_total(model, owner, blocks)
    template = next(b for b in blocks if b is not None)  # stands in for blocks run elsewhere
    slots = list(blocks) + [None] * ((total or len(blocks)) - len(blocks))
    return Architecture(
        model_type=model_type,
        blocks_owner=owner,
        blocks_key=key,
        blocks_path=path,
        attention_names=[_find_child(b or template, ATTENTION_NAMES) for b in slots],
        mlp_names=[_find_child(b or template, MLP_NAMES) for b in slots],
        total_layers=total,
        stream_axis=STREAM_AXES.get(model_type),
    )


def _pipeline_total(model: nn.Module, owner: Any, blocks: list) -> Optional[int]:
    """The global block count of a pipeline-sharded model (`PipelineMixin.pipeline` truncates
    the list after this rank's last block and puts `None` before its first), else None."""
    if int(getattr(owner, "pipeline_size", 1) or 1) <= 1 and all(b is not None for b in blocks):
        return None
    for value in (getattr(owner, "num_hidden_layers", None),
                  _args_value(model, "num_hidden_layers"), _args_value(model, "num_layers")):
        if isinstance(value, int) and value >= len(blocks):
            return value
    raise ValueError("a pipeline-sharded model whose total number of layers could not be read "
                     "(no num_hidden_layers on the model or its args)")


def _args_value(model: Any, key: str) -> Any:
    args = getattr(model, "args", None)
    if args is None:
        return None
    if isinstance(args, dict):
        return args.get(key)
    return getattr(args, key, None)


def hidden_size_of(model: nn.Module, blocks: list) -> int:
    """The residual width, read from the model: its config args, else its embedding table."""
    for key in ("hidden_size", "n_embd", "d_model", "dim", "model_dim"):
        value = _args_value(model, key)
        if isinstance(value, int) and value > 0:
            return value
    for m in model.modules():
        if isinstance(m, (nn.Embedding, nn.QuantizedEmbedding)):
            dims = getattr(m, "dims", None)
            if isinstance(dims, int):
                return dims
            return int(m.weight.shape[-1])
    raise ValueError("could not read the hidden size from the model's args or embedding")
