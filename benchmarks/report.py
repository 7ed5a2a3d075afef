"""The report: a markdown table printed and appended to docs/benchmarks.md.

The file gets its header once; every run appends one `## ...` section, so
runs on different machines or commits sit side by side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

HEADER = """# Benchmarks

Appended by `make bench` (`.venv/bin/python -m benchmarks.run`): one section
per run, newest last. Every figure is measured next to its reference in the
same run and quoted both as a ratio and as an absolute value; compare ratios
across runs and machines, not absolute rates. What each figure measures is
in the docstring of `benchmarks/run.py`; targets come from
`ARCHITECTURE.md` ("Performance targets").
"""

COLUMNS = ("figure", "value", "reference (same run)", "ratio", "target", "note")


@dataclass(frozen=True)
class Row:
    figure: str
    value: str
    reference: str
    ratio: str
    target: str
    note: str

    def cells(self) -> tuple[str, ...]:
        return (self.figure, self.value, self.reference, self.ratio, self.target, self.note)


def _escape(cell: str) -> str:
    return cell.replace("|", "\\|").replace("\n", " ")


def render_table(rows: Sequence[Row]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_escape(c) for c in row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def render_section(title: str, facts: Sequence[tuple[str, str]], rows: Sequence[Row],
                   notes: Sequence[str]) -> str:
    """`## title`, a list of facts (machine, command, ...), the table, notes."""
    parts = [f"## {title}", ""]
    parts += [f"- {name}: {value}" for name, value in facts]
    parts += ["", render_table(rows), ""]
    if notes:
        parts += ["Notes:", ""] + [f"- {note}" for note in notes] + [""]
    return "\n".join(parts)


def append_section(path: Path, section: str) -> None:
    """Append `section` to `path`, writing the header first if the file is
    new or empty."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fresh = not path.exists() or not path.read_text().strip()
    with path.open("a") as out:
        if fresh:
            out.write(HEADER)
        out.write("\n" + section)
