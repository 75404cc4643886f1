"""Reports: certified-accuracy tables and curves from result TSVs (ours or Cohen et al.'s).

Reads data, never makes it. Certified accuracy at radius r is the fraction of
test images whose certified prediction is correct and whose radius is at least r
(Cohen's analyze.py convention, SPEC section 5). A PREDICT file certifies no
radius: its row gives the accuracy and the abstain rate instead.
"""

from __future__ import annotations

import bisect
import csv
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
from .results import (FACTS_NAME, INTERVAL_HEADER, MAX_RADIUS_COLUMNS, RADIUS_STEP, TABLE1_HEADER,  # noqa: F401
                      certified_accuracy, certified_count, radius_grid, read_result_table, read_results,
                      samples_per_image)
from .confidence import binomial_p_value, clopper_pearson_interval
from .tables import csv_text, markdown_table

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
        return csv_text([h.removeprefix("r = ") for h in self._header()],
                        (self._cells(row, 6, "") for row in self.rows))

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
            "samples": samples_per_image(path, columns, rows, certify), "sequential": "max_n" in columns,
        })
    if max_radius is None:
        largest = max((r for row in table for r in row["certified"]), default=0.0)
        max_radius = max(DEFAULT_MAX_RADIUS, min(4.0, math.ceil(min(largest, 4.0) / step) * step))
    radii = radius_grid(max_radius, step)
    for row in table:
        row["accuracies"] = [_accuracy_at(row, r) for r in radii] if row["kind"] == "certify" else []
    return AccuracyTable(table, radii)


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
    plt = _pyplot("--plot")
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


def _pyplot(what: str):
    """matplotlib's pyplot on the Agg backend, or one line saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise MissingDependencyError(f"{what} needs matplotlib, which is not installed: "
                                     "pip install 'intrs[report]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(fig, path: Path, dpi: int) -> Path:
    """A matplotlib figure as a PNG, written atomically, and closed."""
    try:
        fig.tight_layout()
        return write_atomically(path, lambda handle: fig.savefig(handle, format="png", dpi=dpi))
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


# ---------------------------------------------------------------- a reproduction's tables and figures
#
# intrs.experiments writes data (TSV rows, CSV, NPZ pictures, facts.json); everything shown is made here, from
# those files alone, so a finished or unfinished run folder renders the same way (`intrs report RUN_DIR`).


def _write_csv(path: Path, header, rows) -> Path:
    return write_text_atomically(path, csv_text(header, rows))


def _read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def _samples_phrase(preset: dict) -> str:
    """How a preset's CERTIFY spends samples, as its captions say it."""
    return f"sequential up to n = {preset['n']:,}" if preset.get("sequential") else f"n = {preset['n']:,}"


def _render_table1(folder: Path, preset: dict, facts: dict) -> None:
    by_n: dict[int, dict[str, list[dict]]] = {}
    for cell in facts["cells"]:
        tsv = folder / cell["tsv"]
        by_n.setdefault(cell["n"], {})[cell["system"]] = read_results(tsv) if tsv.exists() else []
    rows = []
    for n, systems in by_n.items():
        row = [n]
        for system in ("FloatRS-fp", "IntRS-quant"):
            results = systems.get(system) or []
            if results:
                row += [f"{statistics.fmean(r['correct'] == '1' for r in results):.4f}",
                        f"{statistics.fmean(r['predict'] == '-1' for r in results):.4f}",
                        f"{statistics.fmean(float(r['time']) for r in results):.4f}"]
            else:
                row += ["", "", ""]
        rows.append(row)
    _write_csv(folder / "table1.csv", TABLE1_HEADER, rows)
    shown = [[str(row[0])] + [f"{float(v):.{3 if i % 3 == 2 else 2}f}" if v else "-" for i, v in enumerate(row[1:])]
             for row in rows]
    for row, cells in zip(rows, shown):  # the integer speed-up: FloatRS-fp's seconds per image over IntRS-quant's
        cells.append(f"{float(row[3]) / float(row[6]):.2f}x" if row[3] and row[6] and float(row[6]) > 0 else "-")
    header = ["n", "FloatRS-fp correct", "abstain", "s/image", "IntRS-quant correct", "abstain", "s/image",
              "IntRS speed-up"]
    write_text_atomically(folder / "table1.md",
        f"Table 1: PREDICT with sigma = {facts['sigma']}, alpha = {preset['alpha']} ({facts['images']} test images); "
        "s/image: wall seconds per image on the machine of the run; IntRS speed-up: FloatRS-fp's s/image over "
        "IntRS-quant's\n\n" + markdown_table(header, shown))


def _cell_rows(folder: Path, facts: dict) -> list[tuple[dict, list[dict], list[int] | None]]:
    """The cells of a certified-accuracy experiment whose TSV exists: (cell, rows, samples per image)."""
    found = []
    for cell in facts["cells"]:
        tsv = folder / cell["tsv"]
        if tsv.exists():
            columns, rows = read_result_table(tsv)
            if rows:
                found.append((cell, rows, samples_per_image(tsv, columns, rows, certify=True)))
    return found


# line style, width and marker per curve: FloatRS-fp's curve (drawn first, wide) shows under one that overlaps it
_STYLES = ({"linestyle": "-", "linewidth": 3.0, "alpha": 0.6}, {"linestyle": "--", "linewidth": 1.6},
           {"linestyle": ":", "linewidth": 2.0}, {"linestyle": "-.", "linewidth": 1.4},
           {"linestyle": (0, (5, 1, 1, 1)), "linewidth": 1.4}, {"linestyle": (0, (1, 1)), "linewidth": 1.4})


_MARKERS = ("o", "s", "^", "D", "v", "P")


def _accuracy_figure(path: Path, curves: list[tuple[str, list[dict]]], title: str, largest: float,
                     decided: list[float] | None = None) -> Path:
    """Certified accuracy against radius, one curve per cell. ``decided``: the radii a sequential run decided;
    its certificate says nothing between them (a row stops once every listed radius is settled, so its radius
    is not the largest it could reach), so such curves are drawn at those radii only, as markers."""
    plt = _pyplot("the reproduction's figures")
    grid = decided if decided else [largest * i / _PLOT_POINTS for i in range(_PLOT_POINTS + 1)]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, (label, rows) in enumerate(curves):  # overlapping curves stay visible: a style each
        style = dict(_STYLES[i % len(_STYLES)], **({"marker": _MARKERS[i % len(_MARKERS)]} if decided else {}))
        ax.plot(grid, [certified_accuracy(rows, r) for r in grid], label=label, **style)
    ax.set_xlabel("L2 radius ([0, 1] pixel units; the integer systems certify whole 8-bit steps, r x 255)"
                  + ("\nsequential CERTIFY: at the radii it decided" if decided else ""))
    ax.set_ylabel("certified accuracy (fraction of test images)")
    ax.set_title(title)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save_figure(fig, path, dpi=120)


def _figure_span(preset: dict, facts: dict) -> tuple[float, list[float] | None]:
    """A certified-accuracy figure's largest radius, and the radii a sequential preset decided (else None)."""
    return max(facts["radii"][-1], 0.25) + 0.5, facts["radii"] if preset.get("sequential") else None


def _render_accuracy(folder: Path, preset: dict, facts: dict, caption: str) -> list:
    """certified_accuracy.csv (the paper's layout), certified_accuracy_intervals.csv (every cell with its 95%
    Clopper-Pearson interval over images and the samples an image took) and certified_accuracy.md, from the
    cells' TSVs; returns the cells found."""
    radii, row_name = facts["radii"], facts["row_name"]
    found = _cell_rows(folder, facts)
    wide, long, blocks = [], [], {}
    for cell, rows, samples in found:
        counts = [certified_count(rows, r) for r in radii]
        spent = [f"{statistics.fmean(samples):.0f}", f"{statistics.median(samples):.0f}"] if samples else ["", ""]
        wide.append([cell["label"], cell["row"]] + [f"{k / len(rows):.4f}" for k in counts])
        shown = [f"{row_name} = {cell['row']}"]
        for radius, k in zip(radii, counts):
            lower, upper = clopper_pearson_interval(k, len(rows))
            long.append([cell["label"], cell["row"], f"{radius:g}", len(rows), k, f"{k / len(rows):.4f}",
                         f"{lower:.4f}", f"{upper:.4f}"] + spent)
            shown.append(f"{k / len(rows):.2f} [{lower:.2f}, {upper:.2f}]")
        shown += [str(len(rows)), f"{statistics.fmean(samples):,.0f}" if samples else "-"]
        blocks.setdefault(cell["label"], []).append(shown)
    _write_csv(folder / "certified_accuracy.csv", ["system", row_name] + [f"{r:g}" for r in radii], wide)
    _write_csv(folder / "certified_accuracy_intervals.csv", (INTERVAL_HEADER[0], row_name) + INTERVAL_HEADER[2:],
               long)
    tables = [markdown_table([label] + [f"r = {r:g}" for r in radii] + ["images", "samples/image"], rows)
              for label, rows in blocks.items()]
    gaps = [(other, _gap_table(found, radii, row_name, "FloatRS-fp", other)) for other in ("IntRS-quant", "FloatRS-quant")]
    write_text_atomically(folder / "certified_accuracy.md",
        f"{caption}; each cell: certified accuracy [95% Clopper-Pearson interval over the images]; "
        f"samples/image: the mean of n0 + n"
        + ("; sequential CERTIFY decides the radii above 0 only: at r = 0 a row counts when it is correct and its "
           "lower bound passed 1/2 by the time it stopped, which can be early, so that column may read below the "
           "clean accuracy" if preset.get("sequential") and 0 in radii else "")
        + "\n\n" + "\n".join(tables)
        + "".join(f"\n{other} minus FloatRS-fp, per cell, on the same images: the gap (images certified by "
                  f"{other} only / by FloatRS-fp only, the exact two-sided McNemar p-value of that split)\n\n{gap}"
                  for other, gap in gaps if gap))
    return found


def _gap_table(found: list, radii: list[float], row_name: str, base: str, other: str) -> str:
    """``other`` minus ``base`` per cell, on the images both cells certified (all of them in a finished run;
    in an unfinished one the common images, counted in the last column), with the paired test of the
    difference: McNemar's exact test, the binomial test at 1/2 of the images that one system certifies at that
    radius and the other does not (the images both or neither certify say nothing about the difference)."""
    cells = {(cell["label"], cell["row"]): rows for cell, rows, _ in found}
    rows = []
    for (label, value), mine in cells.items():
        theirs = cells.get((label.replace(other, base, 1), value)) if label.startswith(other) else None
        if theirs is None:
            continue
        common = {r["idx"] for r in mine} & {r["idx"] for r in theirs}
        if not common:
            continue
        a = {r["idx"]: r for r in mine if r["idx"] in common}
        b = {r["idx"]: r for r in theirs if r["idx"] in common}
        cells_out = []
        for radius in radii:
            only_a = sum(certified_count([a[i]], radius) > certified_count([b[i]], radius) for i in common)
            only_b = sum(certified_count([b[i]], radius) > certified_count([a[i]], radius) for i in common)
            cells_out.append(f"{(only_a - only_b) / len(common):+.2f} ({only_a}/{only_b}, "
                             f"p {binomial_p_value(only_a, only_a + only_b):.2f})")
        rows.append([label.replace(other, f"{other} - {base}", 1) + f", {row_name} = {value}"] + cells_out
                    + [len(common)])
    return markdown_table(["gap"] + [f"r = {r:g}" for r in radii] + ["images"], rows) if rows else ""


def _render_certify_sigma(folder: Path, preset: dict, facts: dict) -> None:
    found = _render_accuracy(folder, preset, facts,
        f"Tables 2/3: certified accuracy on {preset['dataset']}, train sigma = certify sigma, "
        f"{_samples_phrase(preset)}, alpha = {preset['alpha']}, {preset['images']} test images")
    largest, decided = _figure_span(preset, facts)
    for label in dict.fromkeys(cell["label"] for cell, _, _ in found):
        system = label.lower()
        _accuracy_figure(folder / f"certified_accuracy_{system}.png",
                         [(f"sigma = {cell['row']}", rows) for cell, rows, _ in found if cell["label"] == label],
                         f"{label} on {preset['dataset']}", largest, decided)
    reference = f"{facts['reference_sigma']:.2f}"
    curves = [(cell["label"], rows) for cell, rows, _ in found if cell["row"] == reference]
    if curves:
        _accuracy_figure(folder / f"certified_accuracy_sigma{facts['reference_sigma']:g}.png", curves,
                         f"sigma = {facts['reference_sigma']} on {preset['dataset']}: the three systems", largest,
                         decided)


def _render_sigma_mismatch(folder: Path, preset: dict, facts: dict) -> None:
    _render_accuracy(folder, preset, facts,
        f"Tables 4/5: base models trained at sigma in {preset['mismatch_train_sigmas']}, certified at each sigma "
        f"({_samples_phrase(preset)}, alpha = {preset['alpha']}, {preset['images']} test images)")


def _render_alpha(folder: Path, preset: dict, facts: dict) -> None:
    found = _render_accuracy(folder, preset, facts,
        f"Figure 11: certified accuracy for several alpha, sigma = {facts['sigma']}, {_samples_phrase(preset)}, "
        f"{preset['images']} test images")
    _accuracy_figure(folder / "certified_accuracy_alpha.png",
                     [(f"{cell['label']}, alpha = {cell['row']}", rows) for cell, rows, _ in found],
                     f"alpha on {preset['dataset']}, sigma = {facts['sigma']}", *_figure_span(preset, facts))


def _line_figure(path: Path, rows: list[list[str]], labels: list[str], xlabel: str, ylabel: str, title: str) -> Path:
    plt = _pyplot("the reproduction's figures")
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    xs = [float(r[0]) for r in rows]
    for column, label in enumerate(labels, start=1):
        ax.plot(xs, [float(r[column]) for r in rows], label=label, **_STYLES[(column - 1) % len(_STYLES)])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save_figure(fig, path, dpi=120)


def _as_picture(pixels):
    """(C, H, W) pixel values in [0, 255] as an image matplotlib shows: 2-D grey or (H, W, 3) uint8."""
    import numpy as np

    array = np.clip(np.asarray(pixels, dtype=np.float32), 0, 255)
    return array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0).astype(np.uint8)


def _picture_grid(path: Path, pictures, column_titles: list[str], row_labels: list[str], dpi: int) -> Path:
    """pictures[i][k][j]: image i, kind k (a row of its own), column j."""
    plt = _pyplot("the reproduction's figures")
    images, kinds, columns = len(pictures), len(row_labels), len(column_titles)
    fig, axes = plt.subplots(kinds * images, columns, figsize=(1.7 * columns, 1.7 * kinds * images), squeeze=False)
    for i in range(images):
        for k in range(kinds):
            for j in range(columns):
                ax = axes[kinds * i + k][j]
                ax.imshow(_as_picture(pictures[i][k][j]), cmap="gray", vmin=0, vmax=255)
                ax.set_xticks([])
                ax.set_yticks([])
                if i == 0 and k == 0:
                    ax.set_title(column_titles[j], fontsize=8)
                if j == 0:
                    ax.set_ylabel(row_labels[k], fontsize=7)
    return _save_figure(fig, path, dpi=dpi)


def _render_pgd_linf(folder: Path, preset: dict, facts: dict) -> None:
    import numpy as np

    table = _read_csv(folder / "accuracy.csv")
    write_text_atomically(folder / "accuracy.md",
        f"Figure 1: PGD L-inf ({facts['steps']} steps, random start) against the base classifiers trained at "
        f"sigma = {facts['sigma']}; the adversarial image is truncated to the 8-bit grid; the quantized model is "
        f"attacked through its fake-quantized twin and judged by the integer engine ({facts['images']} test images)"
        "\n\n" + markdown_table(table[0], table[1:]))
    _line_figure(folder / "accuracy.png", table[1:], ["float", "quantized (integer engine)"],
                 "eps (L-inf, [0, 1] pixel units)", "accuracy (fraction of test images)", "PGD L-inf on the base classifiers")
    examples = folder / "adversarial_images.npz"
    if examples.exists():
        with np.load(examples) as data:
            steps = range(len(facts["epsilons"]))
            pictures = [[[data[f"{kind}_{j}"][i] for j in steps] for kind in ("float", "quantized")]
                        for i in range(len(data["clean"]))]
        _picture_grid(folder / "adversarial_images.png", pictures, [f"eps={e:g}" for e in facts["epsilons"]],
                      ["float", "quantized"], dpi=100)


def _render_pgd_l2(folder: Path, preset: dict, facts: dict) -> None:
    table = _read_csv(folder / "accuracy.csv")
    write_text_atomically(folder / "accuracy.md",
        f"Figure 10: PGD L2 ({facts['steps']} steps, {preset['attack_samples']} noise samples per step) against the "
        f"smoothed classifiers, then PREDICT (n = {preset['predict_n']}, alpha = {facts['predict_alpha']}, "
        f"sigma = {facts['sigma']}), {facts['images']} test images\n\n" + markdown_table(table[0], table[1:]))
    _line_figure(folder / "accuracy.png", table[1:], ["FloatRS-fp", "IntRS-quant"], "eps (L2, [0, 1] pixel units)",
                 "PREDICT accuracy (fraction of test images)",
                 "PGD L2 against the smoothed classifiers")


def _render_noisy_images(folder: Path, preset: dict, facts: dict) -> None:
    import numpy as np

    with np.load(folder / "noisy_images.npz") as data:
        pictures = [[data["gaussian"][i], data["discrete"][i]] for i in range(len(data["gaussian"]))]
    _picture_grid(folder / "noisy_images.png", pictures, ["clean"] + [f"sigma={s:g}" for s in facts["sigmas"]],
                  ["Gaussian", "discrete Gaussian"], dpi=100)
    write_text_atomically(folder / "noisy_images.md",
        f"Figures 12/13: test images of {preset['dataset']} with noise at each sigma: continuous Gaussian (the "
        "paper's figure) and the discrete Gaussian IntRS adds on the integer grid (clipped to [0, 255] for display "
        "only)\n")


_RENDERERS = {"table1": _render_table1, "certify-sigma": _render_certify_sigma,
              "sigma-mismatch": _render_sigma_mismatch, "pgd-linf": _render_pgd_linf, "pgd-l2": _render_pgd_l2,
              "alpha": _render_alpha, "noisy-images": _render_noisy_images}


def _run_settings(run_dir: Path) -> dict:
    import json

    settings_path = run_dir / "preset.json"
    if not settings_path.is_file():
        raise DataError(f"{run_dir} is not a run folder of 'intrs reproduce' (no preset.json)")
    try:
        settings = json.loads(settings_path.read_text())
        settings["preset"]["name"]
    except (OSError, ValueError, KeyError, TypeError):
        raise DataError(f"{settings_path} is damaged (not the settings 'intrs reproduce' writes)") from None
    return settings


def render_run(run_dir: str | Path, experiments=EXPERIMENTS) -> list[Path]:
    """Every table (markdown, CSV) and figure (PNG) of a reproduction's experiment folders, made from the data
    files the experiments wrote (facts.json, TSV, CSV, NPZ); an experiment without its facts is skipped.
    Returns the folders rendered."""
    import json

    run_dir = Path(run_dir)
    preset = _run_settings(run_dir)["preset"]
    rendered = []
    for name in experiments:
        facts_path = run_dir / name / FACTS_NAME
        if facts_path.is_file():
            _RENDERERS[name](run_dir / name, preset, json.loads(facts_path.read_text()))
            rendered.append(run_dir / name)
    return rendered


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


# The paper's names for each experiment's tables and figures: the report's headings.
PAPER_NAMES = {"table1": "Table 1: PREDICT, accuracy and abstention against n",
               "certify-sigma": "Tables 2 and 3: certified accuracy of the three systems at each sigma",
               "sigma-mismatch": "Tables 4 and 5: certified accuracy when the certify sigma differs from the training sigma",
               "pgd-linf": "Figures 1 and 9: PGD L-inf against the base classifiers",
               "pgd-l2": "Figure 10: PGD L2 against the smoothed classifiers",
               "alpha": "Figure 11: certified accuracy for several alpha",
               "noisy-images": "Figures 12 and 13: noisy test images"}


def write_html_report(run_dir: str | Path) -> Path:
    """RUN_DIR/report.html: the software and settings, the departures from the paper's protocol, a contents
    list, then every experiment's tables and figures under the paper's names; self-contained (PNGs inline)."""
    import base64
    import html
    import json

    from .about import software

    run_dir = Path(run_dir)
    settings = _run_settings(run_dir)
    preset = settings["preset"]
    esc = html.escape
    made = software()
    runs = settings.get("software") or []
    parts = [f"<h1>intrs reproduction: preset {esc(preset['name'])}</h1>",
             f"<p>data set {esc(preset['dataset'])}, seed {settings.get('seed')}. Rendered by intrs {esc(made['intrs'])} "
             f"(commit {esc(made['commit'])}) on {esc(made['date'])}.</p>"]
    if runs:
        parts.append("<p>Run by: " + "; ".join(f"intrs {esc(r['intrs'])} (commit {esc(r['commit'])}) started "
                                               f"{esc(r['date'])}" for r in runs) + ".</p>")
    departures = settings.get("departures")
    if departures or preset.get("reductions"):
        parts.append("<h2 id='departures'>Departures from the paper's protocol</h2>")
        if preset.get("reductions"):
            parts.append("<ul>" + "".join(f"<li>{esc(r)}</li>" for r in preset["reductions"]) + "</ul>")
        if departures:
            parts.append("<p>Every setting that differs from the paper's (paper -> this run):</p><ul>"
                         + "".join(f"<li><code>{esc(d)}</code></li>" for d in departures) + "</ul>")
    parts.append("<details><summary>all settings</summary><pre>" + esc(json.dumps(preset, indent=2))
                 + "</pre></details>")
    present = [name for name in EXPERIMENTS if (run_dir / name).is_dir()]
    parts.append("<h2>Contents</h2><ol>" + "".join(f"<li><a href='#{name}'>{esc(PAPER_NAMES[name])}</a> "
                                                  f"({esc(name)})</li>" for name in present) + "</ol>")
    for name in present:
        folder = run_dir / name
        parts.append(f"<h2 id='{name}'>{esc(PAPER_NAMES[name])} <small>({esc(name)})</small></h2>")
        for md in sorted(folder.glob("*.md")):
            parts.append(_markdown_to_html(md.read_text()))
        for png in sorted(folder.glob("*.png")):
            data = base64.b64encode(png.read_bytes()).decode()
            parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{esc(png.name)}">'
                         f"<figcaption>{esc(png.name)}</figcaption></figure>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px;"
             "text-align:right}th{background:#eee}img{max-width:100%}figcaption{color:#666;font-size:small}"
             "small{color:#666;font-weight:normal}")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>intrs {esc(preset['name'])}</title>"
            f"<style>{style}</style></head><body>" + "\n".join(parts) + "</body></html>\n")
    return write_text_atomically(run_dir / "report.html", page)
