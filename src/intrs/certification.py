"""Certify or predict a whole test set: one TSV row per image, resumable.

This is where a data set meets a system: images are chosen as Cohen's scripts
choose them (every ``skip``-th, at most ``max_images``), each is certified with
its own random streams, and each row is flushed to disk as soon as it is done.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from .data import ImageSet
from .confidence import batch_schedule, check_radii
from .rng import check_seed
from .results import ResultWriter, format_radius, format_upper, result_columns
from .errors import ConfigError
from .smoothing import check_alpha, check_sample_sizes
from .systems import System, check_fits, make_system, model_facts
from .progress import Progress, no_progress


MAX_SAMPLES = 10 ** 9  # per image: a bound on what a run may ask (beyond it a typo, not a plan)


@dataclass(frozen=True)
class CertifySettings:
    """The Monte-Carlo settings of a run (Cohen's defaults: n0 = 100, n = 100,000, alpha = 0.001).

    ``sequential``: the anytime-valid forms (``SmoothedClassifier.certify_sequential`` and
    ``predict_sequential``), with n the budget max_n; CERTIFY then decides ``radii`` or, without them,
    settles the radius within ``tolerance``.
    """

    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001
    batch_size: int = 1000
    seed: int = 0
    skip: int = 1
    max_images: int | None = None
    sequential: bool = False
    radii: tuple[float, ...] | None = None
    tolerance: float | None = None

    def check(self, mode: str = "certify") -> "CertifySettings":
        check_sample_sizes(self.n, self.n0, self.batch_size)
        if self.n > MAX_SAMPLES:
            raise ConfigError(f"n = {self.n:,} samples an image is more than a run takes ({MAX_SAMPLES:,}: at about "
                              "10,000 samples/s on 2 CPU cores that is already a day an image); Cohen's n is 100,000")
        check_alpha(self.alpha)
        check_seed(self.seed)
        if self.skip < 1 or (self.max_images is not None and self.max_images < 0):
            raise ConfigError(f"--skip must be >= 1 and --max >= 0, got skip={self.skip}, max={self.max_images}")
        if not self.sequential and (self.radii is not None or self.tolerance is not None):
            raise ConfigError("radii and a tolerance are for sequential runs (--max-n)")
        if self.sequential:
            batch_schedule(self.n, self.batch_size)
            if mode == "certify" and (self.radii is None) == (self.tolerance is None):
                raise ConfigError("sequential CERTIFY needs either --radii or --tolerance")
            if mode == "predict" and (self.radii is not None or self.tolerance is not None):
                raise ConfigError("sequential PREDICT takes no --radii or --tolerance")
            if self.radii is not None:
                check_radii(self.radii)
            if self.tolerance is not None and not (math.isfinite(self.tolerance) and self.tolerance > 0):
                raise ConfigError(f"the radius tolerance must be a number > 0 (e.g. 0.05), got {self.tolerance!r}")
        return self

    def recorded(self) -> dict:
        """The settings as a run's metadata records them (a fixed-n run's as before the sequential forms)."""
        settings = asdict(self)
        if not self.sequential:
            for key in ("sequential", "radii", "tolerance"):
                settings.pop(key)
        return settings


def select_indices(count: int, skip: int = 1, max_images: int | None = None) -> list[int]:
    """Cohen's selection: every ``skip``-th test image, stopping after ``max_images`` of them."""
    chosen = list(range(0, count, skip))
    return chosen if max_images is None else chosen[:max_images]


def certify_row(system: System, smoothed, pixels, label: int, idx: int, settings: CertifySettings) -> dict:
    """CERTIFY one image (sequential CERTIFY if the settings say so); the row in Cohen's columns first,
    keyed by ``results.result_columns('certify', settings.sequential)`` (tests/test_results.py checks it).

    A sequential row's n is the estimation samples it used; max_n, pA_upper, stop and decisions follow."""
    start = time.perf_counter()
    if settings.sequential:
        cert = smoothed.certify_sequential(pixels, settings.n0, settings.n, settings.alpha, settings.radii,
                                           settings.tolerance, settings.seed, idx)
    else:
        cert = smoothed.certify(pixels, settings.n0, settings.n, settings.alpha, settings.seed, idx)
    row = {
        "idx": idx, "label": label, "predict": cert.prediction, "radius": format_radius(cert.radius),
        "correct": int(cert.prediction == label), "time": f"{time.perf_counter() - start:.3f}",
        "counts_top": cert.counts_top, "n0": settings.n0, "n": cert.n, "pA_lower": f"{cert.p_lower:.9g}",
        "sigma": system.noise.sigma, "alpha": settings.alpha, "system": system.name,
        "noise": system.noise.name, "seed": settings.seed,
    }
    if settings.sequential:
        row |= {"max_n": cert.max_n, "pA_upper": format_upper(cert.p_upper), "stop": cert.stop,
                "decisions": ",".join(f"{r:g}:{how}" for r, how in cert.decisions) or "-"}
    return row


def predict_row(system: System, smoothed, pixels, label: int, idx: int, settings: CertifySettings) -> dict:
    """PREDICT one image (sequential PREDICT if the settings say so); the radius column is 0 (PREDICT
    certifies no radius). A sequential row's n is the samples it used, max_n its budget."""
    start = time.perf_counter()
    if settings.sequential:
        pred = smoothed.predict_sequential(pixels, settings.n, settings.alpha, settings.seed, idx)
    else:
        pred = smoothed.predict(pixels, settings.n, settings.alpha, settings.seed, idx)
    extra = {"max_n": pred.max_n} if settings.sequential else {}
    return extra | {
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
    if mode not in ROW_FUNCTIONS:
        raise ConfigError(f"mode must be 'certify' or 'predict', got {mode!r}")
    settings.check(mode)
    columns = result_columns(mode, settings.sequential)
    run_settings = {"mode": mode, "system": system.name, "noise": system.noise.name, "sigma": system.noise.sigma,
                    "dataset": data.info.name, "split": data.split, **settings.recorded(), **(provenance or {})}
    float_device = getattr(system.noise, "device", None) if system.noise.name == "gaussian" else None
    if float_device is not None and float_device.type != "cpu":
        # a GPU's float rows are its own (docs/gpu.md): a run resumes on the device it began on. Integer
        # rows are the same on every device, and CPU runs keep the settings they always had.
        run_settings["device"] = float_device.type
    status = getattr(system.noise, "certificate_status", None)  # a NoiseLaw of the caller's own may not say
    if status is not None:  # recorded for the reader, never compared on resume (results.INFORMATION_ONLY)
        run_settings["certificate_status"] = status
    indices = select_indices(len(data), settings.skip, settings.max_images)
    with ResultWriter(out, columns, run_settings, force=force, resume=resume) as writer:
        todo = [i for i in indices if i not in writer.done]
        for row in progress(executor(mode, system, data, settings, todo), total=len(todo),
                            desc=f"{mode} {system.name}", unit="img"):
            writer.write(row)
    return Path(out)


# ---------------------------------------------------------------- planning runs (the CLI's and the experiments')

SYSTEM_FIELD = "{system}"  # in an output template: replaced by each system's name


def outputs(names: list[str], template: str | Path) -> dict[str, Path]:
    """Each system's TSV from one output template; several systems need ``{system}`` in it."""
    template = str(template)
    if len(names) > 1 and SYSTEM_FIELD not in template:
        raise ConfigError("several systems write one TSV each: put {system} in --out, e.g. --out runs/{system}.tsv")
    return {name: Path(template.replace(SYSTEM_FIELD, name)) for name in names}


@dataclass(frozen=True)
class Job:
    """One planned certify/predict run: a system on a data set with its settings, into its TSV."""

    mode: str
    system: System
    data: ImageSet
    settings: CertifySettings
    out: Path
    provenance: dict

    def run(self, *, force: bool = False, resume: bool = False, progress: Progress = no_progress,
            executor=local_rows) -> Path:
        return run(self.mode, self.system, self.data, self.settings, self.out, provenance=self.provenance,
                   force=force, resume=resume, progress=progress, executor=executor)


def plan(mode: str, name: str, source, data: ImageSet, settings: CertifySettings, out: str | Path, *,
         sigma: float | None = None, noise: str | None = None, device=None, train_sigma: float | None = None,
         model_path: str | Path | None = None, provenance: dict | None = None) -> Job:
    """The run of system ``name`` on ``source`` (a float checkpoint or an integer model) over ``data``: the
    model is checked against the data, sigma defaults to the training sigma the model records (or
    ``train_sigma``), and the provenance records the training sigma and, given ``model_path``, the model
    file's content hash (the content, not the path, decides whether a resume may continue a file)."""
    from .files import file_sha256

    settings.check(mode)
    check_fits(source, data.info, model_path)
    recorded = model_facts(source)[1] if train_sigma is None else train_sigma
    if sigma is None and recorded is None:
        raise ConfigError(f"{model_path or 'the model'} records no training sigma: pass --sigma")
    system = make_system(name, source, recorded if sigma is None else sigma, noise, device=device)
    facts = {"model": str(model_path), "model_sha256": file_sha256(model_path)} if model_path is not None else {}
    return Job(mode, system, data, settings, Path(out), facts | {"train_sigma": recorded} | (provenance or {}))
