"""How every verb of the `mlux` command runs, and every `python -m` alias of one.

A verb is a `Verb(name, help, add_arguments, run)`; `mlux.cli` lists them all, and a module that
can also be run on its own (`python -m mlux.experiments.layer_sweep`) calls `VERB.main(argv)`.
Either way the verb goes through `run_verb`, the one entry style:

- a user error (a bad argument, `ValueError` and the project's error types derived from it,
  `OSError` such as a missing file) prints one line `mlux <verb>: error: <message>` on stderr and
  exits 2;
- Ctrl-C (`KeyboardInterrupt`) prints `mlux <verb>: interrupted` and exits 130, no traceback;
- anything else is a bug and keeps its traceback.

This module imports no verb, so the verbs and `mlux.cli` can both import it without a cycle.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

__all__ = ["EXIT_INTERRUPTED", "EXIT_USER_ERROR", "USER_ERRORS", "UsageError", "Verb",
           "run_command", "run_verb"]

EXIT_USER_ERROR = 2  # argparse's own exit code for a bad command line
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C
# Errors a user can fix. The project's own error types (HookError, APIError, ScorerError, ...)
# derive from ValueError; FileNotFoundError and PermissionError are OSErrors.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)


class UsageError(ValueError):
    """A bad command line (unknown option, missing or malformed value)."""

    def __init__(self, message: str, label: str) -> None:
        super().__init__(message)
        self.label = label


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are raised as `UsageError` instead of exiting, so that
    they are reported like every other user error. `label` names the verb in the message."""

    label: Optional[str] = None

    def error(self, message: str) -> Any:  # argparse's hook; never returns
        raise UsageError(f"{message} (see {self.prog} --help)", self.label or self.prog)


@dataclass(frozen=True)
class Verb:
    """One verb of the `mlux` command: `add_arguments(parser)` declares its options,
    `run(args) -> exit code` does the work. `on_interrupt` is added to the Ctrl-C message
    (e.g. how to resume)."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], Any]
    run: Callable[[argparse.Namespace], int]
    description: Optional[str] = None
    on_interrupt: Optional[str] = None

    @property
    def label(self) -> str:
        return f"mlux {self.name}"

    def register(self, subparsers: Any) -> argparse.ArgumentParser:
        """Add this verb to an argparse subparsers object."""
        parser = subparsers.add_parser(self.name, help=self.help,
                                       description=self.description or self.help,
                                       formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.label = self.label
        self.add_arguments(parser)
        parser.set_defaults(func=self.run, verb=self)
        return parser

    def main(self, argv: Optional[Sequence[str]] = None, *, prog: Optional[str] = None) -> int:
        """Run this verb on its own (a `python -m` alias of `mlux <name>`)."""
        parser = _Parser(prog=prog, description=self.description or self.help,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.label = self.label
        self.add_arguments(parser)
        parser.set_defaults(func=self.run, verb=self)
        return _parse_and_run(parser, argv)


def run_verb(verb: Verb, args: argparse.Namespace) -> int:
    """Run `verb` on parsed `args`: the one place errors become exit codes (see the module)."""
    try:
        return verb.run(args)
    except KeyboardInterrupt:
        note = f"; {verb.on_interrupt}" if verb.on_interrupt else ""
        print(f"{verb.label}: interrupted{note}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except USER_ERRORS as e:
        print(f"{verb.label}: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USER_ERROR


def run_command(prog: str, verbs: Sequence[Verb], argv: Optional[Sequence[str]] = None, *,
                description: Optional[str] = None) -> int:
    """A command with one subcommand per verb (`mlux`, `python -m mlux.collect.cli`)."""
    parser = _Parser(prog=prog, description=description)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for verb in verbs:
        verb.register(sub)
    return _parse_and_run(parser, argv)


def _parse_and_run(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]) -> int:
    try:
        args = parser.parse_args(argv)
    except UsageError as e:
        print(f"{e.label}: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USER_ERROR
    return run_verb(args.verb, args)


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return "; ".join(lines) or type(error).__name__
