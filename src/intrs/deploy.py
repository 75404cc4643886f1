"""Deployment: export the certified integer model, prove the file computes the same integers,
and hand the device its certificate table.

``verify_export`` runs an exported file in an independent runtime (LiteRT's
reference kernels, and its optimized paths for information; onnxruntime) on noisy
inputs drawn exactly as IntRS draws them, and compares every int8 logit with the
engine that was certified. The certificate holds for the device only when the
reference-kernel comparison shows zero mismatches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import engine
import numpy as np

from .c_export import c_initializer
from .certificate import certifying_from, radius_table
from .confidence import PredictThresholds, RadiusTables
from .data import load_dataset
from .errors import ConfigError, DataError, OutputExistsError
from .intmodel import IntegerModel
from .noise import DiscreteGaussianNoise, numpy_generator
from .rng import STAGE_EVAL, stream_seed
from .systems import check_integer_model_fits
from .tables import markdown_table

FILE_FORMATS = ("tflite", "onnx")
FORMATS = FILE_FORMATS + ("c",)  # c: a source tree that certifies on the device (intrs.c_export)


def export_model(model: IntegerModel, fmt: str) -> bytes:
    """The integer model as a .tflite (int8 in, int8 out) or ONNX (QDQ, int16 in) file's bytes."""
    if fmt == "tflite":
        from .tflite_export import export_tflite
        return export_tflite(model)
    if fmt == "onnx":
        from .onnx_export import export_onnx
        return export_onnx(model)
    if fmt == "c":
        raise ConfigError("a C export is a source tree, not a file: intrs.c_export.export_c writes it")
    raise ConfigError(f"unknown export format {fmt!r}: choose tflite, onnx or c")


@dataclass(frozen=True)
class Written:
    """A file an export wrote and what it is, in the words the CLI prints."""

    path: Path
    about: str


def export_files(model: IntegerModel, model_path: Path, fmt: str, out: Path, *, saturate: bool = False,
                 table_n: int = 0, table_alpha: float = 0.001, force: bool = False) -> list[Written]:
    """``intrs export --format tflite|onnx``: the model file at ``out``; with ``saturate`` the variant that
    saturates the noisy input to [0, 255] (and its .intrs.npz beside ``out``, the model to certify); with
    ``table_n`` the radius table R[nA] as a C header (OUT.radius.h). Every file is checked before the first
    is written, and each is written whole or not at all."""
    from .files import check_output, write_atomically, write_text_atomically
    from .intmodel import save_integer_model, with_input_saturation

    certified, variant = model_path, None
    if saturate and model.input_saturation is None:
        model = with_input_saturation(model)
        variant = certified = out.with_suffix(".intrs.npz")
    header_path = out.with_suffix(".radius.h") if table_n else None
    for path in (out, variant, header_path):
        if path is not None and path.exists() and not force:
            raise OutputExistsError(f"{path} already exists: pass --force to overwrite it")
    check_output(out)
    content = export_model(model, fmt)
    header = radius_table_header(table_n, table_alpha, model.meta["sigma"]) if table_n else None
    written = []
    write_atomically(out, lambda handle: handle.write(content))  # a full disk leaves no 0-byte file behind
    if header:
        write_text_atomically(header_path, header)
        written.append(Written(header_path, f"radius for every vote count, n={table_n}, alpha={table_alpha:g}, "
                                            f"sigma={model.meta['sigma']:g}"))
    if variant is not None:
        save_integer_model(model, variant)
        written.append(Written(variant, "the saturating variant; certify this model, it is what the file computes"))
    written.append(Written(out, f"{len(content)} bytes, requantization {model.requantization}; check it with "
                                f"'intrs verify-export {out} {certified}'"))
    return written


def format_of(path: Path) -> str:
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in FILE_FORMATS:
        raise ConfigError(f"cannot tell the format of {path}: name it .tflite or .onnx")
    return suffix


@dataclass
class Agreement:
    """How one runtime compares with the engine: identical int8 logits and predictions."""

    runtime: str
    inputs: int
    logit_mismatches: int
    logits: int
    prediction_mismatches: int

    @property
    def identical_logits(self) -> float:
        return 1 - self.logit_mismatches / self.logits

    @property
    def identical_predictions(self) -> float:
        return 1 - self.prediction_mismatches / self.inputs


@dataclass
class VerifyReport:
    file: str
    format: str
    requantization: str
    sigma: float
    results: list[Agreement] = field(default_factory=list)

    @property
    def bit_exact(self) -> bool:
        """Zero mismatches on the runtime that must match: LiteRT's reference kernels, or onnxruntime."""
        return self.results[0].logit_mismatches == 0

    def to_markdown(self) -> str:
        header = ["runtime", "inputs", "int8 logits identical", "predictions identical", "logit mismatches"]
        rows = [[r.runtime, r.inputs, f"{r.identical_logits:.6f}", f"{r.identical_predictions:.6f}",
                 f"{r.logit_mismatches} of {r.logits}"] for r in self.results]
        return (f"verify-export {self.file} ({self.format}), requantization {self.requantization}, "
                f"discrete Gaussian noise sigma={self.sigma:g}\n\n" + markdown_table(header, rows))


def noisy_test_inputs(model: IntegerModel, count: int, sigma: float | None, seed: int, data_dir=None) -> torch.Tensor:
    """``count`` noisy integer inputs: test images of the model's data set plus discrete Gaussian noise."""
    dataset = model.meta.get("dataset")
    if not dataset:
        raise DataError("the integer model records no data set: verify it with inputs of your own")
    data = load_dataset(dataset, "test", data_dir)
    check_integer_model_fits(model, data.info)
    noise = DiscreteGaussianNoise(sigma if sigma is not None else model.meta["sigma"])
    generator = numpy_generator(stream_seed(seed, STAGE_EVAL))
    images = data.images[torch.arange(count) % len(data)]
    return torch.cat([noise.perturb(images[i], 1, generator) for i in range(count)])


def verify_export(path: str | Path, model: IntegerModel, z: torch.Tensor, sigma: float,
                  resolvers: tuple[str, ...] = ("reference", "builtin", "default")) -> VerifyReport:
    """Run the exported file on inputs z and compare its int8 logits with the engine's."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"exported model {path} not found: make it with 'intrs export'")
    fmt = format_of(path)
    content = path.read_bytes()
    ours = engine.forward(model, z).numpy()
    report = VerifyReport(str(path), fmt, model.requantization, sigma)
    if fmt == "tflite":
        from .tflite_export import run_tflite, tflite_input
        runs = [(f"LiteRT {name}", lambda r=name: run_tflite(content, tflite_input(model, z.numpy()), r))
                for name in resolvers]
    else:
        from .onnx_export import run_onnx
        runs = [("onnxruntime", lambda: run_onnx(content, z.numpy()))]
    for name, execute in runs:
        theirs = execute()
        if theirs.shape != ours.shape:
            raise ConfigError(f"{path} returns logits of shape {theirs.shape}, the integer model {ours.shape}: "
                              "the file was exported from another model")
        report.results.append(Agreement(name, len(ours), int((theirs != ours).sum()), int(ours.size),
                                        int((theirs.argmax(1) != engine.argmax_lowest(torch.from_numpy(ours))
                                             .numpy()).sum())))
    return report


def radius_table_header(n: int, alpha: float, sigma: float, fraction_bits: int = 16,
                        sequential: RadiusTables | None = None,
                        predict: tuple[PredictThresholds, tuple[int, ...]] | None = None) -> str:
    """A C header with R[nA] for nA = 0..n (radius * 2^fraction_bits, rounded down; 0 = abstain), and, when
    given, the integer decision tables of sequential CERTIFY (``sequential``, from
    ``intrs.confidence.radius_tables``) and of sequential PREDICT (``predict``: its thresholds and batch
    schedule). A device that counts votes compares them with these tables and stops: no float at all."""
    table = radius_table(n, alpha, sigma, fraction_bits)
    if table.max() >= 2 ** 31:
        raise ConfigError("radii overflow int32 at this many fraction bits: use fewer")
    first = certifying_from(n, alpha)
    # only the counts that certify: below INTRS_CERTIFY_FROM every entry is an abstention (half the table at
    # n = 100,000), which a microcontroller's flash should not hold
    stored = table[first:] if first <= n else np.zeros(1, dtype=np.int64)
    blocks = [f"#define INTRS_N {n}\n#define INTRS_RADIUS_FRACTION_BITS {fraction_bits}\n"
              f"/* CERTIFY returns its class exactly when nA >= INTRS_CERTIFY_FROM (INTRS_N + 1: never), with radius\n"
              f" * intrs_radius_table[nA - INTRS_CERTIFY_FROM] (an entry 0: a radius below 2^-fraction_bits) */\n"
              f"#define INTRS_CERTIFY_FROM {first}\n"
              f"static const int32_t intrs_radius_table[{len(stored)}] = {{\n    {c_initializer(stored)}\n}};\n"]
    if sequential is not None:
        blocks.append(_sequential_block(sequential, fraction_bits))
    if predict is not None:
        blocks.append(_predict_block(*predict))
    return (f"/* intrs certificate table: certified L2 radius (in [0,1] pixel units, times 2^{fraction_bits}, "
            f"rounded down)\n * for every vote count nA = 0..n of the top class, with n = {n}, alpha = {alpha!r}, "
            f"sigma = {sigma!r}.\n * R = sigma * PhiInv(ClopperPearsonLower(nA, n, alpha)), as the Python API's certificate; "
            f"below INTRS_CERTIFY_FROM: ABSTAIN.\n"
            f" * Written by intrs; see docs/deploy.md. */\n"
            f"#ifndef INTRS_RADIUS_TABLE_H\n#define INTRS_RADIUS_TABLE_H\n#include <stdint.h>\n"
            + "\n".join(blocks) + "#endif\n")


def _sequential_block(tables: RadiusTables, fraction_bits: int) -> str:
    steps, radii = tables.bounds.steps, tables.radii
    fixed = [math.floor(r * 2 ** fraction_bits) for r in radii]  # exact: a power-of-two scaling, then floor
    if max(fixed) >= 2 ** 31:
        raise ConfigError("listed radii overflow int32 at this many fraction bits: use fewer")
    rows = lambda table: ",\n    ".join("{" + ", ".join(str(int(v)) for v in row) + "}" for row in table)
    return (f"/* Sequential CERTIFY (intrs.confidence.radius_tables; docs/sequential.md), alpha = {tables.bounds.alpha!r}, "
            f"sigma = {tables.sigma!r},\n"
            f" * budget {steps[-1]} estimation samples. After n0 selection samples (the top class cA), step k draws\n"
            f" * estimation samples up to intrs_seq_steps[k] in all; nA counts the votes for cA. Radius j\n"
            f" * (intrs_seq_radii[j] / 2^INTRS_RADIUS_FRACTION_BITS) is certified once nA >= intrs_seq_certify_at[k][j]\n"
            f" * and can no longer be certified once nA < intrs_seq_refute_below[k][j]; a decided radius stays\n"
            f" * decided, and the device stops when all are (at the last step, all are). The certificate is the\n"
            f" * largest certified radius; none certified: ABSTAIN. */\n"
            f"#define INTRS_SEQ_STEPS {len(steps)}\n#define INTRS_SEQ_RADII {len(radii)}\n"
            f"static const int32_t intrs_seq_steps[INTRS_SEQ_STEPS] = {{\n    {c_initializer(steps)}\n}};\n"
            f"static const int32_t intrs_seq_radii[INTRS_SEQ_RADII] = {{{', '.join(map(str, fixed))}}};\n"
            f"static const int32_t intrs_seq_certify_at[INTRS_SEQ_STEPS][INTRS_SEQ_RADII] = {{\n"
            f"    {rows(tables.certify_at)}\n}};\n"
            f"static const int32_t intrs_seq_refute_below[INTRS_SEQ_STEPS][INTRS_SEQ_RADII] = {{\n"
            f"    {rows(tables.refute_below)}\n}};\n")


def _predict_block(rule: PredictThresholds, steps: tuple[int, ...]) -> str:
    decide, final = rule.tables(steps[-1])
    return (f"/* Sequential PREDICT (intrs.confidence.PredictThresholds; docs/sequential.md), alpha = {rule.alpha!r}, "
            f"{rule.classes} classes.\n"
            f" * Step k draws samples up to intrs_predict_steps[k] in all; nA, nB are the two largest vote counts\n"
            f" * (ties to the lower class index) and m = nA + nB. Return the top class once\n"
            f" * nA >= intrs_predict_decide_at[m] (at the last step: intrs_predict_decide_final_at[m]);\n"
            f" * after the last step, ABSTAIN. */\n"
            f"#define INTRS_PREDICT_STEPS {len(steps)}\n#define INTRS_PREDICT_MAX_N {steps[-1]}\n"
            f"static const int32_t intrs_predict_steps[INTRS_PREDICT_STEPS] = {{\n    {c_initializer(steps)}\n}};\n"
            f"static const int32_t intrs_predict_decide_at[INTRS_PREDICT_MAX_N + 1] = {{\n    {c_initializer(decide)}\n}};\n"
            f"static const int32_t intrs_predict_decide_final_at[INTRS_PREDICT_MAX_N + 1] = {{\n"
            f"    {c_initializer(final)}\n}};\n")
