"""How every verb of the `mlux` command runs, and every `python -m` alias of one.

A verb is a `Verb(name, help, add_arguments, run)`; `mlux.cli` lists them all, and a module that
can also be run on its own (`python -m mlux.experiments.layer_sweep`) calls `VERB.main(argv)`.
Either way the verb goes through `run_verb`, the one entry style:

- a user error (a bad argument, `ValueError` and the project's error types derived from it,
  `OSError` such as a missing file) prints one line `mlux <verb>: error: <message>` on stderr and
  exits 2;
- Ctrl-C (`KeyboardInterrupt`) prints `mlux <verb>: interrupted` and exits 130, no traceback;
- anything else is a bug and keeps its traceback;
- a warning raised while the verb runs prints one line `mlux <verb>: warning: <message>`;
- a closed stdout (`mlux info | head -3`) ends the verb quietly with exit code 141 (128 +
  SIGPIPE, what a shell reports for a Unix tool killed by a closed pipe);
- an unknown option is `mlux <verb>: error: unrecognized arguments: ...` with a "did you mean"
  from the verb's own options.

Help keeps descriptions (and their example commands) verbatim and shows every option's default
(`HelpFormatter`); `int_in` makes range-checked int options (`--samples`, `--seed`, `--port`).

This module imports no verb, so the verbs and `mlux.cli` can both import it without a cycle.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import os
import re
import sys
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

__all__ = ["EXIT_BROKEN_PIPE", "EXIT_INTERRUPTED", "EXIT_USER_ERROR", "USER_ERRORS",
           "HelpFormatter", "UsageError", "Verb", "int_in", "run_command", "run_verb"]

EXIT_USER_ERROR = 2  # argparse's own exit code for a bad command line
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for `yes | head -1`
# Errors a user can fix. The project's own error types (HookError, APIError, ScorerError, ...)
# derive from ValueError; FileNotFoundError and PermissionError are OSErrors.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)


class UsageError(ValueError):
    """A bad command line (unknown option, missing or malformed value)."""

    def __init__(self, message: str, label: str) -> None:
        super().__init__(message)
        self.label = label


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written (example commands stay on their lines) and each option's default
    after its help, unless the help already speaks of one or there is none to show (None, a
    flag's False)."""

    def _get_help_string(self, action: argparse.Action) -> Optional[str]:
        text = action.help or ""
        if (action.default is None or action.default is False or not action.option_strings
                or action.default == argparse.SUPPRESS or "default" in text.lower()):
            return text
        return f"{text} (default: %(default)s)"


def int_in(low: int, high: Optional[int] = None) -> Callable[[str], int]:
    """An argparse `type` for an int in `low..high` (no upper bound when `high` is None): a
    value out of range is a usage error naming the range, never a failure deep in the run."""

    def parse(text: str) -> int:
        value = int(text)  # a ValueError is argparse's "invalid int value: 'x'"
        if value < low or (high is not None and value > high):
            span = f"in {low}..{high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"must be an integer {span}, got {value}")
        return value

    parse.__name__ = "int"
    return parse


_EXPECTED_VALUE = re.compile(r"argument (\S+?)(?:/\S+)?: expected one argument")


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are raised as `UsageError` instead of exiting, so that
    they are reported like every other user error. `label` names the verb in the message."""

    label: Optional[str] = None
    argv: Sequence[str] = ()  # the command line being parsed, for hints

    def error(self, message: str) -> Any:  # argparse's hook; never returns
        m = _EXPECTED_VALUE.search(message)
        if m:  # `--strengths -4,-2`: argparse takes a value starting with '-' for an option
            argv = list(_Parser.argv)
            value = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == m.group(1)
                          and argv[i + 1].startswith("-")), "-1")
            message += (f"; a value that starts with '-' must be joined with '=': "
                        f"{m.group(1)}={value}")
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
                                       formatter_class=HelpFormatter)
        parser.label = self.label
        self.add_arguments(parser)
        parser.set_defaults(func=self.run, verb=self, verb_parser=parser)
        return parser

    def alias(self, module: str) -> Callable[[Optional[Sequence[str]]], int]:
        """`main(argv)` for `python -m <module>`, the alias of `mlux <name>`."""
        return functools.partial(self.main, prog=f"python -m {module}")

    def main(self, argv: Optional[Sequence[str]] = None, *, prog: Optional[str] = None) -> int:
        """Run this verb on its own (a `python -m` alias of `mlux <name>`)."""
        parser = _Parser(prog=prog, description=self.description or self.help,
                         formatter_class=HelpFormatter)
        parser.label = self.label
        self.add_arguments(parser)
        parser.set_defaults(func=self.run, verb=self, verb_parser=parser)
        return _parse_and_run(parser, argv)


def run_verb(verb: Verb, args: argparse.Namespace) -> int:
    """Run `verb` on parsed `args`: the one place errors become exit codes (see the module)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = _warning_line(verb.label)
            return verb.run(args)
    except BrokenPipeError:  # an OSError, but not the user's: `_quiet_on_closed_stdout`'s
        raise
    except KeyboardInterrupt:
        note = f"; {verb.on_interrupt}" if verb.on_interrupt else ""
        print(f"{verb.label}: interrupted{note}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except USER_ERRORS as e:
        print(f"{verb.label}: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USER_ERROR


def run_command(prog: str, verbs: Sequence[Verb], argv: Optional[Sequence[str]] = None, *,
                description: Optional[str] = None, version: Optional[str] = None,
                epilog: Optional[str] = None) -> int:
    """A command with one subcommand per verb (`mlux`, `python -m mlux.collect.cli`). With no
    arguments at all it prints its help (the verbs, one line each) and exits 0."""
    parser = _Parser(prog=prog, description=description, epilog=epilog,
                     formatter_class=HelpFormatter)
    if version is not None:
        parser.add_argument("--version", action="version", version=f"{prog} {version}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                title="commands")
    for verb in verbs:
        verb.register(sub)
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        return _quiet_on_closed_stdout(lambda: parser.print_help() or 0)
    return _parse_and_run(parser, argv)


def _quiet_on_closed_stdout(run: Callable[[], int]) -> int:
    """`run()`, ending quietly with `EXIT_BROKEN_PIPE` when stdout is closed under it."""
    try:
        code = run()
        sys.stdout.flush()  # inside the try: a closed pipe is reported here, not at exit
        return code
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE


def _parse_and_run(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]) -> int:
    return _quiet_on_closed_stdout(functools.partial(_parse_then_run, parser, argv))


def _parse_then_run(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]) -> int:
    _Parser.argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:  # reported by the verb's parser, so the message names the verb
            verb_parser = getattr(args, "verb_parser", parser)
            verb_parser.error(_unrecognized(extra, verb_parser))
    except UsageError as e:
        print(f"{e.label}: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except SystemExit as e:  # --help, --version: printed; return their code, don't exit
        return e.code if isinstance(e.code, int) else 0
    return run_verb(args.verb, args)


def _unrecognized(extra: list[str], parser: argparse.ArgumentParser) -> str:
    """argparse's message for unknown arguments, plus the closest option of this verb."""
    options = [o for action in parser._actions for o in action.option_strings]
    hints = []
    for arg in extra:
        if arg.startswith("--"):
            close = difflib.get_close_matches(arg.split("=", 1)[0], options, n=1, cutoff=0.6)
            if close:
                hints.append(f"{arg.split('=', 1)[0]}: did you mean {close[0]}?")
    return f"unrecognized arguments: {' '.join(extra)}" + (f" ({'; '.join(hints)})"
                                                           if hints else "")


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's own flush at exit finds no closed pipe
    (and prints no "Exception ignored ... BrokenPipeError")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real file descriptor behind stdout
        pass


def _warning_line(label: str) -> Callable[..., None]:
    def show(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        print(f"{label}: warning: {_one_line(message)}", file=sys.stderr)

    return show


def _one_line(error: BaseException | Warning | str) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return "; ".join(lines) or type(error).__name__
