"""`mlux generate`: continue a prompt, steered by a saved vector, tokens printed as they come.

    mlux generate "the" --vector happy.safetensors --alpha 2          # the vector's layers
    mlux generate "the" --vector happy.safetensors --alpha -2 --layers 2 --baseline
    mlux generate "Tell me about your day." --model mlx-community/gemma-2-2b-it-4bit \\
        --chat --vector refusal.safetensors --alpha 4 --layers 16-18 --positions generated

Without `--vector` the model runs unsteered. With `--condition` (a file from `mlux
condition-search --save-condition`) the vector steers only if the prompt fires the condition:

    mlux generate "furthermore the garden was" --vector happy.safetensors --alpha 2 \
        --condition formal.safetensors --baseline
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Iterable, TextIO

from ..behavior import prompt_ids
from ..conditions import Condition
from ..decode import Decoder
from ..entry import Verb, int_in
from ..experiments.options import (
    add_model_argument,
    check_chat,
    float_at_least,
    layer_ints,
    load_vector,
    probability,
)
from ..generate import prefill_with_cache, stream_from_cache
from ..model import HookedModel
from ..steering import Steering, steering_hooks

__all__ = ["VERB", "stream_text"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", help="the text to continue")
    add_model_argument(p)
    p.add_argument("--vector", metavar="FILE", help="steering vector (.safetensors/.gguf), "
                   "e.g. from mlux extract (default: none, unsteered)")
    p.add_argument("--alpha", type=float, default=None, help="strength: alpha * vector is "
                   "added at each layer (default: 1.0)")
    p.add_argument("--layers", default=None, help='layers to steer, e.g. "2", "1-3", '
                   '"residuals_10-14" (default: every layer of the vector)')
    p.add_argument("--positions", choices=("all", "prompt", "generated"), default=None,
                   help="where to steer: all; prompt = the prompt but its last token; "
                        "generated = from the prompt's last token on (default: the window "
                        "the vector file records, e.g. a picked search trial's, else all)")
    p.add_argument("--max-tokens", type=int_in(1), default=40, help="tokens to generate")
    p.add_argument("--temperature", type=float_at_least(0.0), default=0.0,
                   help="sampling temperature (0 = greedy)")
    p.add_argument("--top-p", type=probability, default=1.0, help="nucleus sampling, in (0, 1]")
    p.add_argument("--seed", type=int_in(0), default=0, help="sampling seed")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat "
                   "template (default: plain text)")
    p.add_argument("--condition", metavar="FILE", help="condition file (.safetensors, from "
                   "mlux condition-search --save-condition): steer only if the prompt fires it "
                   "(default: always steer)")
    p.add_argument("--baseline", action="store_true", help="first print the unsteered "
                   "continuation, for comparison (default: only the steered one)")


def stream_text(hooked: HookedModel, ids: list[int], hooks: Any, out: TextIO,
                **sampling: Any) -> str:
    """Prefill `ids` and write the continuation to `out` token by token (flushed as each
    arrives, through the tokenizer's streaming detokenizer); returns the whole text."""
    cache, logits = prefill_with_cache(hooked, ids, hooks=hooks)
    return write_tokens(hooked, stream_from_cache(hooked, cache, logits, hooks=hooks, **sampling),
                        out)


def write_tokens(hooked: HookedModel, tokens: Iterable[int], out: TextIO) -> str:
    """Write tokens to `out` as they arrive (the tokenizer's streaming detokenizer, flushed);
    returns the whole text."""
    detok = hooked.tokenizer.detokenizer
    detok.reset()
    for token in tokens:
        detok.add_token(token)
        out.write(detok.last_segment)
        out.flush()
    detok.finalize()
    out.write(detok.last_segment + "\n")
    out.flush()
    return detok.text


def stream_conditional(hooked: HookedModel, ids: list[int], term: Steering, out: TextIO,
                       **sampling: Any) -> str:
    """One decoder row steered by a conditional term: says on stderr whether the prompt fired
    the condition (decided in its prefill), then streams the continuation to `out`."""
    with Decoder(hooked) as decoder:
        (uid,) = decoder.insert([ids], steering=[term], **sampling)
        (decision,) = decoder.decisions(uid)
        c = term.condition
        print(f"condition {'fired' if decision.fired else 'did not fire'}: cosine "
              f"{decision.scores[0]:.4g} at layer {c.layer} ({c.summary}), {c.comparator} "
              f"than {c.threshold:.4g} wanted" + ("" if decision.fired else "; unsteered"),
              file=sys.stderr, flush=True)
        tokens = (e.token for step in decoder.stream() for e in step if e.token is not None)
        return write_tokens(hooked, tokens, out)


def run(args: argparse.Namespace) -> int:
    if args.vector is None and (args.alpha is not None or args.layers is not None
                                or args.condition is not None):
        raise ValueError("--alpha, --layers and --condition steer with a vector: give --vector "
                         "FILE too")
    hooked = HookedModel.from_pretrained(args.model)
    check_chat(hooked, args.chat)
    vector = load_vector(args.vector, hooked) if args.vector else None
    condition = Condition.load(args.condition) if args.condition else None
    if condition is not None:
        condition.check(hooked.hidden_size, hooked.num_layers)
    ids = prompt_ids(hooked, args.prompt, args.chat)
    sampling = dict(max_tokens=args.max_tokens, temperature=args.temperature,
                    top_p=args.top_p, seed=args.seed)
    runs: list[tuple[str, Any]] = []
    if vector is None or args.baseline:
        runs.append(("unsteered", None))
    if vector is not None:
        layers = layer_ints(hooked, args.layers) or vector.layers
        alpha = 1.0 if args.alpha is None else args.alpha
        args.positions = args.positions or vector.metadata.get("positions") or "all"
        label = f"alpha {alpha:+g} at layers {layers} ({args.positions})"
        if condition is not None:
            runs.append((f"{label}, if the condition fires",
                         Steering(vector, alpha, layers, args.positions, condition=condition)))
        else:
            runs.append((label, steering_hooks(vector, alpha, layers=layers,
                                               positions=args.positions, prompt_length=len(ids))))
    print(f"mlux generate: {args.model}, prompt {args.prompt!r}", file=sys.stderr)
    for label, how in runs:
        print(f"--- {label}", file=sys.stderr, flush=True)
        if isinstance(how, Steering):
            stream_conditional(hooked, ids, how, sys.stdout, **sampling)
        else:
            stream_text(hooked, ids, how, sys.stdout, **sampling)
    return 0


VERB = Verb("generate", "continue a prompt, steered by a saved vector, streaming tokens",
            add_arguments, run, description=__doc__)
