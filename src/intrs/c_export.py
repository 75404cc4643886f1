"""``intrs export MODEL --format c``: the integer model and its smoothing as a C source tree a device builds.

The tree certifies on the device itself, in integer arithmetic only (docs/deploy.md, section 4):

* ``model.c`` (written here): the model's network program for the package's kernels (the ops of
  ``intrs.kernels.Plan`` with plain layouts, every weight, bias, multiplier and shift a constant array: nothing
  is computed at start-up), the noise law's 128-bit thresholds (``TableSampler``), and the decision tables of
  CERTIFY and PREDICT, fixed n and sequential (``intrs.certificate``, ``intrs.confidence``);
* ``kernels/``: the package's own kernel sources, copied byte for byte (the same files the Python package
  builds), with ``targets.txt``'s flags;
* ``runtime.c``, ``intrs_device.h``, ``example.c``, ``cortex-m/`` and the ``Makefile``: the package's device
  runtime (``intrs/device/``), copied byte for byte.

Arrays that only an instruction set of another architecture reads are compiled only there (a Cortex-M build
holds the portable kernels' weights alone), and the arena is sized per target from the kernels' own
``conv_scratch_bytes``.
"""

from __future__ import annotations

import ctypes
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import kernels
from .certificate import certifying_from, radius_table
from .confidence import PredictThresholds, batch_schedule, check_radii, predict_thresholds, radius_tables
from .errors import ConfigError, OutputError
from .files import describe_os_error
from .intmodel import IntegerModel
from .noise import PIXEL_MAX, LatticeNoise

RADIUS_FRACTION_BITS = 16  # intrs_device.h's INTRS_RADIUS_FRACTION_BITS
MAX_RADII = 16  # intrs_device.h's INTRS_MAX_RADII
KERNEL_SOURCES = ("kernels.h", "portable.c", "program.c", "dispatch.c", "table_draw.c", "avx2_shared.h", "avx2.c",
                  "avxvnni.c", "vnni.c", "neon_shared.h", "neon.c", "neon_i8mm.c", "targets.txt")
DEVICE_SOURCES = ("intrs_device.h", "runtime.c", "example.c", "Makefile", "cortex-m/startup.c", "cortex-m/mps2.ld")
_CSRC = Path(__file__).parent / "csrc"
_DEVICE = Path(__file__).parent / "device"

# Which targets read each pointer of op_t and requant_t (the kernels' files): "all" (portable C), "x86" (AVX2
# and VNNI), "arm64" (NEON), "simd" (both of the last).
_OP_READERS = {"w_wide": "all", "q_wide": "all", "add_params": "all", "w_pairs": "x86", "q_pairs": "simd",
               "w_wino": "x86", "w_vnni": "simd", "q_vnni": "x86", "q_sdot": "arm64",
               "w_mmla": "arm64"}
_GUARDS = {"x86": "defined(__x86_64__)", "arm64": "defined(__aarch64__)",
           "simd": "defined(__x86_64__) || defined(__aarch64__)"}
_C_TYPES = {np.dtype(np.int8): "int8_t", np.dtype(np.int16): "int16_t", np.dtype(np.int32): "int32_t",
            np.dtype(np.int64): "int64_t", np.dtype(np.uint64): "uint64_t"}
# the instruction sets each target's build runs the model on (beside portable, which every target has): the
# arena is sized for the largest, and runtime.c picks the best the CPU was granted (INTRS_MODEL_RUNS_ON)
_TARGET_ISAS = {"x86": ("avx2", "avx-vnni", "avx512-vnni"), "arm64": ("neon-dotprod", "neon-i8mm"), "other": ()}


def _levels(target: str) -> tuple[int, ...]:
    return tuple(kernels.INSTRUCTION_SETS.index(name) for name in _TARGET_ISAS[target])


@dataclass(frozen=True)
class CSettings:
    """What the exported tree certifies with: the Python API's arguments it reproduces."""

    system: str  # intrs-quant or floatrs-quant
    noise: LatticeNoise
    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001
    max_n: int = 100_000
    predict_n: int = 10_000
    predict_max_n: int = 10_000  # sequential PREDICT's budget: 2 x 40 KB of tables (8 s and 800 KB at 100,000)
    batch: int = 1000
    radii: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)

    def check(self) -> "CSettings":
        for name in ("n0", "n", "max_n", "predict_n", "predict_max_n", "batch"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not self.n0 <= self.n:
            raise ConfigError(f"--n0 must lie in 1..n = {self.n}, got {self.n0}")
        if len(check_radii(self.radii)) > MAX_RADII:
            raise ConfigError(f"a C export takes at most {MAX_RADII} --radii, got {len(self.radii)}")
        return self


def c_initializer(values) -> str:
    """Integers as the body of a C initializer, 16 to a line, each a literal of its array's type (uint64 in
    hex, int64 beyond int32 through INT64_C): the one writer of C arrays (the radius header's too)."""
    values = np.ascontiguousarray(values).ravel()
    if values.dtype == np.uint64:
        flat = [f"0x{int(v):x}ull" for v in values]
    else:
        flat = ["INT64_MIN" if v == -2 ** 63 else f"INT64_C({v})" if abs(v) >= 2 ** 31 else str(v)
                for v in map(int, values)]
    return ",\n    ".join(", ".join(flat[i:i + 16]) for i in range(0, len(flat), 16)) or "0"


def _array(name: str, values: np.ndarray, guard: str | None = None, aligned: bool = True, static: bool = False) -> str:
    """A constant C array (64-byte aligned for the kernels' loads), compiled only where ``guard`` holds."""
    values = np.ascontiguousarray(values).ravel()
    text = (f"{'static ' if static else ''}{'_Alignas(64) ' if aligned else ''}const {_C_TYPES[values.dtype]} {name}"
            f"[{max(len(values), 1)}] = {{\n    {c_initializer(values)}\n}};\n")
    return f"#if {_GUARDS[guard]}\n{text}#endif\n" if guard else text


def _merge(readers: set[str]) -> str | None:
    """The guard of an array read through pointers of these readers (None: every target)."""
    if "all" in readers:
        return None
    targets = set().union(*({"x86", "arm64"} if r == "simd" else {r} for r in readers))
    return "simd" if targets == {"x86", "arm64"} else next(iter(targets))


class _Writer:
    """model.c's network program: every buffer the ops reach, named, with the targets that read it."""

    def __init__(self, program):
        self.program = program
        self.buffers = program.buffers()  # address -> numpy array or ctypes struct
        self.names = {address: f"intrs_b{i}" for i, address in enumerate(self.buffers)}
        self.readers: dict[int, set[str]] = {address: set() for address in self.buffers}
        for op in program.ops:
            for field, reader in _OP_READERS.items():
                address = getattr(op, field)
                if address:
                    self._reach(address, reader)

    def _reach(self, address: int, reader: str) -> None:
        if address not in self.buffers:
            raise ConfigError("the network program points outside its buffers: report this as an intrs bug")
        self.readers[address].add(reader)
        value = self.buffers[address]
        if isinstance(value, ctypes.Structure):
            for field, kind in type(value)._fields_:
                if kind is ctypes.c_void_p and getattr(value, field):
                    self._reach(getattr(value, field), reader)

    def _ref(self, address: int | None, reader: str = "all") -> str:
        """A pointer in an op: to a buffer only some targets hold, through that target's macro (NULL elsewhere).
        Pointers inside a requant struct need none: the struct exists only where all it points at does."""
        if not address:
            return "NULL"
        # an array through const void *: a requant struct's int32 copies point at its int64 arrays where the fast
        # lanes are off (never read then), as in the Python structs
        value = self.buffers[address]
        name = f"&{self.names[address]}" if isinstance(value, ctypes.Structure) else f"(const void *){self.names[address]}"
        return name if reader == "all" else f"{reader.upper()}({name})"

    def _struct(self, value: ctypes.Structure, readers: dict[str, str] | None = None) -> str:
        parts = []
        for field, kind in type(value)._fields_:
            item = getattr(value, field)
            if kind is ctypes.c_void_p:
                parts.append(f".{field} = {self._ref(item, (readers or {}).get(field, 'all'))}")
            elif isinstance(kind, type) and issubclass(kind, ctypes.Structure):
                parts.append(f".{field} = {{{self._struct(item)}}}")
            elif kind is ctypes.c_int64 and abs(int(item)) >= 2 ** 31:
                parts.append(f".{field} = INT64_C({int(item)})")
            else:
                parts.append(f".{field} = {int(item)}")
        return ", ".join(parts)

    def source(self) -> tuple[str, dict[str, int]]:
        """The program's C definitions, and the bytes of constant data each target holds."""
        out, sizes = [], {"x86": 0, "arm64": 0, "other": 0}
        reached = {a: v for a, v in self.buffers.items() if self.readers[a]}  # the ops' other variants stay out
        arrays = [(a, v) for a, v in reached.items() if isinstance(v, np.ndarray)]
        structs = [(a, v) for a, v in reached.items() if isinstance(v, ctypes.Structure)]
        for address, value in arrays + structs:
            guard = _merge(self.readers[address])
            for target in sizes:
                if guard is None or (target == "x86" and guard in ("x86", "simd")) or \
                        (target == "arm64" and guard in ("arm64", "simd")):
                    sizes[target] += value.nbytes if isinstance(value, np.ndarray) else ctypes.sizeof(value)
            if isinstance(value, np.ndarray):
                out.append(_array(self.names[address], value, guard, static=True))
            else:
                text = f"static const requant_t {self.names[address]} = {{{self._struct(value)}}};\n"
                out.append(f"#if {_GUARDS[guard]}\n{text}#endif\n" if guard else text)
        ops = ",\n    ".join("{" + self._struct(op, _OP_READERS) + "}" for op in self.program.ops)
        out.append(f"const op_t intrs_ops[INTRS_OPS] = {{\n    {ops}\n}};\n")
        out.append(_array("intrs_slot_bytes", self.program.slot_bytes, aligned=False))
        for target in sizes:
            sizes[target] += ctypes.sizeof(kernels.Op) * len(self.program.ops)
        return "".join(out), sizes


def _declare_arrays(names: dict[str, str]) -> str:
    return "".join(f"extern const {ctype} {name}[];\n" for name, ctype in names.items())


def export_c(model: IntegerModel, settings: CSettings, out: Path, force: bool = False) -> dict:
    """Writes the C tree for ``model`` under ``out`` and returns its facts (sizes per target, settings)."""
    settings = settings.check()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file: a C export is a folder, choose another --out")
    if out.exists() and any(out.iterdir()) and not force:
        raise ConfigError(f"{out} exists and is not empty: pass --force to overwrite it, or choose another --out")
    lib = kernels.library()
    if lib is None:
        raise ConfigError("the C export needs the compiled kernels (a C compiler at install): run bash scripts/setup.sh")
    table = settings.noise.table
    c, h, w = model.input_shape
    support = table.support
    low, high = -support, PIXEL_MAX + support
    if model.input_saturation is not None:
        low, high = max(low, model.input_saturation[0]), min(high, model.input_saturation[1])
    elif low < model.input_range[0] or high > model.input_range[1]:
        raise ConfigError(f"noisy inputs reach [{low}, {high}] at sigma {settings.noise.sigma:g}, beyond the model's "
                          f"input range {list(model.input_range)}: sigma is too large for this model's input type")
    plan = kernels.Plan(model)
    program = plan.program((h, w, c), low, high, "portable") if plan.supported else None
    if program is None:
        raise ConfigError("this model has a layer the compiled kernels do not run (or first-layer sums that could "
                          "wrap int32): it cannot be exported to C")
    writer = _Writer(program)
    network, const_bytes = writer.source()
    arena = {target: max(_arena_bytes(lib, program, level) for level in (0,) + _levels(target))
             for target in _TARGET_ISAS}

    n, alpha, sigma = settings.n, settings.alpha, settings.noise.sigma
    first = certifying_from(n, alpha)
    radii_table = radius_table(n, alpha, sigma, RADIUS_FRACTION_BITS)[first:] if first <= n else np.zeros(0, np.int64)
    steps = batch_schedule(settings.max_n, settings.batch)
    seq = radius_tables(steps, alpha, sigma, check_radii(settings.radii))
    fixed_radii = [math.floor(r * 2 ** RADIUS_FRACTION_BITS) for r in seq.radii]  # exact: a power of two, then floor
    predict_at = predict_thresholds(settings.predict_n, alpha)
    predict_steps = batch_schedule(settings.predict_max_n, settings.batch)
    decide, final = PredictThresholds(alpha, model.num_classes).tables(settings.predict_max_n)
    int32 = lambda values: np.asarray(values, dtype=np.int64).astype(np.int32)

    tables = [
        _array("intrs_noise_high", table.high, aligned=False), _array("intrs_noise_low", table.low, aligned=False),
        _array("intrs_noise_values", table.values.astype(np.int32), aligned=False),
        _array("intrs_noise_guide", table.guide.astype(np.int32), aligned=False),
        _array("intrs_radius_table", int32(radii_table), aligned=False),
        _array("intrs_seq_steps", int32(steps), aligned=False),
        _array("intrs_seq_radii", int32(fixed_radii), aligned=False),
        _array("intrs_predict_at", int32(predict_at), aligned=False),
        _array("intrs_predict_steps", int32(predict_steps), aligned=False),
        _array("intrs_predict_decide_at", int32(decide), aligned=False),
        _array("intrs_predict_decide_final_at", int32(final), aligned=False),
    ]
    rows = lambda m: ",\n    ".join("{" + ", ".join(str(int(v)) for v in row) + "}" for row in m)
    for name, matrix in (("certify_at", seq.certify_at), ("refuted_below", seq.refuted_below),
                         ("budget_below", seq.budget_below)):
        tables.append(f"const int32_t intrs_seq_{name}[INTRS_SEQ_STEPS][INTRS_SEQ_RADII] = {{\n    {rows(matrix)}\n}};\n")
    quote = lambda text: json.dumps(str(text))
    tables.append(
        f"const intrs_settings_t intrs_exported_settings = {{{c}, {h}, {w}, {model.num_classes}, {settings.n0}, {n}, "
        f"{settings.max_n}, {settings.predict_n}, {settings.predict_max_n}, {settings.batch}, {quote(repr(alpha))}, {quote(repr(sigma))}, "
        f"{quote(settings.noise.name)}, {quote(settings.system)}, {len(fixed_radii)}, intrs_seq_radii}};\n")
    table_bytes = sum(a.nbytes for a in (table.high, table.low)) + 4 * (
        len(table.values) + len(table.guide) + len(radii_table) + len(steps) + len(predict_steps) + len(fixed_radii)
        + len(predict_at) + len(decide) + len(final) + 3 * seq.certify_at.size)

    # the tree is written beside its place and renamed into it: a failed export (a full disk) leaves no
    # half-written tree under the final name
    staging = out.with_name(f".{out.name}.tmp")
    try:
        _write_tree(staging, model, program, settings, table, arena, first, radii_table, steps, predict_steps,
                    fixed_radii, low, high, network, tables)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise OutputError(f"cannot write {out}: {describe_os_error(exc)}") from None
    facts = {"format": "c", "system": settings.system, "noise": settings.noise.name, "sigma": sigma,
             "n0": settings.n0, "n": n, "alpha": alpha, "max_n": settings.max_n, "predict_n": settings.predict_n,
             "predict_max_n": settings.predict_max_n,
             "batch": settings.batch, "radii": list(seq.radii), "certifying_from": first,
             "input_shape": [c, h, w], "classes": model.num_classes,
             "constant_bytes": {t: const_bytes[t] + table_bytes for t in const_bytes},
             "model_bytes": const_bytes, "table_bytes": table_bytes,
             "arena_bytes": arena, "buffer_bytes": c * h * w * (8 + 4 * 3 + 1) + model.num_classes}
    try:
        (staging / "export.json").write_text(json.dumps(facts, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise OutputError(f"cannot write {out}: {describe_os_error(exc)}") from None
    return facts


def _write_tree(staging: Path, model, program, settings, table, arena, first, radii_table, steps, predict_steps,
                fixed_radii, low, high, network, tables) -> None:
    if staging.exists():
        shutil.rmtree(staging)
    c, h, w = model.input_shape
    (staging / "kernels").mkdir(parents=True, exist_ok=True)
    (staging / "cortex-m").mkdir(exist_ok=True)
    for name in KERNEL_SOURCES:
        shutil.copyfile(_CSRC / name, staging / "kernels" / name)
    for name in DEVICE_SOURCES:
        shutil.copyfile(_DEVICE / name, staging / name)
    public = (f"/* The exported model's sizes (intrs export --format c). */\n#ifndef INTRS_MODEL_SIZES_H\n"
              f"#define INTRS_MODEL_SIZES_H\n#define INTRS_CHANNELS {c}\n#define INTRS_HEIGHT {h}\n"
              f"#define INTRS_WIDTH {w}\n#define INTRS_IMAGE_BYTES {c * h * w}\n#define INTRS_CLASSES {model.num_classes}\n"
              f"#endif\n")
    (staging / "intrs_model_sizes.h").write_text(public)
    (staging / "model.h").write_text(_model_header(model, program, settings, table, arena, first, len(radii_table),
                                                   len(steps), len(predict_steps), len(fixed_radii), low, high))
    guards = "".join(f"#if {cond}\n#define {name.upper()}(p) (p)\n#else\n#define {name.upper()}(p) NULL\n#endif\n"
                     for name, cond in _GUARDS.items())
    (staging / "model.c").write_text(
        f"/* {model.meta.get('arch', 'integer model')} on {model.meta.get('dataset', '?')}: the network program, its "
        f"noise table and decision tables.\n * Written by intrs export --format c; regenerate it rather than edit it. */\n"
        f"#include <stddef.h>\n\n#include \"intrs_device.h\"\n#include \"model.h\"\n\n{guards}\n{network}\n"
        + "".join(tables))


def _arena_bytes(lib, program, level: int) -> int:
    return int(lib.intrs_arena_bytes(ctypes.addressof(program.header), level))


def _runs_on(target: str) -> str:
    tests = " || ".join(f"(level) == {level} /* {kernels.INSTRUCTION_SETS[level]} */" for level in _levels(target))
    return f"#define INTRS_MODEL_RUNS_ON(level) ({tests or 0})\n"


def _model_header(model, program, settings, table, arena, first, radii_count, steps, predict_steps, radii, low,
                  high) -> str:
    saturate = model.input_saturation is not None
    return (
        "/* The exported model's constants and sizes, for runtime.c (written by intrs export --format c). */\n"
        "#ifndef INTRS_MODEL_H\n#define INTRS_MODEL_H\n#include \"kernels/kernels.h\"\n#include \"intrs_model_sizes.h\"\n\n"
        f"#define INTRS_IMAGE_VALUES {int(np.prod(model.input_shape))}\n"
        f"#define INTRS_OUTPUT_BYTES {int(program.header.output_bytes)}\n"
        f"#define INTRS_OPS {len(program.ops)}\n#define INTRS_SLOTS {len(program.slot_bytes)}\n"
        f"#define INTRS_OUTPUT_SLOT {int(program.header.output)}\n"
        f"/* the noisy input: saturated to [{low}, {high}] first (the model records it), or within it by export's check */\n"
        f"#define INTRS_INPUT_SATURATES {int(saturate)}\n#define INTRS_INPUT_MIN {low}\n#define INTRS_INPUT_MAX {high}\n"
        "/* the kernels' slots and scratch on the instruction sets each target has (intrs_arena_bytes) */\n"
        f"#if defined(__x86_64__)\n#define INTRS_ARENA_BYTES {arena['x86']}\n{_runs_on('x86')}"
        f"#elif defined(__aarch64__)\n#define INTRS_ARENA_BYTES {arena['arm64']}\n{_runs_on('arm64')}"
        f"#else\n#define INTRS_ARENA_BYTES {arena['other']}\n{_runs_on('other')}#endif\n\n"
        f"#define INTRS_N0 {settings.n0}\n#define INTRS_N {settings.n}\n#define INTRS_BATCH {settings.batch}\n"
        f"#define INTRS_PREDICT_N {settings.predict_n}\n"
        f"/* the least nA whose Clopper-Pearson bound exceeds 1/2 (n + 1: none); intrs_radius_table[nA - it] */\n"
        f"#define INTRS_CERTIFY_FROM {first}\n#define INTRS_RADIUS_ENTRIES {max(radii_count, 1)}\n"
        f"#define INTRS_NOISE_SIZE {len(table.high)}\n#define INTRS_NOISE_GUIDE_BITS {table.guide_bits}\n"
        f"#define INTRS_SEQ_STEPS {steps}\n#define INTRS_SEQ_RADII {radii}\n#define INTRS_PREDICT_STEPS {predict_steps}\n\n"
        "extern const op_t intrs_ops[];\nextern const int64_t intrs_slot_bytes[];\n"
        + _declare_arrays({"intrs_noise_high": "uint64_t", "intrs_noise_low": "uint64_t",
                           "intrs_noise_values": "int32_t", "intrs_noise_guide": "int32_t",
                           "intrs_radius_table": "int32_t", "intrs_seq_steps": "int32_t", "intrs_seq_radii": "int32_t",
                           "intrs_predict_at": "int32_t", "intrs_predict_steps": "int32_t",
                           "intrs_predict_decide_at": "int32_t", "intrs_predict_decide_final_at": "int32_t"})
        + "extern const int32_t intrs_seq_certify_at[][INTRS_SEQ_RADII], intrs_seq_refuted_below[][INTRS_SEQ_RADII],\n"
          "    intrs_seq_budget_below[][INTRS_SEQ_RADII];\n"
          "extern const intrs_settings_t intrs_exported_settings;\n#endif\n")


# ---------------------------------------------------------------- building and checking a tree

MODES = ("certify", "certify-sequential", "predict", "predict-sequential")


def build(tree: Path, *make_args: str) -> str:
    """Runs make in the tree (its default goal builds the example program with the host compiler; ``make_args``
    choose another compiler, target or goal) and returns its output."""
    import subprocess

    tree = Path(tree)
    if shutil.which("make") is None:
        raise ConfigError("building a C export needs make and a C compiler: install them (e.g. apt install build-essential)")
    run = subprocess.run(["make", "-s", "-C", str(tree), *make_args], capture_output=True, text=True)
    if run.returncode:
        raise ConfigError(f"building {tree} failed:\n{(run.stdout + run.stderr).strip()[-3000:]}")
    return run.stdout


def example_rows(output: str) -> list[dict]:
    """The example program's TSV rows, as dicts of strings."""
    lines = [line.split("\t") for line in output.strip().splitlines()]
    return [dict(zip(lines[0], row)) for row in lines[1:]]


def write_inputs(folder: Path, images: np.ndarray, labels: np.ndarray) -> tuple[Path, Path]:
    """The example's IMAGES (uint8 CHW, back to back) and LABELS files."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / "images.u8", folder / "labels.u8"
    np.ascontiguousarray(images, dtype=np.uint8).tofile(paths[0])
    np.asarray(labels, dtype=np.uint8).tofile(paths[1])
    return paths


def python_rows(model: IntegerModel, facts: dict, images: np.ndarray, labels, indices, seed: int, mode: str) -> list[dict]:
    """What the Python API answers for the same images, seed and settings, in the example's columns."""
    import torch

    from .smoothing import SmoothedClassifier
    from .systems import IntegerClassifier
    from .noise import noise_law

    noise = noise_law(facts["noise"], facts["sigma"])
    smoothed = SmoothedClassifier(IntegerClassifier(model), noise, model.num_classes, facts["batch"])
    rows = []
    for image, label, idx in zip(images, labels, indices):
        pixels = torch.from_numpy(np.ascontiguousarray(image, dtype=np.uint8))
        row = {"idx": str(idx), "label": str(int(label))}
        if mode == "certify":
            c = smoothed.certify(pixels, facts["n0"], facts["n"], facts["alpha"], seed=seed, idx=idx)
            row.update(predict=c.prediction, radius_fixed=math.floor(c.radius * 2 ** RADIUS_FRACTION_BITS),
                       counts_top=c.counts_top, n=c.n)
        elif mode == "certify-sequential":
            c = smoothed.certify_sequential(pixels, facts["n0"], facts["max_n"], facts["alpha"],
                                            radii=tuple(facts["radii"]), seed=seed, idx=idx)
            certified = [r for r, how in c.decisions if how == "certified"]
            # the device's certificate is the largest certified listed radius (the decision tables' answer)
            row.update(predict=c.prediction if certified else -1,
                       radius_fixed=math.floor(certified[-1] * 2 ** RADIUS_FRACTION_BITS) if certified else 0,
                       counts_top=c.counts_top, n=c.n, stop=c.stop,
                       decisions=[how for _, how in c.decisions])
        elif mode == "predict":
            p = smoothed.predict(pixels, facts["predict_n"], facts["alpha"], seed=seed, idx=idx)
            row.update(predict=p.prediction, counts_top=p.counts_top, counts_second=p.counts_second, n=p.n)
        else:
            p = smoothed.predict_sequential(pixels, facts["predict_max_n"], facts["alpha"], seed=seed, idx=idx)
            row.update(predict=p.prediction, counts_top=p.counts_top, counts_second=p.counts_second, n=p.n,
                       stop="budget" if p.prediction == -1 else "decided")
        rows.append({k: str(v) if not isinstance(v, list) else v for k, v in row.items()})
    return rows


def compare_rows(device: list[dict], python: list[dict]) -> list[str]:
    """Every difference between the device's rows and the API's, as lines naming the image and the column."""
    problems = []
    if len(device) != len(python):
        problems.append(f"the device wrote {len(device)} rows for {len(python)} images")
    for ours, theirs in zip(device, python):
        for key, value in theirs.items():
            mine = ours.get(key)
            if key == "decisions":
                mine = [part.split(":", 1)[1] for part in (mine or "").split(",")] if mine else []
            if mine != value:
                problems.append(f"image {theirs['idx']}: {key} is {mine} on the device, {value} in the Python API")
    return problems


def settings_for(model: IntegerModel, system: str = "intrs-quant", noise: str | None = None,
                 sigma: float | None = None, **counts) -> CSettings:
    """The export's settings for ``model`` as ``intrs certify`` would run it: the system's noise law at
    ``sigma`` (default: the model's training sigma)."""
    from .systems import make_system

    if system not in ("intrs-quant", "floatrs-quant"):
        raise ConfigError(f"a C export runs an integer system: intrs-quant or floatrs-quant, not {system!r}")
    sigma = model.meta.get("sigma") if sigma is None else sigma
    if sigma is None:
        raise ConfigError("the integer model records no sigma: pass --sigma")
    law = make_system(system, model, sigma, noise).noise
    return CSettings(system, law, **{k: v for k, v in counts.items() if v is not None}).check()


@dataclass
class CVerifyReport:
    """How the exported tree's rows compare with the Python API's, per mode."""

    tree: str
    instruction_set: str
    images: int
    problems: dict[str, list[str]]

    @property
    def identical(self) -> bool:
        return not any(self.problems.values())

    def to_markdown(self) -> str:
        lines = [f"verify-export {self.tree} (C, built with the host compiler, kernels {self.instruction_set}): "
                 f"{self.images} test images, every mode against the Python API with the same seed", "",
                 "| mode | images | rows identical | first difference |", "|---|---|---|---|"]
        for mode, problems in self.problems.items():
            lines.append(f"| {mode} | {self.images} | {'yes' if not problems else 'no'} | {problems[0] if problems else '-'} |")
        return "\n".join(lines) + "\n"


def verify(tree: Path, model: IntegerModel, count: int, seed: int, skip: int = 1, data_dir=None,
           modes: tuple[str, ...] = MODES) -> CVerifyReport:
    """Builds ``tree`` with the host compiler, runs its example program on ``count`` test images of the model's
    data set (idx 0, skip, 2 skip, ...) and compares every row with the Python API's (``python_rows``)."""
    import subprocess
    import tempfile

    from .data import load_dataset
    from .systems import check_integer_model_fits

    tree = Path(tree)
    facts_path = tree / "export.json"
    if not facts_path.is_file():
        raise ConfigError(f"{tree} is not a C export (no export.json): make one with 'intrs export MODEL --format c'")
    facts = json.loads(facts_path.read_text())
    if list(model.input_shape) != facts["input_shape"] or model.num_classes != facts["classes"]:
        raise ConfigError(f"{tree} was exported from another model ({facts['input_shape']}, {facts['classes']} classes)")
    dataset = model.meta.get("dataset")
    if not dataset:
        raise ConfigError("the integer model records no data set: verify the tree with images of your own")
    data = load_dataset(dataset, "test", data_dir)
    check_integer_model_fits(model, data.info)
    indices = [i * skip for i in range(count) if i * skip < len(data)]
    images, labels = data.images[indices].numpy(), data.labels[indices].numpy()
    build(tree)
    problems, used = {}, "?"
    with tempfile.TemporaryDirectory() as folder:
        inputs = write_inputs(Path(folder), images, labels)
        for mode in modes:
            run = subprocess.run([str(tree / "intrs_example"), mode, *map(str, inputs), str(seed), "0", str(skip)],
                                 capture_output=True, text=True)
            if run.returncode:
                problems[mode] = [f"the example program failed: {run.stderr.strip()}"]
                continue
            used = run.stderr.strip().rsplit(" ", 1)[-1]
            problems[mode] = compare_rows(example_rows(run.stdout),
                                          python_rows(model, facts, images, labels, indices, seed, mode))
    return CVerifyReport(str(tree), used, len(indices), problems)
