"""Train mlux's built-in toy model and export it to `mlux/models/mlux-toy{,-4bit}`.

A 6-layer llama (mlx-lm architecture) learns the synthetic corpus of `mlux.toy.corpus`, where
two latent features (sentiment, formality) drive word choice. Run from the repository root:

    PYTHONPATH=. LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 \
        python experiments/toy_model/train.py

OpenBLAS makes fp32 matmuls ~20x faster on CPU; the default run takes ~10 min on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import mlx_lm
import numpy as np
from mlx_lm.models.llama import Model, ModelArgs
from mlx_lm.utils import quantize_model, save_config, save_model
from model_card import write_model_card
from toy_eval import base_rates, marker_accuracy, probe_layers

from mlux.tokenizer_files import write_word_tokenizer
from mlux.toy import MARKER_RATE, VOCABULARY, Example, generate_corpus

PAD, BOS, EOS = 0, 2, 3
ARCH: dict[str, Any] = {
    "model_type": "llama", "hidden_size": 96, "num_hidden_layers": 6, "intermediate_size": 256,
    "num_attention_heads": 4, "num_key_value_heads": 4, "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0, "max_position_embeddings": 256, "tie_word_embeddings": True,
}
# Joins message contents with spaces: the toy model has no roles, only running text.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['content'] }}"
    "{% if not loop.last %} {% endif %}{% endfor %}"
)
BOS_RATE = 0.5  # half the sequences start with <bos>, so prompts work with or without it


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-samples", type=int, default=200, help="continuations per marker")
    p.add_argument("--out-dir", type=Path, default=Path("mlux/models"))
    return p.parse_args()


def encode(examples: list[Example], vocab: dict[str, int], rng: np.random.Generator) -> np.ndarray:
    """Token ids, `[<bos>] words <eos>` right-padded with <pad> to a common length."""
    rows = [[vocab[w] for w in e.text.split()] + [EOS] for e in examples]
    rows = [[BOS, *r] if rng.random() < BOS_RATE else r for r in rows]
    out = np.full((len(rows), max(map(len, rows))), PAD, dtype=np.int32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def loss_fn(model: nn.Module, tokens: mx.array) -> mx.array:
    x, y = tokens[:, :-1], tokens[:, 1:]
    mask = (y != PAD).astype(mx.float32)
    ce = nn.losses.cross_entropy(model(x).astype(mx.float32), y)
    return (ce * mask).sum() / mask.sum()


def train(
    model: nn.Module, data: np.ndarray, val: mx.array, args: argparse.Namespace
) -> dict[str, Any]:
    schedule = optim.join_schedules(
        [optim.linear_schedule(args.lr * 0.01, args.lr, args.warmup),
         optim.cosine_decay(args.lr, args.steps - args.warmup, args.lr * 0.1)],
        [args.warmup],
    )
    opt = optim.AdamW(learning_rate=schedule, weight_decay=0.01)
    loss_and_grad = nn.value_and_grad(model, loss_fn)
    curve: list[float] = []
    val_curve: list[tuple[int, float]] = []
    start = time.perf_counter()
    for step in range(args.steps):
        batch = mx.array(data[step * args.batch_size : (step + 1) * args.batch_size])
        loss, grads = loss_and_grad(model, batch)
        grads, _ = optim.clip_grad_norm(grads, 1.0)
        opt.update(model, grads)
        mx.eval(model.parameters(), opt.state, loss)
        curve.append(loss.item())
        if step % 100 == 0 or step == args.steps - 1:
            v = loss_fn(model, val).item()
            val_curve.append((step + 1, v))
            print(f"step {step + 1:5d}  loss {np.mean(curve[-50:]):.4f}  val {v:.4f}  "
                  f"{time.perf_counter() - start:6.1f}s", flush=True)
    return {"curve": curve, "val_curve": val_curve, "seconds": time.perf_counter() - start}


def export(model: nn.Module, config: dict[str, Any], out: Path) -> None:
    """Tokenizer + weights + config with mlx-lm's own writers; one shard needs no index file."""
    write_word_tokenizer(VOCABULARY, out, chat_template=CHAT_TEMPLATE)
    save_model(out, model)
    save_config(config, config_path=out / "config.json")
    (out / "model.safetensors.index.json").unlink(missing_ok=True)


def evaluate(path: Path, args: argparse.Namespace, probe: list[Example] | None) -> dict[str, Any]:
    """Reload `path` with `mlx_lm.load` (what users do) and measure behaviour."""
    model, tokenizer = mlx_lm.load(str(path))
    smoke = mlx_lm.generate(model, tokenizer, "mood: happy", max_tokens=12)
    out: dict[str, Any] = {
        "marker_accuracy": marker_accuracy(model, tokenizer, args.eval_samples, seed=args.seed),
        "neutral_prompts": base_rates(model, tokenizer, 50, seed=args.seed + 100),
        "greedy_sample": f"mood: happy {smoke}",
        "weights_bytes": (path / "model.safetensors").stat().st_size,
    }
    if probe is not None:
        out["probe_accuracy_by_layer"] = probe_layers(model, tokenizer, probe)
    return out


def main() -> None:
    args = parse_args()
    t0 = time.perf_counter()
    np_rng = np.random.default_rng(args.seed)
    mx.random.seed(args.seed)
    fp_dir, q_dir = args.out_dir / "mlux-toy", args.out_dir / "mlux-toy-4bit"
    vocab = write_word_tokenizer(VOCABULARY, fp_dir, chat_template=CHAT_TEMPLATE)

    corpus = generate_corpus(args.steps * args.batch_size, seed=args.seed)
    data = encode(corpus, vocab, np_rng)
    val = mx.array(encode(generate_corpus(512, seed=args.seed + 1), vocab, np_rng))
    probe = [e for e in generate_corpus(1200, seed=args.seed + 2) if not e.marker][:600]
    t_data = time.perf_counter() - t0
    print(f"corpus: {len(corpus)} paragraphs, vocab {len(vocab)}, seq {data.shape[1]}, "
          f"{t_data:.1f}s", flush=True)

    config = {**ARCH, "vocab_size": len(vocab), "bos_token_id": BOS, "eos_token_id": EOS,
              "pad_token_id": PAD, "torch_dtype": "float32"}
    model = Model(ModelArgs.from_dict(config))
    mx.eval(model.parameters())
    n_params = sum(v.size for _, v in nn.utils.tree_flatten(model.parameters()))
    print(f"model: {n_params} parameters", flush=True)
    run = train(model, data, val, args)

    export(model, config, fp_dir)
    t1 = time.perf_counter()
    fp_eval = evaluate(fp_dir, args, probe)
    qmodel, qconfig = quantize_model(mlx_lm.load(str(fp_dir))[0], dict(config),
                                     group_size=32, bits=4)
    export(qmodel, qconfig, q_dir)
    q_eval = evaluate(q_dir, args, None)
    t_eval = time.perf_counter() - t1

    curve = run["curve"]
    n_words = [len(e.text.split()) for e in corpus]
    report = {
        "command": "PYTHONPATH=. LD_PRELOAD=<openblas> python " + " ".join(sys.argv),
        "seeds": {"numpy_corpus": args.seed, "numpy_bos": args.seed, "val_corpus": args.seed + 1,
                  "probe_corpus": args.seed + 2, "mx_random": args.seed,
                  "eval_sampling": args.seed},
        "hyperparameters": {k: v for k, v in vars(args).items() if k != "out_dir"}
        | {"optimizer": "AdamW(wd=0.01), warmup + cosine to lr/10, grad clip 1.0",
           "bos_rate": BOS_RATE},
        "architecture": config | {"parameters": n_params},
        "corpus": {"train_paragraphs": len(corpus), "vocab_size": len(vocab),
                   "mean_words": float(np.mean(n_words)), "min_words": int(min(n_words)),
                   "max_words": int(max(n_words)),
                   "sequence_length": int(data.shape[1]), "marker_rate": MARKER_RATE},
        "loss_curve": [[i + 1, round(float(np.mean(curve[max(0, i - 9) : i + 1])), 4)]
                       for i in range(9, len(curve), 10)],
        "val_loss_curve": [[s, round(v, 4)] for s, v in run["val_curve"]],
        "final_train_loss": float(np.mean(curve[-50:])),
        "final_val_loss": run["val_curve"][-1][1],
        "timings_seconds": {"data": t_data, "train": run["seconds"],
                            "per_step": run["seconds"] / args.steps, "eval_and_export": t_eval,
                            "total": time.perf_counter() - t0},
        "fp32": fp_eval,
        "4bit": q_eval,
        "versions": {"mlx": mx.__version__, "mlx_lm": mlx_lm.__version__,
                     "python": platform.python_version(), "machine": platform.machine()},
    }
    (fp_dir / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    write_model_card(fp_dir, report, quantized=False)
    write_model_card(q_dir, report, quantized=True)
    print(json.dumps({k: report[k] for k in ("final_train_loss", "final_val_loss")}
                     | {"fp32_markers": fp_eval["marker_accuracy"],
                        "fp32_neutral": fp_eval["neutral_prompts"]["rates"],
                        "4bit_markers": q_eval["marker_accuracy"],
                        "4bit_neutral": q_eval["neutral_prompts"]["rates"],
                        "probe": fp_eval["probe_accuracy_by_layer"],
                        "timings": report["timings_seconds"]}, indent=1))


if __name__ == "__main__":
    main()
