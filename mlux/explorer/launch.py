"""Launch the steering explorer: `mlux explore [--model M]` (also
`python -m mlux.explorer.launch` and the older `python -m mlux.experiments.steering_explorer`).

Binds 127.0.0.1 unless `--host` says otherwise; the app has no authentication, so anything else
is announced loudly.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from .. import web
from ..builtin import BUILTIN_MODELS, DEFAULT_MODEL
from ..entry import Verb
from ..model import HookedModel
from ..sae.model import SparseAutoencoder
from .app import create_app
from .behavior_sweep import toy_behavior_sweeps, toy_scorers
from .state import STATE_KEY
from .validation import Limits

__all__ = ["DEFAULT_PORT", "DEFAULT_VECTORS", "VERB", "add_arguments", "main", "register", "run"]

DEFAULT_PORT = 5001
DEFAULT_VECTORS = "~/.mlux/vectors"


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--model", default=None,
                        help="model directory, hub id or built-in name (default: the built-in "
                             "mlux-toy)")
    parser.add_argument("--host", default=None,
                        help="address to bind (default 127.0.0.1; anything else exposes the "
                             "model and the vector folder to the network, without a password)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--vectors", default=DEFAULT_VECTORS, metavar="DIR",
                        help=f"vector library folder (default {DEFAULT_VECTORS})")
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="cap on tokens per generation (default 256)")
    parser.add_argument("--sae", default=None, metavar="DIR",
                        help="an SAE (SAELens folder or Gemma Scope params.npz) whose top "
                             "features the SAE panel shows (default: none)")
    return parser


def run(args: argparse.Namespace) -> int:
    """Load the model, build the app and serve until interrupted."""
    host = args.host or "127.0.0.1"
    if not 0 <= args.port < 65536:  # checked again when binding; here before the model loads
        raise ValueError(f"--port must be in 0..65535 (0: any free port), got {args.port}")
    if args.max_tokens is not None and not 0 < args.max_tokens <= 4096:
        raise ValueError(f"--max-tokens must be in 1..4096, got {args.max_tokens}")
    web.vector_folder(args.vectors, must_exist=False)  # a file there: refused now, not at a save
    exposes = f"the model and read and overwrite the vector library in {args.vectors}"
    web.check_bind(host, allow_remote=args.host is not None, exposes=exposes)
    web.check_port(host, args.port)  # a busy port is found before the model loads
    model = args.model or DEFAULT_MODEL
    sae = SparseAutoencoder.load(args.sae) if args.sae else None  # a bad file fails first
    print(f"mlux explore: loading {model} …", file=sys.stderr, flush=True)
    hooked = HookedModel.from_pretrained(model)
    limits = Limits() if args.max_tokens is None else Limits(max_tokens=args.max_tokens)
    # The built-in model's features have scorers, so its sweep can measure behaviour too, and
    # each generated column gets their verdicts.
    builtin = model in BUILTIN_MODELS
    app = create_app(hooked, vectors_dir=args.vectors, limits=limits,
                     sweeps=toy_behavior_sweeps() if builtin else None,
                     scorers=toy_scorers() if builtin else None,
                     allowed_hosts=web.allowed_hosts_for(host), sae=sae)
    print(f"mlux explore: {hooked!r}", file=sys.stderr, flush=True)
    return web.run_server(app, host, args.port, allow_remote=args.host is not None,
                          exposes=exposes, name="mlux explore",
                          on_stop=app.extensions[STATE_KEY].close)  # joins the model's thread


VERB = Verb("explore", "open the steering explorer web app (http://127.0.0.1:5001)",
            add_arguments, run,
            description="Steer a local mlx-lm model interactively in the browser.")
register = VERB.register  # add `mlux explore` to an argparse subparsers object


def main(argv: Optional[Sequence[str]] = None, *,
         prog: str = "python -m mlux.explorer.launch") -> int:
    return VERB.main(argv, prog=prog)


if __name__ == "__main__":
    sys.exit(main())
