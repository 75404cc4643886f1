"""Tables as text: the one markdown pipe-table writer and the one CSV writer that the experiments, reports,
benchmarks and deployment notes use."""

from __future__ import annotations

import csv
import io


def markdown_table(header: list, rows: list[list]) -> str:
    """A pipe table, one line per row, each cell as ``str`` writes it, ending in a newline."""
    lines = ["| " + " | ".join(str(c) for c in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def csv_text(header: list, rows) -> str:
    """A CSV with "\n" line endings (the csv module's default is "\r\n"): header, then the rows."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()
