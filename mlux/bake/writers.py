"""Which parameters of a loaded model write into its residual stream, read from the module tree.

A bake edits exactly these: the embeddings outside the blocks, each block's attention (or mixer)
output projection, and its MLP's output projection — for a mixture of experts every routed
expert (the fused `SwitchLinear` of `SwitchGLU` / `SwitchMLP`, all experts in one `(E, D, I)`
matrix) and every shared expert. Anything else that could write (an unknown module in a block,
a linear outside the blocks that is not the LM head, an embedding inside a block) makes
`find_writers` raise `ValueError` naming it: a bake that would miss a writer is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.models.switch_layers import (
    QuantizedSwitchLinear,
    SwitchGLU,
    SwitchLinear,
    SwitchMLP,
)

from ..hooks import HookWrapper

__all__ = ["LINEARS", "Writers", "find_writers"]

LINEARS = (nn.Linear, nn.QuantizedLinear, SwitchLinear, QuantizedSwitchLinear)
_EMBEDDINGS = (nn.Embedding, nn.QuantizedEmbedding)
# Names of the last projection of an attention / mixer and of an MLP (or one expert).
_ATTN_OUT = ("o_proj", "out_proj", "c_proj", "dense", "wo", "o", "proj")
_MLP_OUT = ("down_proj", "c_proj", "fc2", "w2", "dense_4h_to_h", "wo", "out_proj", "proj_out")
# Modules of a mixture of experts that only read the stream (they route or gate experts).
_ROUTERS = ("gate", "router", "shared_expert_gate", "shared_experts_gate", "expert_bias")


@dataclass
class Writers:
    """Module paths (parameter-name prefixes) of the residual writers of one model."""

    embeddings: list[str]  # (V, D) tables whose rows enter the stream
    outputs: list[str]  # projections whose weight is (..., D, I): attention, MLP, experts
    last_writes: list[Optional[str]]  # per block: its MLP's output projection (its mixer's
    # if it has no MLP), the single linear whose bias adds to the block's output; None: MoE
    moe_blocks: list[int]  # blocks whose MLP is a mixture of experts
    head: Optional[str]  # the separate LM head, None when the embedding unembeds (tied)
    output_blocks: list[int]  # the block of each of `outputs`, in the same order


def _plain(module: Any) -> Any:
    return module.wrapped if isinstance(module, HookWrapper) else module


def _children(module: Any) -> list[tuple[str, Any]]:
    """Direct child modules, list entries numbered (`experts.3`)."""
    out: list[tuple[str, Any]] = []
    for k, v in module.items():
        if isinstance(v, nn.Module):
            out.append((k, _plain(v)))
        elif isinstance(v, (list, tuple)):
            out.extend((f"{k}.{j}", _plain(m)) for j, m in enumerate(v) if isinstance(m, nn.Module))
    return out


def _has_params(module: nn.Module) -> bool:
    return bool(tree_flatten(module.parameters()))


def _only_norms(name: str, module: nn.Module) -> bool:
    """Every module under `module` that holds arrays of its own is a normalisation."""
    return all(_is_norm(f"{name}.{sub}" if sub else name, m)
               for sub, m in module.named_modules()
               if any(isinstance(v, mx.array) for v in m.values()))


def _is_norm(name: str, module: nn.Module) -> bool:
    cls = type(module).__name__.lower()
    return "norm" in cls or "norm" in name.rpartition(".")[2] or name.startswith("ln_")


def _out_projection(module: Any, names: tuple[str, ...]) -> Optional[str]:
    return next((n for n in names if isinstance(module.get(n), LINEARS)), None)


def _mlp_writers(module: Any, path: str, where: str) -> tuple[list[str], bool]:
    """The output projections under one MLP / MoE module and whether it mixes experts."""
    if isinstance(module, (SwitchGLU, SwitchMLP)):
        return [f"{path}.{'down_proj' if isinstance(module, SwitchGLU) else 'fc2'}"], True
    own = _out_projection(module, _MLP_OUT)
    if own is not None:
        return [f"{path}.{own}"], False
    found: list[str] = []
    for name, child in _children(module):
        last = name.partition(".")[0]
        if last in _ROUTERS or not _has_params(child) or _is_norm(name, child):
            continue
        if isinstance(child, LINEARS) or not isinstance(child, nn.Module):
            raise ValueError(f"{where} has {path}.{name} ({type(child).__name__}), which is "
                             "neither an expert nor a known router, so mlux cannot tell whether "
                             "it writes into the residual stream")
        found.extend(_mlp_writers(child, f"{path}.{name}", where)[0])
    if not found:
        raise ValueError(f"{where} ({type(module).__name__}) has no output projection mlux "
                         f"knows (looked for {', '.join(_MLP_OUT)} and fused experts)")
    return found, True


def find_writers(hooked: Any) -> Writers:
    """The residual writers of `hooked` (a `HookedModel`); raises ValueError naming why the
    model's stream cannot be edited exactly through its weights."""
    arch, model = hooked.arch, hooked.model
    if hooked.sharding is not None:
        raise ValueError("the model is sharded across processes; bake a model held whole")
    base = arch.blocks_path
    outputs: list[str] = []
    blocks: list[int] = []
    last_writes: list[Optional[str]] = []
    moe: list[int] = []
    for i, block in enumerate(arch.blocks):
        inner, prefix = _plain(block), f"{base}.{i}"
        attn_name, mlp_name = arch.attention_names[i], arch.mlp_names[i]
        for name, child in _children(inner):
            if name in (attn_name, mlp_name) or not _has_params(child):
                continue
            if isinstance(child, _EMBEDDINGS):
                raise ValueError(f"block {i} has its own embedding {prefix}.{name} (per-layer "
                                 "inputs), which writes into the stream beside the blocks")
            if not _only_norms(name, child):
                raise ValueError(f"block {i} has {prefix}.{name} ({type(child).__name__}) "
                                 "besides its attention and MLP, a module mlux cannot place "
                                 "in the residual stream")
        attn = _plain(inner[attn_name]) if attn_name else None
        own = _out_projection(attn, _ATTN_OUT) if attn is not None else None
        if own is None:
            what = f"{type(attn).__name__} mixer" if attn is not None else "no attention"
            raise ValueError(f"block {i} has {what} with no output projection mlux knows "
                             f"(looked for {', '.join(_ATTN_OUT)})")
        outputs.append(f"{prefix}.{attn_name}.{own}")
        blocks.append(i)
        if mlp_name is None:  # a mixer-only block (state-space models)
            last_writes.append(outputs[-1])
            continue
        found, mixed = _mlp_writers(_plain(inner[mlp_name]), f"{prefix}.{mlp_name}",
                                    f"block {i}'s MLP")
        outputs.extend(found)
        blocks.extend([i] * len(found))
        last_writes.append(None if mixed else found[0])
        if mixed:
            moe.append(i)
    embeddings, head = _outside_blocks(model, base, hooked.hidden_size)
    return Writers(embeddings, outputs, last_writes, moe, head, blocks)


def _outside_blocks(model: nn.Module, base: str, hidden: int) -> tuple[list[str], Optional[str]]:
    """The embeddings (each `(V, hidden)`) and the LM head outside the block list."""
    embeddings: list[str] = []
    linears: list[str] = []
    for path, m in model.named_modules():
        if path == base or path.startswith(base + "."):
            continue
        if isinstance(m, _EMBEDDINGS):
            if m.weight.shape[0] and int(getattr(m, "dims", hidden)) != hidden:
                raise ValueError(f"the embedding {path} has width {m.dims}, not the stream's "
                                 f"{hidden}: something projects it into the stream")
            embeddings.append(path)
        elif isinstance(m, LINEARS):
            linears.append(path)
    if not embeddings:
        raise ValueError("found no token embedding outside the blocks")
    heads = [p for p in linears if p.rpartition(".")[2] in ("lm_head", "output", "embed_out")]
    others = [p for p in linears if p not in heads]
    if others or len(heads) > 1:
        raise ValueError(f"{', '.join(others or heads)} outside the blocks may write into the "
                         "stream (only embeddings and one LM head are known)")
    return embeddings, (heads[0] if heads else None)
