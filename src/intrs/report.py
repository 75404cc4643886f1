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


# ---------------------------------------------------------------- one HTML page for a run folder


def _markdown_to_html(text: str) -> str:
    """The little markdown our experiments write: paragraphs and pipe tables."""
    import html

    out, table = [], []

    def flush():
        if table:
            rows = [line.strip("|").split("|") for line in table if not set(line) <= set("|-: ")]
            head, body = rows[0], rows[1:]
            out.append("<table><tr>" + "".join(f"<th>{html.escape(c.strip())}</th>" for c in head) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in row) + "</tr>"
                                 for row in body) + "</table>")
            table.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    flush()
    return "\n".join(out)


def write_html_report(run_dir: str | Path) -> Path:
    """RUN_DIR/report.html: the settings, then every experiment's tables and figures, self-contained."""
    import base64
    import html
    import json

    run_dir = Path(run_dir)
    settings_path = run_dir / "preset.json"
    if not settings_path.is_file():
        raise DataError(f"{run_dir} is not a run folder of 'intrs reproduce' (no preset.json)")
    settings = json.loads(settings_path.read_text())
    preset = settings["preset"]
    parts = [f"<h1>intrs reproduction: preset {html.escape(preset['name'])}</h1>",
             f"<p>data set {html.escape(preset['dataset'])}, seed {settings.get('seed')}</p>"]
    if preset.get("reductions"):
        parts.append("<h2>Departures from the paper's settings</h2><ul>"
                     + "".join(f"<li>{html.escape(r)}</li>" for r in preset["reductions"]) + "</ul>")
    parts.append("<details><summary>all settings</summary><pre>" + html.escape(json.dumps(preset, indent=2))
                 + "</pre></details>")
    from .experiments import EXPERIMENTS

    for name in EXPERIMENTS:
        folder = run_dir / name
        if not folder.is_dir():
            continue
        parts.append(f"<h2>{html.escape(name)}</h2>")
        for md in sorted(folder.glob("*.md")):
            parts.append(_markdown_to_html(md.read_text()))
        for png in sorted(folder.glob("*.png")):
            data = base64.b64encode(png.read_bytes()).decode()
            parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(png.name)}">'
                         f"<figcaption>{html.escape(png.name)}</figcaption></figure>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px;"
             "text-align:right}th{background:#eee}img{max-width:100%}figcaption{color:#666;font-size:small}")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>intrs {html.escape(preset['name'])}</title>"
            f"<style>{style}</style></head><body>" + "\n".join(parts) + "</body></html>\n")
    out = run_dir / "report.html"
    out.write_text(page)
    return out
