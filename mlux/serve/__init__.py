"""`mlux serve`: an OpenAI-compatible server with per-request steering and continuous batching."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from .app import create_server_app
from .engine import Engine
from .protocol import APIError, Limits

__all__ = ["APIError", "Engine", "Limits", "create_server_app", "main", "register"]


def _add_arguments(p: argparse.ArgumentParser) -> None:
    from ..builtin import DEFAULT_MODEL

    p.add_argument("--model", default=DEFAULT_MODEL, help="mlx-lm model (default: built-in)")
    p.add_argument("--vectors", default=None, help="vector library folder (steering by name)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--max-batch", type=int, default=8, help="rows decoded together")
    p.add_argument("--max-tokens", type=int, default=512, help="cap on max_tokens per request")


def serve(args: argparse.Namespace) -> int:
    from werkzeug.serving import make_server

    from ..model import HookedModel

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"WARNING: binding to {args.host}: anyone who can reach this address can use the "
              "model. mlux serve has no authentication.", file=sys.stderr)
    hooked = HookedModel.from_pretrained(args.model)
    app = create_server_app(hooked, vectors=args.vectors, max_batch=args.max_batch,
                            limits=Limits(max_tokens=args.max_tokens))
    server = make_server(args.host, args.port, app, threaded=True)
    print(f"mlux serve: {args.model} at http://{args.host}:{server.server_port}/v1")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        app.extensions["mlux_serve"]["engine"].close()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible server with per-request steering",
                       description="OpenAI-compatible server with per-request steering")
    _add_arguments(p)
    p.set_defaults(func=serve)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlux.serve")
    _add_arguments(parser)
    return serve(parser.parse_args(argv))
