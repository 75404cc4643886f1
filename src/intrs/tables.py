"""Markdown tables: the one pipe-table writer the experiments, reports, benchmarks and deployment notes use."""

from __future__ import annotations


def markdown_table(header: list, rows: list[list]) -> str:
    """A pipe table, one line per row, each cell as ``str`` writes it, ending in a newline."""
    lines = ["| " + " | ".join(str(c) for c in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
