"""One rank of a distributed mlux run (tests/test_distributed.py launches it with `mlx.launch`,
and runs it unlaunched for the single-process reference).

usage: python dist_worker.py MODEL_DIR {pipeline,tensor,none} OUT_PREFIX

Every rank captures, extracts and generates; each writes OUT_PREFIX.rank{r}.npz (activations,
vector) and OUT_PREFIX.rank{r}.json (tokens, layout), so the test can check that every rank got
the same results and that they equal the single-process ones.
"""

from __future__ import annotations

import json
import sys

import mlx.core as mx
import numpy as np

PROMPTS = ["w7 w8 w9 w10", "w11 w12", "w13 w14 w15"]
POS, NEG = ["w16 w17 w18", "w19 w20"], ["w30 w31 w32", "w33 w34"]


def main() -> None:
    path, mode, out = sys.argv[1:4]
    import mlux
    from mlux.distributed import rank

    if mode == "none":
        hooked = mlux.HookedModel.from_pretrained(path)
    else:
        from mlx_lm.utils import sharded_load

        group = mx.distributed.init()
        model, tok = sharded_load(path, group if mode == "pipeline" else None,
                                  group if mode == "tensor" else None,
                                  tokenizer_config={"trust_remote_code": False})
        hooked = mlux.HookedModel(model, tok, model_id=path)
    n = hooked.num_layers
    names = ["all", "attention_0", f"mlp_{n - 1}"]
    acts = hooked.capture(PROMPTS, names)
    last = hooked.capture(PROMPTS, [f"residuals_{n - 1}"], reduce=lambda x: x[:, -1])
    _, with_logits = hooked.run_with_cache(PROMPTS[0], ["residuals_0"])
    vectors = mlux.extract_steering_vectors(hooked, POS, NEG, list(range(n)))
    hooks = mlux.steering_hooks(vectors, alpha=4.0)
    cache, logits = mlux.prefill_with_cache(hooked, PROMPTS[0], hooks=hooks)
    steered = mlux.generate_from_cache(hooked, cache, logits, max_tokens=8, hooks=hooks)
    plain = mlux.generate_from_cache(hooked, cache, logits, max_tokens=8)
    sampled = mlux.generate_from_cache(hooked, cache, logits, max_tokens=8, temperature=1.0)
    steer = mlux.ContrastiveSteering(hooked, POS, NEG, layer=[1, n - 1])
    compare = steer.compare(PROMPTS[1], alphas=[-4, 0, 4], max_tokens=6)
    arrays = {k: np.array(v.astype(mx.float32)) for k, v in acts.items()}
    arrays["last"] = np.array(last[f"residuals_{n - 1}"])
    arrays["with_logits"] = np.array(with_logits["residuals_0"])
    arrays.update({f"vec_{i}": np.array(vectors[i]) for i in range(n)})
    r = rank()
    np.savez(f"{out}.rank{r}.npz", **arrays)
    with open(f"{out}.rank{r}.json", "w") as f:
        json.dump({"steered": steered, "plain": plain, "sampled": sampled,
                   "compare": {str(k): v for k, v in compare.items()},
                   "local_layers": hooked.local_layers, "num_layers": n,
                   "sharding": None if hooked.sharding is None else hooked.sharding.kind,
                   "hook_points": hooked.hook_points}, f)


if __name__ == "__main__":
    main()
