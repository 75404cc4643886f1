"""Certify or predict a whole test set: one TSV row per image, resumable.

This is where a data set meets a system: images are chosen as Cohen's scripts
choose them (every ``skip``-th, at most ``max_images``), each is certified with
its own random streams, and each row is flushed to disk as soon as it is done.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from .data import ImageSet
from .results import CERTIFY_COLUMNS, PREDICT_COLUMNS, ResultWriter, format_radius
from .errors import ConfigError
from .smoothing import check_alpha, check_sample_sizes
from .systems import System
from .progress import Progress, no_progress


@dataclass(frozen=True)
class CertifySettings:
    """The Monte-Carlo settings of a run (Cohen's defaults: n0 = 100, n = 100,000, alpha = 0.001)."""

    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001
    batch_size: int = 1000
    seed: int = 0
    skip: int = 1
    max_images: int | None = None

    def check(self) -> "CertifySettings":
        check_sample_sizes(self.n, self.n0, self.batch_size)
        check_alpha(self.alpha)
        if self.skip < 1 or (self.max_images is not None and self.max_images < 0):
            raise ConfigError(f"--skip must be >= 1 and --max >= 0, got skip={self.skip}, max={self.max_images}")
        return self


def select_indices(count: int, skip: int = 1, max_images: int | None = None) -> list[int]:
    """Cohen's selection: every ``skip``-th test image, stopping after ``max_images`` of them."""
    chosen = list(range(0, count, skip))
    return chosen if max_images is None else chosen[:max_images]


def certify_row(system: System, smoothed, pixels, label: int, idx: int, settings: CertifySettings) -> dict:
    """CERTIFY one image; the row in Cohen's columns first."""
    start = time.perf_counter()
    cert = smoothed.certify(pixels, settings.n0, settings.n, settings.alpha, settings.seed, idx)
    return {
        "idx": idx, "label": label, "predict": cert.prediction, "radius": format_radius(cert.radius),
        "correct": int(cert.prediction == label), "time": f"{time.perf_counter() - start:.3f}",
        "counts_top": cert.counts_top, "n0": settings.n0, "n": cert.n, "pA_lower": f"{cert.p_lower:.9g}",
        "sigma": system.noise.sigma, "alpha": settings.alpha, "system": system.name,
        "noise": system.noise.name, "seed": settings.seed,
    }


def predict_row(system: System, smoothed, pixels, label: int, idx: int, settings: CertifySettings) -> dict:
    """PREDICT one image; the radius column is 0 (PREDICT certifies no radius)."""
    start = time.perf_counter()
    pred = smoothed.predict(pixels, settings.n, settings.alpha, settings.seed, idx)
    return {
        "idx": idx, "label": label, "predict": pred.prediction, "radius": "0",
        "correct": int(pred.prediction == label), "time": f"{time.perf_counter() - start:.3f}",
        "counts_top": pred.counts_top, "counts_second": pred.counts_second, "n": pred.n,
        "p_value": f"{pred.p_value:.6g}", "sigma": system.noise.sigma, "alpha": settings.alpha,
        "system": system.name, "noise": system.noise.name, "seed": settings.seed,
    }


ROW_FUNCTIONS = {"certify": certify_row, "predict": predict_row}


def local_rows(mode: str, system: System, data: ImageSet, settings: CertifySettings,
               indices: list[int]) -> Iterator[dict]:
    """Rows computed in this process, in the order of ``indices``."""
    smoothed = system.smoothed(settings.batch_size)
    for idx in indices:
        pixels, label = data[idx]
        yield ROW_FUNCTIONS[mode](system, smoothed, pixels, label, idx, settings)


def run(mode: str, system: System, data: ImageSet, settings: CertifySettings, out: str | Path, *,
        provenance: dict | None = None, force: bool = False, resume: bool = False,
        progress: Progress = no_progress, executor=local_rows) -> Path:
    """Certify (``mode='certify'``) or predict a test set into the TSV ``out``; returns its path.

    With ``resume`` the images already in ``out`` are skipped (the settings must
    match); without it an existing ``out`` is refused unless ``force``. Rows are
    written in idx order as they finish, each flushed to disk. ``executor``
    computes the rows: in this process (``local_rows``) or on Ray workers
    (``intrs.scaleout.RayExecutor``); the rows are the same either way.
    """
    settings.check()
    if mode not in ROW_FUNCTIONS:
        raise ConfigError(f"mode must be 'certify' or 'predict', got {mode!r}")
    columns = CERTIFY_COLUMNS if mode == "certify" else PREDICT_COLUMNS
    run_settings = {"mode": mode, "system": system.name, "noise": system.noise.name, "sigma": system.noise.sigma,
                    "dataset": data.info.name, "split": data.split, **asdict(settings), **(provenance or {})}
    indices = select_indices(len(data), settings.skip, settings.max_images)
    with ResultWriter(out, columns, run_settings, force=force, resume=resume) as writer:
        todo = [i for i in indices if i not in writer.done]
        for row in progress(executor(mode, system, data, settings, todo), total=len(todo),
                            desc=f"{mode} {system.name}", unit="img"):
            writer.write(row)
    return Path(out)
