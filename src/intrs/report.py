"""Reports: certified-accuracy tables from result TSVs (ours or Cohen et al.'s).

Reads data, never makes it. Certified accuracy at radius r is the fraction of
test images whose certified prediction is correct and whose radius is at least r
(Cohen's analyze.py convention, SPEC section 5).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

from .errors import DataError
from .results import read_results

RADIUS_STEP = 0.25
DEFAULT_MAX_RADIUS = 1.5


def certified_accuracy(rows: list[dict], radius: float) -> float:
    """Fraction of rows that are correct with a certified radius >= ``radius``."""
    if not rows:
        return 0.0
    return sum(int(r["correct"]) == 1 and float(r["radius"]) >= radius for r in rows) / len(rows)


def radius_grid(max_radius: float, step: float = RADIUS_STEP) -> list[float]:
    """0, step, 2 step, ... up to max_radius inclusive."""
    return [round(i * step, 10) for i in range(int(math.floor(max_radius / step + 1e-9)) + 1)]


@dataclass
class AccuracyTable:
    """Certified accuracy, one row per result file, one column per radius (the paper's Table 2 layout)."""

    rows: list[dict]  # each: system, sigma, file, images, accuracies
    radii: list[float]

    def to_markdown(self) -> str:
        header = ["system", "sigma", "images"] + [f"r = {r:g}" for r in self.radii]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in self.rows:
            cells = [row["system"], row["sigma"], str(row["images"])] + [f"{a:.3f}" for a in row["accuracies"]]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["system", "sigma", "file", "images"] + [f"{r:g}" for r in self.radii])
        for row in self.rows:
            writer.writerow([row["system"], row["sigma"], row["file"], row["images"]]
                            + [f"{a:.6f}" for a in row["accuracies"]])
        return out.getvalue()


def analyze(paths: list[str | Path], max_radius: float | None = None, step: float = RADIUS_STEP) -> AccuracyTable:
    """Certified accuracy at r = 0, step, ... for each result file, side by side.

    Files without our extra columns (Cohen et al.'s own TSVs) are labelled by
    their file name.
    """
    if not paths:
        raise DataError("analyze needs at least one result file")
    if step <= 0 or (max_radius is not None and max_radius < 0):
        raise DataError(f"radius step must be > 0 and max radius >= 0, got step={step}, max={max_radius}")
    loaded = [(Path(p), read_results(p)) for p in paths]
    if max_radius is None:
        largest = max((float(r["radius"]) for _, rows in loaded for r in rows), default=0.0)
        max_radius = max(DEFAULT_MAX_RADIUS, min(4.0, math.ceil(largest / step) * step))
    radii = radius_grid(max_radius, step)
    table = []
    for path, rows in loaded:
        first = rows[0] if rows else {}
        table.append({
            "system": first.get("system") or path.stem, "sigma": first.get("sigma", ""), "file": str(path),
            "images": len(rows), "accuracies": [certified_accuracy(rows, r) for r in radii],
        })
    table.sort(key=_paper_order)
    return AccuracyTable(table, radii)


_SYSTEM_ORDER = {"floatrs-fp": 0, "intrs-quant": 1, "floatrs-quant": 2}


def _paper_order(row: dict) -> tuple:
    """The paper's Table 2 order: FloatRS-fp, IntRS-quant, FloatRS-quant, each by increasing sigma."""
    try:
        sigma = float(row["sigma"])
    except ValueError:
        sigma = math.inf
    return (_SYSTEM_ORDER.get(row["system"], len(_SYSTEM_ORDER)), row["system"], sigma, row["file"])
