"""Seeded weights for a tiny instance of any mlx-lm module, so greedy decoding is not degenerate.

mlx's default init gives nearly flat logits (greedy decoding repeats one token). Following
`tuned._init_weights` of the hand-tuned models, without knowing the architecture: embeddings of unit
size, linear maps that keep their input's size, output projections that write several times
more than that into the residual stream (so the context matters), logits of std ~3, and the
special tokens' logits shrunk so decoding never stops at `<eos>`. Everything else (norm gains,
SSM decay and step parameters, convolutions, biases) keeps the module's own init, which is
what the architecture expects.
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from mlux.tokenizer_files import SPECIAL_TOKENS

__all__ = ["ATTENTION_OUTPUTS", "MLP_OUTPUTS", "init_module_weights"]

LOGIT_STD = 3.0
# Size of what a sublayer writes into the residual stream, relative to what it reads: the MLPs
# write most, so the next token is a function of the context rather than a copy of the input.
ATTENTION_GAIN = 4.0
MLP_GAIN = 16.0
# Names of the projections that write a sublayer's output back into the residual stream.
ATTENTION_OUTPUTS = frozenset({"o_proj", "out_proj", "wo", "dense", "o", "proj", "output",
                               "out", "c_proj"})
MLP_OUTPUTS = frozenset({"down_proj", "w2", "fc2", "dense_4h_to_h", "fc_out", "proj_2"})
# In sandwich / post-norm blocks these norms set the size of the sublayer outputs instead.
_POST_NORMS = {"post_attention_layernorm": ATTENTION_GAIN,
               "post_feedforward_layernorm": MLP_GAIN}


def _is_linear(module: nn.Module) -> bool:
    """Linear maps of any flavour (`nn.Linear`, mlx-lm's `SwitchLinear`, ...), not quantized."""
    name = type(module).__name__
    return "Linear" in name and "Quantized" not in name


def init_module_weights(model: nn.Module, seed: int) -> dict[str, mx.array]:
    """A value for every parameter of `model`, keyed by its flat path (seeded)."""
    modules = dict(model.named_modules())
    params = sorted(tree_flatten(model.parameters()), key=lambda kv: kv[0])
    sandwich = any(n.endswith("post_feedforward_layernorm") for n in modules)
    keys = mx.random.split(mx.random.key(seed), len(params))
    # An unembedding of its own: an `lm_head` module, or (talkie) a bare `lm_head` array.
    tied = not any(n.split(".")[-1] == "lm_head" for n in [*modules, *(k for k, _ in params)])
    out: dict[str, mx.array] = {}
    for (name, p), key in zip(params, keys, strict=True):
        path, _, leaf = name.rpartition(".")
        module = modules.get(path)
        last = path.rpartition(".")[2]
        if leaf == "lm_head" and p.ndim == 2:
            out[name] = _shrink_special(mx.random.normal(p.shape, key=key)
                                        * (LOGIT_STD / math.sqrt(p.shape[-1])))
            continue
        if sandwich and leaf == "weight" and last in _POST_NORMS and p.ndim == 1:
            out[name] = p * _POST_NORMS[last]
            continue
        if leaf != "weight" or p.ndim < 2 or module is None:
            out[name] = p
            continue
        noise = mx.random.normal(p.shape, key=key)
        if isinstance(module, nn.Embedding):
            # Tied embeddings also unembed: their size sets the logits' spread.
            std = LOGIT_STD / math.sqrt(p.shape[-1]) if tied else 1.0
            out[name] = _shrink_special(noise * std) if tied else noise * std
        elif last == "lm_head" and _is_linear(module):
            out[name] = _shrink_special(noise * (LOGIT_STD / math.sqrt(p.shape[-1])))
        elif _is_linear(module):
            gain = (MLP_GAIN if last in MLP_OUTPUTS else
                    ATTENTION_GAIN if last in ATTENTION_OUTPUTS else 1.0)
            out[name] = noise * (gain / math.sqrt(p.shape[-1]))
        else:
            out[name] = p
    return out


def _shrink_special(w: mx.array) -> mx.array:
    """Rows of `<pad> <unk> <bos> <eos>` near 0, below the best ordinary token."""
    n = len(SPECIAL_TOKENS)
    if w.shape[0] <= n:
        return w
    return mx.concatenate([w[:n] * 0.05, w[n:]], axis=0)
