"""Alias kept for `python -m mlux.experiments.steering_explorer`: the explorer's launcher is
`mlux.explorer.launch` (`mlux explore`)."""

import sys
from typing import Optional, Sequence

from ..explorer import launch
from ..explorer.launch import DEFAULT_PORT, DEFAULT_VECTORS, add_arguments, register, run

__all__ = ["DEFAULT_PORT", "DEFAULT_VECTORS", "add_arguments", "main", "register", "run"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    return launch.main(argv, prog="python -m mlux.experiments.steering_explorer")


if __name__ == "__main__":
    sys.exit(main())
