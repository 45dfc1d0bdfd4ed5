"""Serve the steering explorer: `python -m mlux.experiments.steering_explorer [--model M]`.

Also `mlux explore` (see `register`). Binds 127.0.0.1 unless `--host` says otherwise; the app
has no authentication, so anything else is announced loudly.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from typing import Any, Optional, Sequence

__all__ = ["DEFAULT_PORT", "DEFAULT_VECTORS", "add_arguments", "main", "register", "run"]

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
    return parser


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    """Load the model, build the app and serve until interrupted."""
    from werkzeug.serving import make_server

    from mlux import DEFAULT_MODEL, HookedModel
    from mlux.explorer import Limits, create_app
    from mlux.explorer.app import LOOPBACK_HOSTS

    host = args.host or "127.0.0.1"
    if not 0 <= args.port < 65536:
        raise ValueError(f"--port must be in 0..65535 (0: any free port), got {args.port}")
    if args.max_tokens is not None and not 0 < args.max_tokens <= 4096:
        raise ValueError(f"--max-tokens must be in 1..4096, got {args.max_tokens}")
    loopback = _is_loopback(host)
    if not loopback:
        bar = "!" * 78
        print(f"{bar}\nWARNING: serving on {host}:{args.port}, not on 127.0.0.1.\n"
              "Anyone who can reach this port can run the model, read and overwrite the vector "
              f"library in {args.vectors}.\nThere is no authentication. Use only on a network "
              f"you trust.\n{bar}", file=sys.stderr, flush=True)
    model = args.model or DEFAULT_MODEL
    print(f"mlux explore: loading {model} …", file=sys.stderr, flush=True)
    hooked = HookedModel.from_pretrained(model)
    limits = Limits() if args.max_tokens is None else Limits(max_tokens=args.max_tokens)
    from mlux.builtin import BUILTIN_MODELS
    from mlux.explorer.behavior_sweep import toy_behavior_sweeps

    # The built-in model's features have scorers, so its sweep can measure behaviour too.
    sweeps = toy_behavior_sweeps() if model in BUILTIN_MODELS else None
    app = create_app(hooked, vectors_dir=args.vectors, limits=limits, sweeps=sweeps,
                     allowed_hosts=LOOPBACK_HOSTS if loopback else None)
    server = make_server(host, args.port, app, threaded=True)  # never debug: no reloader/console
    shown = f"[{host}]" if ":" in host else host
    print(f"mlux explore: {hooked!r}\nserving on http://{shown}:{server.server_port} "
          "(Ctrl-C to stop)", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add `mlux explore` to the `mlux` command's subparsers."""
    help_text = "open the steering explorer web app (http://127.0.0.1:5001)"
    parser = subparsers.add_parser("explore", help=help_text, description=help_text)
    add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(
        prog="python -m mlux.experiments.steering_explorer",
        description="Steer a local mlx-lm model interactively in the browser."))
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"steering explorer: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
