"""`python -m mlux.testing.readme_table`: rewrite the README's architecture table from the
coverage results (`experiments/results/coverage.json`), between its marker comments."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Optional, Sequence

from mlux.atomic import atomic_write_text

from .coverage import DEFAULT_OUT, module_status

__all__ = ["BEGIN", "END", "render_table", "rewrite_readme"]

BEGIN = "<!-- coverage-table:begin (python -m mlux.testing.readme_table) -->"
END = "<!-- coverage-table:end -->"
_YES, _NO = "yes", "**no**"


def _bake(bake: dict[str, Optional[str]]) -> str:
    modes = [m for m, key in (("add", "bake_add"), ("ablate", "bake_ablate"))
             if bake.get(key) == "ok"]
    failed = [m for m, key in (("add", "bake_add"), ("ablate", "bake_ablate"))
              if bake.get(key) == "fail"]
    text = ", ".join(modes) if modes else "refused"
    return text + (f" (**{'/'.join(failed)} FAIL**)" if failed else "")


def render_table(results: dict[str, Any]) -> str:
    """The markdown table: one row per module, then the summary line."""
    lines = [
        "| module | wraps | hooks | steering | capture | cache == naive | batches | bake | "
        "loads | `attention_i` names | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, res in sorted(results["modules"].items()):
        s = module_status(res)
        if "wrap" not in s:
            lines.append(f"| {name} | {_NO} | | | | | | | | | {s['note']} |")
            continue
        note = s["note"].replace("rows run one by one: ", "")
        if s["fails"]:
            note = f"fails: {' '.join(s['fails'])}" + (f"; {note}" if note else "")
        cells = [_YES if s[k] else _NO for k in ("wrap", "hooks", "steering", "capture",
                                                  "cache")]
        batch = "padded" if s["batch"] == "padded" else "row by row"
        lines.append(f"| {name} | {' | '.join(cells)} | {batch} | {_bake(s['bake'])} | "
                     f"{_YES if s['load'] else _NO} | {s['mixers']} | {note} |")
    lines += ["", f"Summary (mlx-lm {results.get('mlx_lm', '?')}): {results['summary']}"]
    return "\n".join(lines)


def rewrite_readme(readme: Path, results_path: Path = DEFAULT_OUT) -> None:
    """Replace the text between the markers with a freshly rendered table."""
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise ValueError(f"{readme} has no coverage table markers ({BEGIN} ... {END})")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    table = render_table(json.loads(results_path.read_text()))
    atomic_write_text(readme, f"{head}{BEGIN}\n{table}\n{END}{tail}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mlux.testing.readme_table", description=__doc__)
    p.add_argument("--readme", type=Path, default=Path("README.md"))
    p.add_argument("--results", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    rewrite_readme(args.readme, args.results)
    print(f"rewrote the architecture table in {args.readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
