"""Reports: certified-accuracy tables and curves from result TSVs (ours or Cohen et al.'s).

Reads data, never makes it. Certified accuracy at radius r is the fraction of
test images whose certified prediction is correct and whose radius is at least r
(Cohen's analyze.py convention, SPEC section 5). A PREDICT file certifies no
radius: its row gives the accuracy and the abstain rate instead.
"""

from __future__ import annotations

import bisect
import csv
import io
import math
import os
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

from .choices import EXPERIMENTS
from .errors import ConfigError, DataError, MissingDependencyError, OutputExistsError
from .files import write_atomically, write_text_atomically
# certified_accuracy and the radius grid live in results (below experiments and report); intrs.report keeps the names
from .results import MAX_RADIUS_COLUMNS, RADIUS_STEP, certified_accuracy, radius_grid, read_result_table  # noqa: F401
from .tables import markdown_table

DEFAULT_MAX_RADIUS = 1.5
_PLOT_POINTS = 400


def file_label(path: str | Path) -> str:
    """The file name without a .tsv or .txt extension: Cohen's ``sigma_0.25`` has none, and is not ``sigma_0``."""
    name = Path(path).name
    stem, ext = os.path.splitext(name)
    return stem if ext.lower() in (".tsv", ".txt") else name


_SIGMA_IN_NAME = re.compile(r"(?:sigma|noise)[_=-]?(\d+(?:\.\d+)?)", re.IGNORECASE)


def sigma_from_name(path: str | Path) -> str:
    """The sigma a file name states (Cohen's layout: .../noise_0.25/test/sigma_0.50), or ''."""
    match = _SIGMA_IN_NAME.search(file_label(path))
    return match.group(1) if match else ""


def _parse(path: Path, rows: list[dict], certify: bool) -> list[tuple[bool, bool, float]]:
    """(correct, abstained, radius) per row, every value checked: a bad row is named, not skipped."""
    parsed = []
    for line, row in enumerate(rows, start=2):
        if None in row.values():  # csv fills a short row's missing fields with None
            raise DataError(f"{path} line {line} has fewer fields than the header (a torn or truncated row?)")
        values = {}
        for name, kind in (("correct", int), ("predict", int)) + ((("radius", float),) if certify else ()):
            try:
                values[name] = kind(row[name])
            except ValueError:
                raise DataError(f"{path} line {line}: {name} {row[name]!r} is not "
                                f"{'an integer' if kind is int else 'a number'}") from None
        radius = values.get("radius", 0.0)
        if values["correct"] not in (0, 1):
            raise DataError(f"{path} line {line}: correct must be 0 or 1, got {row['correct']!r}")
        if not (math.isfinite(radius) and radius >= 0):  # NaN would drop out of every comparison silently
            raise DataError(f"{path} line {line}: the radius must be a finite number >= 0, got {row['radius']!r}")
        parsed.append((values["correct"] == 1, values["predict"] == -1, radius))
    return parsed


@dataclass
class AccuracyTable:
    """One row per result file, in the order given (the paper's Table 2 layout, one column per radius).

    Each row: system, sigma, file, images, kind ('certify' or 'predict'),
    accuracy, abstain, accuracies (certified accuracy at each radius, CERTIFY
    only), certified (the sorted radii of the correct rows, for the curves) and
    samples (forward passes per image: n0 + n for CERTIFY, n for PREDICT; None
    for files without an n column). When any file is a sequential run (a max_n
    column), the table adds each file's mean and median samples per image.
    """

    rows: list[dict]
    radii: list[float]

    @property
    def has_predict(self) -> bool:
        return any(row["kind"] == "predict" for row in self.rows)

    @property
    def has_certify(self) -> bool:
        return any(row["kind"] == "certify" for row in self.rows)

    @property
    def has_samples(self) -> bool:
        return any(row.get("sequential") for row in self.rows)

    def _header(self) -> list[str]:
        return (["system", "sigma", "file", "images"] + (["accuracy", "abstain"] if self.has_predict else [])
                + [f"r = {r:g}" for r in (self.radii if self.has_certify else [])]
                + (["mean samples", "median samples"] if self.has_samples else []))

    def _cells(self, row: dict, digits: int, missing: str) -> list[str]:
        cells = [row["system"], row["sigma"], row["file"], str(row["images"])]
        if self.has_predict:
            cells += [f"{row['accuracy']:.{digits}f}", f"{row['abstain']:.{digits}f}"]
        if self.has_certify:
            cells += ([f"{a:.{digits}f}" for a in row["accuracies"]] if row["kind"] == "certify"
                      else [missing] * len(self.radii))
        if self.has_samples:
            samples = row.get("samples")
            cells += ([f"{statistics.fmean(samples):.1f}", f"{statistics.median(samples):.1f}"] if samples
                      else [missing] * 2)
        return cells

    def to_markdown(self) -> str:
        return markdown_table(self._header(), [self._cells(row, 3, "-") for row in self.rows])

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([h.removeprefix("r = ") for h in self._header()])
        writer.writerows(self._cells(row, 6, "") for row in self.rows)
        return out.getvalue()

    def to_latex(self) -> str:
        """A LaTeX tabular (no packages needed), the markdown table's cells with text escaped."""
        header = self._header()
        numeric = len(header) - 3
        head = " & ".join(_latex_escape(h) if not h.startswith("r = ") else f"$r = {h[4:]}$" for h in header)
        body = [" & ".join(_latex_escape(c) for c in self._cells(row, 3, "--")) + r" \\" for row in self.rows]
        return "\n".join([r"\begin{tabular}{lll" + "r" * numeric + "}", r"\hline", head + r" \\", r"\hline",
                          *body, r"\hline", r"\end{tabular}"]) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def analyze(paths: list[str | Path], max_radius: float | None = None, step: float = RADIUS_STEP) -> AccuracyTable:
    """Certified accuracy at r = 0, step, ... for each result file, side by side, in the order given.

    Files without our extra columns (Cohen et al.'s own TSVs) are labelled by
    their file name, and their sigma read from it (``sigma_0.25``). A PREDICT file
    (ours, with a p_value column, or Cohen's, without a radius) gets its accuracy
    and abstain rate. Every row must parse: a bad value is named, not skipped.
    """
    if not paths:
        raise DataError("analyze needs at least one result file")
    # A bad --max-radius or --step is refused before any file is read.
    radius_grid(DEFAULT_MAX_RADIUS if max_radius is None else max_radius, step)
    table = []
    for path in map(Path, paths):
        columns, rows = read_result_table(path)
        certify = "radius" in columns and "p_value" not in columns
        parsed = _parse(path, rows, certify)
        first = rows[0] if rows else {}
        table.append({
            "system": first.get("system") or file_label(path), "sigma": first.get("sigma") or sigma_from_name(path),
            "file": str(path), "images": len(rows), "kind": "certify" if certify else "predict",
            "accuracy": sum(c for c, _, _ in parsed) / len(parsed) if parsed else 0.0,
            "abstain": sum(a for _, a, _ in parsed) / len(parsed) if parsed else 0.0,
            "certified": sorted(r for c, _, r in parsed if c) if certify else [],
            "samples": _samples(path, columns, rows, certify), "sequential": "max_n" in columns,
        })
    if max_radius is None:
        largest = max((r for row in table for r in row["certified"]), default=0.0)
        max_radius = max(DEFAULT_MAX_RADIUS, min(4.0, math.ceil(min(largest, 4.0) / step) * step))
    radii = radius_grid(max_radius, step)
    for row in table:
        row["accuracies"] = [_accuracy_at(row, r) for r in radii] if row["kind"] == "certify" else []
    return AccuracyTable(table, radii)


def _samples(path: Path, columns: list[str], rows: list[dict], certify: bool) -> list[int] | None:
    """Forward passes per image: n0 + n for CERTIFY (selection and estimation), n for PREDICT; None without n."""
    if "n" not in columns:
        return None
    names = ("n0", "n") if certify and "n0" in columns else ("n",)
    samples = []
    for line, row in enumerate(rows, start=2):
        try:
            samples.append(sum(int(row[name]) for name in names))
        except ValueError:
            raise DataError(f"{path} line {line}: {'/'.join(names)} must be integers, got "
                            f"{' '.join(repr(row[name]) for name in names)}") from None
    return samples


def _accuracy_at(row: dict, radius: float) -> float:
    """certified_accuracy from a row's sorted certified radii: those >= radius, over all images."""
    return (len(row["certified"]) - bisect.bisect_left(row["certified"], radius)) / row["images"] if row["images"] \
        else 0.0


def write_accuracy_plot(table: AccuracyTable, path: str | Path, force: bool = False) -> Path:
    """Certified accuracy against radius, one curve per CERTIFY file (Cohen's analyze.py figures).

    The format follows the file's extension (PNG when it has none matplotlib
    knows); written to a temporary file and renamed, so no half-written figure
    is left under the final name.
    """
    path = Path(path)
    curves = [row for row in table.rows if row["kind"] == "certify"]
    if not curves:
        raise ConfigError("--plot draws certified accuracy against radius, and PREDICT files certify no radius: "
                          "give at least one CERTIFY file")
    if path.exists() and not force:
        raise OutputExistsError(f"{path} already exists: pass --force to overwrite it or choose another --plot")
    if not path.parent.is_dir():
        raise ConfigError(f"cannot write {path}: the folder {path.parent} does not exist")
    try:
        import matplotlib
    except ImportError:
        raise MissingDependencyError("--plot needs matplotlib, which is not installed: "
                                     "pip install 'intrs[report]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    largest = table.radii[-1] if table.radii else DEFAULT_MAX_RADIUS
    grid = [largest * i / _PLOT_POINTS for i in range(_PLOT_POINTS + 1)]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    try:
        fmt = path.suffix[1:].lower()
        if fmt not in fig.canvas.get_supported_filetypes():
            fmt = "png"
        for row in curves:
            about = ([row["system"]] if row["system"] != file_label(row["file"]) else []) \
                + ([f"sigma = {row['sigma']}"] if row["sigma"] else [])
            label = f"{row['file']} ({', '.join(about)})" if about else row["file"]
            ax.plot(grid, [_accuracy_at(row, r) for r in grid], label=label)
        ax.set_xlabel("L2 radius ([0, 1] pixel units)")
        ax.set_ylabel("certified accuracy")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        write_atomically(path, lambda handle: fig.savefig(handle, format=fmt, dpi=120))
    finally:
        plt.close(fig)
    return path


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
    return write_text_atomically(run_dir / "report.html", page)
