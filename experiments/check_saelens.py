"""Does the real `sae-lens` package load SAELens folders that mlux writes, and encode and decode
as mlux does? One SAE per architecture and input variant is written by mlux with random weights
(plus the SAE trained on the built-in model when a collection exists), then loaded with
`sae_lens.SAE.load_from_disk` and run on the same inputs.

sae-lens pulls torch, so it usually lives in its own environment: this script writes the folders
with mlux, then runs itself with `--compare DIR` under a Python that has sae_lens (the current
one, or `--saelens-python PATH`, or $MLUX_SAELENS_PYTHON). Prints a table and saves JSON:

    python experiments/check_saelens.py --saelens-python /work/venv-saelens/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np

OUT = Path(__file__).resolve().parent / "results" / "check_saelens.json"
VARIANTS = [  # (name, SAEConfig fields)
    ("standard", {"architecture": "standard"}),
    ("standard-no-b_dec-in", {"architecture": "standard", "apply_b_dec_to_input": False}),
    ("jumprelu", {"architecture": "jumprelu", "apply_b_dec_to_input": False}),
    ("topk", {"architecture": "topk", "k": 6}),
    ("topk-rescaled", {"architecture": "topk", "k": 6, "rescale_acts_by_decoder_norm": True}),
    ("batchtopk->jumprelu", {"architecture": "batchtopk", "k": 6}),
    ("constant_norm_rescale", {"architecture": "standard",
                               "normalize_activations": "constant_norm_rescale"}),
    ("layer_norm", {"architecture": "standard", "normalize_activations": "layer_norm"}),
    ("expected_average_only_in (folded)", {"architecture": "standard",
                                           "normalize_activations": "expected_average_only_in",
                                           "norm_scaling_factor": 0.25}),
]


def write_folders(root: Path, toy_sae: Optional[Path]) -> list[str]:
    """mlux side: write each variant, its inputs and mlux's encodings and reconstructions."""
    import mlx.core as mx

    from mlux.sae import SAEConfig, SparseAutoencoder

    rng = np.random.default_rng(0)
    names = []
    for i, (name, fields) in enumerate(VARIANTS):
        cfg = SAEConfig(d_in=48, d_sae=96, hook_name="blocks.3.hook_resid_post",
                        model_name="mlux-toy", **fields)
        sae = SparseAutoencoder(cfg, seed=i)
        for key in ("W_enc", "W_dec"):
            sae[key] = mx.array(rng.normal(size=sae[key].shape).astype(np.float32) * 0.3)
        sae.b_enc = mx.array(rng.normal(size=96).astype(np.float32) * 0.5)
        sae.b_dec = mx.array(rng.normal(size=48).astype(np.float32))
        if cfg.architecture in ("jumprelu", "batchtopk"):
            sae["threshold"] = mx.array(rng.uniform(0.0, 1.0, 96).astype(np.float32))
        names.append(_write(root / f"v{i}", name, sae, rng.normal(size=(20, 48)) * 3))
    if toy_sae is not None and (toy_sae / "cfg.json").is_file():
        sae = SparseAutoencoder.load(toy_sae)
        scale = sae.config.activation_norm / np.sqrt(sae.config.d_in)
        names.append(_write(root / "toy", f"trained on mlux-toy ({sae.config.hook})", sae,
                            rng.normal(size=(20, sae.config.d_in)) * scale))
    return names


def _write(folder: Path, name: str, sae: Any, x: np.ndarray) -> str:
    import mlx.core as mx

    x = x.astype(np.float32)
    sae.save(folder / "sae")
    f = sae.encode(mx.array(x))
    np.savez(folder / "mlux.npz", x=x, f=np.asarray(f),
             x_hat=np.asarray(sae.decode(f, mx.array(x))))
    (folder / "name.txt").write_text(name)
    return name


def compare(root: Path) -> list[dict[str, Any]]:
    """sae_lens side: load every folder with SAE.load_from_disk and compare."""
    import sae_lens
    import torch
    from sae_lens import SAE

    rows = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        ref = np.load(folder / "mlux.npz")
        sae = SAE.load_from_disk(str(folder / "sae"), device="cpu")
        with torch.no_grad():
            x = torch.tensor(ref["x"])
            f = sae.encode(x)
            x_hat = sae.decode(f)
        f, x_hat = f.numpy(), x_hat.numpy()
        rows.append({"sae": (folder / "name.txt").read_text(),
                     "saelens_class": type(sae).__name__, "sae_lens": sae_lens.__version__,
                     "same_active_features": bool(((f > 0) == (ref["f"] > 0)).all()),
                     "max_abs_diff_features": float(np.abs(f - ref["f"]).max()),
                     "max_abs_diff_reconstruction": float(np.abs(x_hat - ref["x_hat"]).max()),
                     "feature_scale": float(np.abs(ref["f"]).max())})
    return rows


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--compare", default=None, help=argparse.SUPPRESS)
    p.add_argument("--saelens-python", default=os.environ.get("MLUX_SAELENS_PYTHON"),
                   help="a Python that can import sae_lens (default: this one)")
    p.add_argument("--toy-sae", default="results/collect/mlux-toy/sae/all/residuals_3",
                   help="an mlux-trained SAE folder to include, if it exists")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    if args.compare:
        print(json.dumps(compare(Path(args.compare))))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        write_folders(Path(tmp), Path(args.toy_sae))
        python = args.saelens_python or sys.executable
        proc = subprocess.run([python, __file__, "--compare", tmp], capture_output=True,
                              text=True, env={**os.environ, "PYTHONPATH": ""})
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return 1
        rows = json.loads(proc.stdout.strip().splitlines()[-1])
    for r in rows:
        print(f"{r['sae']:<44} {r['saelens_class']:<12} same active: "
              f"{r['same_active_features']!s:<5}  max |df| {r['max_abs_diff_features']:.2e} "
              f"(of {r['feature_scale']:.2f})  max |dx^| {r['max_abs_diff_reconstruction']:.2e}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rows": rows}, indent=2))
    print(f"wrote {args.out}")
    return 0 if all(r["same_active_features"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
