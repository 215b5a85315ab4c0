"""The README's quality table, rebuilt from an ``evaluation.json`` (``make eval``).

``python docs/eval_table.py runs/unseen-eval/evaluation.json`` prints the Markdown table (per
label: mean Dice, lowest Dice, mean HD95); ``--readme README.md`` also writes it into the README
between the ``<!-- eval-table -->`` and ``<!-- /eval-table -->`` markers (atomically).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from medseg.errors import MedsegError
from medseg.io import atomic_write_text
from medseg.schema import read_json_object

START, END = "<!-- eval-table -->", "<!-- /eval-table -->"


def _fmt(value: float | None, digits: int) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def table(report: dict) -> str:
    """Markdown: one column per label (by value, background left out), three rows."""
    labels = [name for name, value in sorted(report["labels"].items(), key=lambda kv: kv[1]) if value != 0]
    dice: dict[str, list[float]] = {name: [] for name in labels}
    for case in report["cases"]:
        for name, scores in case["labels"].items():
            if name in dice and scores.get("dice") is not None:
                dice[name].append(float(scores["dice"]))
    summary = report["summary"]
    rows = [
        "| | " + " | ".join(name.replace("_", " ") for name in labels) + " |",
        "| --- |" + " --- |" * len(labels),
        "| mean Dice | " + " | ".join(_fmt(summary[n]["mean_dice"], 3) for n in labels) + " |",
        "| lowest Dice | " + " | ".join(_fmt(min(dice[n], default=None), 3) for n in labels) + " |",
        "| mean HD95 (mm) | " + " | ".join(_fmt(summary[n]["mean_hd95"], 1) for n in labels) + " |",
    ]
    n_cases = len(report["cases"])
    return "\n".join(rows) + f"\n\n{n_cases} cases, mean Dice over labels {_fmt(report['mean_dice'], 3)}.\n"


def update_readme(readme: Path, text: str) -> None:
    """Replace what stands between the markers; refuse when they are missing."""
    body = readme.read_text()
    if START not in body or END not in body or body.index(START) > body.index(END):
        raise MedsegError(f"{readme}: the markers {START} ... {END} are missing")
    head, rest = body.split(START, 1)
    _, tail = rest.split(END, 1)
    atomic_write_text(readme, f"{head}{START}\n{text}{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="evaluation.json written by `medseg evaluate`")
    parser.add_argument("--readme", type=Path, help="README to update between the markers")
    args = parser.parse_args(argv)
    try:
        text = table(read_json_object(args.report))
        if args.readme is not None:
            update_readme(args.readme, text)
    except (MedsegError, KeyError, TypeError) as exc:
        print(f"error: {args.report}: {exc if isinstance(exc, MedsegError) else f'not an evaluation report ({exc})'}",
              file=sys.stderr)
        return 1
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
