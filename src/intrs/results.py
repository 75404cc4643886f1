"""Result files: Cohen et al.'s tab-separated rows, written so that nothing is lost.

Columns start with Cohen's ``idx label predict radius correct time`` so that his
``analyze.py`` and ours read each other's files; extra columns follow. Rows are
appended and flushed to disk as each image finishes; a sidecar ``.json`` holds the
settings, so a re-run with ``resume`` skips finished images and a run with other
settings is refused instead of mixing results (a model is compared by the SHA-256 of
its file, not by how its path is spelled). An exclusive lock keeps two runs from
writing the same file. A row that cannot be written (a full disk) stops the run
with one error; the rows before it are kept and ``resume`` finishes the file.
"""

from __future__ import annotations

import csv
import fcntl
import json
import math
import os
from decimal import ROUND_CEILING, ROUND_FLOOR, Context
from pathlib import Path
from typing import Iterable

from .errors import ConfigError, DataError, OutputError, OutputExistsError
from .files import check_output, describe_os_error, write_text_atomically

COHEN_COLUMNS = ("idx", "label", "predict", "radius", "correct", "time")
CERTIFY_COLUMNS = COHEN_COLUMNS + ("counts_top", "n0", "n", "pA_lower", "sigma", "alpha", "system", "noise", "seed")
PREDICT_COLUMNS = COHEN_COLUMNS + ("counts_top", "counts_second", "n", "p_value", "sigma", "alpha", "system",
                                   "noise", "seed")
# The sequential forms: n is the samples used; max_n the budget. stop: decided, settled, abstain or budget;
# decisions: radius:certified|refuted|budget for each listed radius ("-" in tolerance mode).
SEQUENTIAL_CERTIFY_COLUMNS = CERTIFY_COLUMNS + ("max_n", "pA_upper", "stop", "decisions")
SEQUENTIAL_PREDICT_COLUMNS = PREDICT_COLUMNS + ("max_n",)


def result_columns(mode: str, sequential: bool = False) -> tuple[str, ...]:
    """The columns of a ``mode`` ('certify' or 'predict') run's TSV, fixed-n or sequential: a row of
    ``intrs.certification`` has exactly these keys."""
    return {("certify", False): CERTIFY_COLUMNS, ("predict", False): PREDICT_COLUMNS,
            ("certify", True): SEQUENTIAL_CERTIFY_COLUMNS, ("predict", True): SEQUENTIAL_PREDICT_COLUMNS}[
        mode, sequential]

# Settings recorded for whoever reads the sidecar but not compared on resume: what is proven about a noise's
# certificate is a sentence of the code that wrote the file, and a run begun before it was recorded still resumes.
INFORMATION_ONLY = ("certificate_status",)

_FLOOR_7 = Context(prec=7, rounding=ROUND_FLOOR)
_CEILING_9 = Context(prec=9, rounding=ROUND_CEILING)


def format_radius(radius: float) -> str:
    """The radius with 7 significant digits, rounded toward zero, never up.

    A certificate must not claim more than was proved: Cohen's ``{:.3}`` can
    round a radius up. ``Decimal(radius)`` is the exact binary value, so the
    floor is exact too.
    """
    if radius <= 0:
        return "0"
    return format(_FLOOR_7.create_decimal(radius), "f")


def format_upper(p: float) -> str:
    """An upper bound with 9 significant digits, rounded up, never down (the exact binary value's ceiling)."""
    return format(_CEILING_9.create_decimal(p), "f")


def metadata_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def check_result_output(path: str | Path, *, force: bool = False, resume: bool = False) -> Path:
    """Refuse now what ``ResultWriter`` would refuse on opening ``path``: a location that cannot be written,
    or an existing run without ``resume`` or ``force`` (a command with several outputs checks them all first)."""
    path = check_output(path)
    if path.exists() and path.stat().st_size > 0 and not (force or resume):
        raise OutputExistsError(f"{path} already exists: pass --resume to finish it, --force to overwrite it, "
                                "or choose another --out")
    return path


class ResultWriter:
    """Appends rows to a TSV, flushing each; resumes or refuses as told. Use as a context manager."""

    def __init__(self, path: str | Path, columns: Iterable[str], settings: dict, *,
                 force: bool = False, resume: bool = False):
        self.path, self.columns, self.settings = Path(path), tuple(columns), settings
        self.done: set[int] = set()
        self._handle = None
        self._force, self._resume = force, resume

    def __enter__(self) -> "ResultWriter":
        check_result_output(self.path, force=self._force, resume=self._resume)
        exists = self.path.stat().st_size > 0 if self.path.exists() else False
        created = not self.path.exists()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self.path, "a+", newline="")
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {describe_os_error(exc)}") from None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise OutputExistsError(f"{self.path} is being written by another intrs run; wait for it or "
                                    "choose another --out") from None
        self._handle = handle
        try:
            if exists and self._resume:
                self._check_settings()
                self.done = self._recover_rows()
            else:
                self._start_fresh()
        except BaseException:
            if created and self.path.stat().st_size == 0:
                self.path.unlink()  # ours and empty: a failed start leaves no file that looks like a run
            self.__exit__()
            raise
        return self

    def _start_fresh(self) -> None:
        # Settings first: a run killed before its header is written leaves an empty TSV, which starts afresh.
        write_text_atomically(metadata_path(self.path), json.dumps(self.settings, indent=2, sort_keys=True) + "\n")
        self._append("\t".join(self.columns) + "\n", truncate=True)

    def _check_settings(self) -> None:
        meta = metadata_path(self.path)
        try:
            previous = json.loads(meta.read_text())
        except (OSError, ValueError):
            raise OutputExistsError(f"{self.path} has no readable settings file {meta}: it cannot be resumed safely; "
                                    "pass --force to overwrite it") from None
        current = json.loads(json.dumps(self.settings))
        previous, current = ({k: v for k, v in s.items() if k not in INFORMATION_ONLY} for s in (previous, current))
        was, now = previous.get("model_sha256"), current.get("model_sha256")
        if was and now and was != now:
            raise OutputExistsError(f"{self.path} was made with the model {previous.get('model')} (sha256 {was[:16]}), "
                                    f"but {current.get('model')} has other content (sha256 {now[:16]}): resume "
                                    "with the model it was made with, --force to overwrite, or another --out")
        if was and now:  # the same content: where its path points, and how it is spelled, may differ
            previous, current = ({k: v for k, v in s.items() if k != "model"} for s in (previous, current))
        if previous != current:
            changed = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
            raise OutputExistsError(f"{self.path} was made with other settings ({', '.join(changed)} differ): "
                                    "resume with the same settings, --force to overwrite, or another --out")

    def _recover_rows(self) -> set[int]:
        """Indices already written; a torn last row (a crash mid-write) is cut off."""
        self._handle.seek(0)
        text = self._handle.read()
        complete = text[: text.rfind("\n") + 1]
        if len(complete) != len(text):
            self._handle.truncate(len(complete.encode()))
        lines = complete.splitlines()
        if not lines:  # killed while writing the header
            self._start_fresh()
            return set()
        if tuple(lines[0].split("\t")) != self.columns:
            raise OutputExistsError(f"{self.path} does not start with the expected header; pass --force to overwrite")
        self._handle.seek(0, os.SEEK_END)
        done = set()
        for number, line in enumerate(lines[1:], start=2):
            try:
                done.add(int(line.split("\t", 1)[0]))
            except ValueError:
                raise OutputExistsError(f"{self.path} line {number} is not a result row ({line[:40]!r}): remove "
                                        "that line to resume, or pass --force to start over") from None
        return done

    def write(self, row: dict) -> None:
        self._append("\t".join(str(row[c]) for c in self.columns) + "\n")
        self.done.add(int(row["idx"]))

    def _append(self, text: str, truncate: bool = False) -> None:
        """Write ``text`` and flush it to disk; a failure (a full disk) is one ``OutputError``. What part of a
        row reached the disk is a torn last line, which ``resume`` cuts off."""
        try:
            if truncate:
                self._handle.seek(0)
                self._handle.truncate()
            self._handle.write(text)
            self._handle.flush()
            os.fsync(self._handle.fileno())
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {describe_os_error(exc)}; the rows written so far are "
                              "kept: make room, then rerun with --resume") from None

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            handle, self._handle = self._handle, None
            try:
                handle.close()
            except OSError:
                pass  # the failed write has been reported; what did reach the disk is cut on resume


RADIUS_STEP = 0.25  # the paper's tables: certified accuracy at r = 0, 0.25, 0.5, ...
MAX_RADIUS_COLUMNS = 1000  # a table, not a curve: --plot draws curves


def radius_grid(max_radius: float, step: float = RADIUS_STEP) -> list[float]:
    """0, step, 2 step, ... up to max_radius inclusive; at most MAX_RADIUS_COLUMNS values."""
    if not (math.isfinite(step) and step > 0 and math.isfinite(max_radius) and max_radius >= 0):
        raise ConfigError(f"the radius step must be a number > 0 and the largest radius a number >= 0, "
                          f"got step={step}, max radius={max_radius}")
    columns = max_radius / step + 1  # may be inf (1e300 / 1e-300): compared before any int() of it
    if not columns < MAX_RADIUS_COLUMNS + 1:
        raise ConfigError(f"radius step {step:g} up to {max_radius:g} makes {columns:.3g} columns, more than the "
                          f"{MAX_RADIUS_COLUMNS} a table holds: pass a larger --step or a smaller --max-radius "
                          "(--plot draws the whole curve)")
    return [round(i * step, 10) for i in range(int(math.floor(max_radius / step + 1e-9)) + 1)]


def certified_accuracy(rows: list[dict], radius: float) -> float:
    """Fraction of rows that are correct with a certified radius >= ``radius``."""
    if not rows:
        return 0.0
    return certified_count(rows, radius) / len(rows)


def certified_count(rows: list[dict], radius: float) -> int:
    """Rows correct with a certified radius >= ``radius`` (``certified_accuracy``'s numerator)."""
    return sum(int(r["correct"]) == 1 and float(r["radius"]) >= radius for r in rows)


def samples_per_image(path: Path, columns: list[str], rows: list[dict], certify: bool) -> list[int] | None:
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


# ---------------------------------------------------------------- a reproduction's data files (intrs.experiments
# writes them, intrs.report reads them)

FACTS_NAME = "facts.json"  # per experiment folder: what ran that preset.json does not say
TABLE1_HEADER = ("n", "FloatRS-fp correct", "FloatRS-fp abstain", "FloatRS-fp s/image", "IntRS-quant correct",
                 "IntRS-quant abstain", "IntRS-quant s/image")
# certified_accuracy_intervals.csv, one row per cell and radius; the second column is the table's row variable
# (sigma, certify sigma or alpha)
INTERVAL_HEADER = ("system", "row", "radius", "images", "certified", "accuracy", "lower 95%", "upper 95%",
                   "mean samples", "median samples")


def read_results(path: str | Path) -> list[dict]:
    """Rows of a CERTIFY result TSV (ours or one written by Cohen et al.'s code), as dicts of strings."""
    columns, rows = read_result_table(path)
    if "radius" not in columns:
        raise DataError(f"{path} lacks the column 'radius': expected a tab-separated file with Cohen's header "
                        "'idx label predict radius correct time'")
    return rows


def read_result_table(path: str | Path) -> tuple[list[str], list[dict]]:
    """The header and rows of a CERTIFY or PREDICT result TSV, ours or Cohen et al.'s.

    Cohen's predict.py writes 'idx label predict correct time', without a radius,
    so only idx, label, predict and correct are required here.
    """
    path = Path(path)
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle, delimiter="\t")
            rows = list(reader)
            fields = reader.fieldnames or []
    except OSError as exc:
        raise DataError(f"cannot read results {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise DataError(f"{path} is not a text file (a checkpoint or other binary file?): expected a result TSV "
                        "with Cohen's header 'idx label predict radius correct time'") from None
    except csv.Error as exc:
        raise DataError(f"{path} is not a readable tab-separated file: {exc}") from None
    missing = [c for c in ("idx", "label", "predict", "correct") if c not in fields]
    if missing:
        raise DataError(f"{path} lacks the columns {missing}: expected a tab-separated file with Cohen's header "
                        "'idx label predict radius correct time' (CERTIFY) or 'idx label predict correct time' "
                        "(PREDICT)")
    return list(fields), rows
