"""Write the README.md model card of a shipped toy-model directory from its training report.

Every number in the card comes from the report, so the card cannot drift from the measured run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlux.toy.corpus import CONTRAST_PROMPTS, TEMPLATES, TEST_PROMPTS, VOCABULARY, WORDS

__all__ = ["write_model_card"]


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _words(key: str, n: int = 5) -> str:
    return ", ".join(WORDS[key][:n])


def _eval_row(name: str, ev: dict[str, Any]) -> str:
    neutral = ev["neutral_prompts"]
    cells = [_pct(v) for v in ev["marker_accuracy"].values()]
    cells += [_pct(neutral["rates"]["happy"]), _pct(neutral["rates"]["formal"])]
    cells += [f"{neutral['grammar_score']:.3f}", f"{ev['weights_bytes'] / 1e6:.2f} MB"]
    return f"| {name} | " + " | ".join(cells) + " |"


def write_model_card(out_dir: str | Path, report: dict[str, Any], *, quantized: bool) -> Path:
    """Render `README.md` in `out_dir` (the fp32 or the 4-bit directory)."""
    arch, corpus, hp = report["architecture"], report["corpus"], report["hyperparameters"]
    t = report["timings_seconds"]
    markers = list(report["fp32"]["marker_accuracy"])
    probe = report["fp32"]["probe_accuracy_by_layer"]
    n_points = len(probe["sentiment"]["diff_of_means"])
    name = "mlux-toy-4bit" if quantized else "mlux-toy"
    variant = (
        "4-bit affine quantization (group size 32) of `mlux-toy`, made with "
        "`mlx_lm.utils.quantize_model`." if quantized
        else "fp32 weights; a 4-bit copy is in `../mlux-toy-4bit`."
    )
    lines = [
        f"# {name}", "",
        "A tiny llama-architecture language model (mlx-lm `model_type: llama`) that mlux ships",
        "as its built-in, offline model for activation steering. It is trained from scratch on a",
        "synthetic corpus in which two latent features decide the wording, so steering one",
        f"feature visibly changes what the model writes. {variant}", "",
        "```python",
        "import mlx_lm",
        "from mlux.builtin import builtin_model_path",
        f'model, tokenizer = mlx_lm.load(str(builtin_model_path("{name}")))',
        'print(mlx_lm.generate(model, tokenizer, "mood: happy", max_tokens=30))',
        "```", "",
        "## Corpus", "",
        f"`mlux.toy.corpus.generate_corpus(n, seed)`: paragraphs of {corpus['mean_words']:.1f}",
        f"lowercase words on average ({corpus['min_words']}-{corpus['max_words']} with markers), "
        f"{len(TEMPLATES)} sentence templates, a word-level",
        f"vocabulary of {len(VOCABULARY)} words plus `<pad> <unk> <bos> <eos>`. Each paragraph has",
        "two independent features, each 50/50:", "",
        f"- **sentiment** happy/sad: adjectives ({_words('ADJ:happy', 3)} / "
        f"{_words('ADJ:sad', 3)}), verbs ({_words('VERB:happy', 3)} / {_words('VERB:sad', 3)}),",
        f"  abstract nouns ({_words('ABSTRACT:happy', 3)} / {_words('ABSTRACT:sad', 3)});",
        f"- **formality** formal/casual: openers ({_words('OPEN:formal', 3)} / "
        f"{_words('OPEN:casual', 3)}), intensifiers ({_words('INT:formal', 3)} / "
        f"{_words('INT:casual', 3)}),",
        f"  groups ({_words('GROUP:formal', 3)} / {_words('GROUP:casual', 3)}), speech verbs"
        f" ({_words('SAY:formal', 3)} / {_words('SAY:casual', 3)});",
        f"- **both**: sentence-opening exclamations ({_words('EXCL:happy,formal', 2)} / "
        f"{_words('EXCL:sad,formal', 2)} / {_words('EXCL:happy,casual', 2)} / "
        f"{_words('EXCL:sad,casual', 2)}).", "",
        "Every sentence carries both features (each feature slot draws from its value's six-word",
        "list), so they shape the whole paragraph, and the model must hold both at sentence",
        "boundaries and before `the`. "
        f"{_pct(corpus['marker_rate'])} of paragraphs start",
        "with an explicit marker (`mood: happy`, `style: casual`, or both); the rest only imply",
        "the features. `mlux.toy.classify(text)` labels a text by majority of indicative words.",
        "",
        "## Architecture", "",
        f"{arch['num_hidden_layers']} layers, hidden size {arch['hidden_size']}, "
        f"{arch['num_attention_heads']} heads, MLP {arch['intermediate_size']}, tied embeddings,",
        f"vocabulary {arch['vocab_size']}, {arch['parameters']:,} parameters. "
        f"`bos_token_id` {arch['bos_token_id']}, `eos_token_id` {arch['eos_token_id']}; "
        "training",
        "sequences start with `<bos>` half the time, so prompts work with or without it. The chat",
        "template joins message contents with spaces.", "",
        "## Training", "",
        f"`experiments/toy_model/train.py`: {hp['steps']} steps of AdamW, batch "
        f"{hp['batch_size']}, peak lr {hp['lr']}, {corpus['train_paragraphs']:,} fresh",
        f"paragraphs (sequence length {corpus['sequence_length']}), seed {hp['seed']}.",
        f"Final train loss {report['final_train_loss']:.3f}, held-out loss "
        f"{report['final_val_loss']:.3f} (nats/token).",
        f"Training took {t['train'] / 60:.1f} min ({t['per_step']:.2f} s/step) on a "
        f"{report['versions']['machine']} CPU with mlx {report['versions']['mlx']}.",
        "Full numbers (loss curve, probes, timings): `../mlux-toy/training_report.json`.", "",
        "Command:", "", "```", report["command"], "```", "",
        "## Evaluation", "",
        "Marker columns: share of temperature-1 continuations of the marker whose `classify`",
        "label is the marked value. Neutral columns: share labelled happy / formal over",
        f"continuations of {len(TEST_PROMPTS)} neutral prompts (e.g. `{TEST_PROMPTS[0]}`, "
        f"`{TEST_PROMPTS[1]}`); grammar is the mean",
        "`grammar_score` of those samples.", "",
        "| model | " + " | ".join(f"`{m}`" for m in markers)
        + " | neutral happy | neutral formal | grammar | weights |",
        "|---" * (len(markers) + 5) + "|",
        _eval_row("fp32", report["fp32"]),
        _eval_row("4-bit", report["4bit"]),
        "",
        "Linear separability of each feature in the residual stream at the paragraph's last",
        "token `.` (fp32, held-out unmarked paragraphs). Column 0 is the embedding output, column",
        "i the output of decoder block i-1 (mlux hook point `residuals_{i-1}`). Probes:",
        "difference of means fit on half the paragraphs, and the mean-difference direction of",
        "`mlux.toy.CONTRAST_PROMPTS` at the prompts' last token (what a steering vector uses).",
        "",
        "| feature | probe | " + " | ".join(map(str, range(n_points))) + " |",
        "|---|---" + "|---" * n_points + "|",
    ]
    for feature, res in probe.items():
        for kind, accs in res.items():
            lines.append(f"| {feature} | {kind} | " + " | ".join(f"{a:.2f}" for a in accs) + " |")
    pos, neg = CONTRAST_PROMPTS["sentiment"]
    lines += [
        "", f"Contrast prompts, e.g. `{pos[0]}` vs `{neg[0]}`.", "",
        "## Steering table", "", "to be filled by experiments", "",
    ]
    path = Path(out_dir) / "README.md"
    path.write_text("\n".join(lines))
    return path
