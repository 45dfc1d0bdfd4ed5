"""`mlux serve`: an OpenAI-compatible server with per-request steering and continuous batching."""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from .. import web
from ..builtin import DEFAULT_MODEL
from ..entry import Verb, int_in
from ..model import HookedModel
from ..sae.model import SparseAutoencoder
from .app import create_server_app
from .engine import Engine
from .protocol import APIError, Limits

__all__ = ["VERB", "APIError", "Engine", "Limits", "create_server_app", "main", "register"]


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, help="mlx-lm model: directory, hub id or "
                   "built-in name")
    p.add_argument("--vectors", default=None, metavar="DIR", help="vector library folder, for "
                   "steering by name (default: none, vectors only as float lists)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1; "
                   "anything else exposes the model to the network, without a password)")
    p.add_argument("--port", type=int_in(0, 65535), default=8080,
                   help="port to listen on, 0..65535 (0: any free port)")
    p.add_argument("--max-batch", type=int_in(1), default=8, help="rows decoded together")
    p.add_argument("--max-tokens", type=int_in(1), default=512,
                   help="cap on max_tokens per request")
    p.add_argument("--sae", default=None, metavar="DIR", help="an SAE (SAELens folder or Gemma "
                   "Scope params.npz) whose features requests may clamp with \"sae_clamp\" "
                   "(default: none)")


def serve(args: argparse.Namespace) -> int:
    """Check the folder and the port, load the model and serve the OpenAI-compatible API until
    Ctrl-C or SIGTERM; then stop accepting, cancel the rows in flight, join the engine."""
    vectors = (web.vector_folder(args.vectors, must_exist=True)
               if args.vectors is not None else None)
    web.check_bind(args.host, allow_remote=True)
    web.check_port(args.host, args.port)  # before the model loads, not after
    sae = SparseAutoencoder.load(args.sae) if args.sae else None  # a bad file fails first
    hooked = HookedModel.from_pretrained(args.model)
    if sae is not None:
        sae.check_model(hooked.hidden_size, hooked.num_layers)
    app = create_server_app(hooked, vectors=vectors, max_batch=args.max_batch,
                            limits=Limits(max_tokens=args.max_tokens),
                            allowed_hosts=web.allowed_hosts_for(args.host), sae=sae)
    return web.run_server(app, args.host, args.port, allow_remote=True,
                          name=f"mlux serve: {args.model}", path="/v1",
                          on_stop=app.extensions["mlux_serve"]["engine"].close)


VERB = Verb("serve", "OpenAI-compatible server with per-request steering", _add_arguments, serve)
register = VERB.register  # add `mlux serve` to an argparse subparsers object


def main(argv: Optional[Sequence[str]] = None) -> int:
    return VERB.main(argv, prog="mlux serve")
