"""The compiled fast path of the integer engine (``csrc/``, built by the package's own build).

It computes exactly the integers of the reference engine (``intrs.engine``; the
tests hold the two equal on random models and inputs, on every instruction set),
on NHWC int8 arrays: AVX-512 VNNI, AVX2 or portable C. The reference engine
stays the definition and the fallback, chosen automatically: where no compiler
built the library, for layers the kernels do not cover, for the rare batch whose
accumulators could leave int32 (the reference then raises its error), and when
``INTRS_ENGINE=reference`` is set.

Which instruction set runs is fixed when a program is built: a caller asks for
one (default: ``INTRS_ENGINE``, else the best this CPU has), the library hands
out that instruction set's table of entry points only if the CPU has it (a
request it lacks is refused with ``ConfigError``), and the program carries the
table. No global state decides what runs, so programs of different instruction
sets run side by side on any threads.

A model is prepared once (weights packed for vpdpbusd and int16 pairs,
per-channel requantization constants) and compiled into a network program per
input shape and instruction set (``Plan``): one C call per thread runs its piece
of the batch image by image through every layer (``torch.get_num_threads()``
threads; ctypes releases the GIL during each call). Every array here is an
integer array. The ctypes structs mirror csrc/kernels.h and are checked against
the library's own offsets and sizes at load (``check_interface``).
"""

from __future__ import annotations

import ctypes
import os
import weakref
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from . import threads
from .errors import ConfigError, IntrsError
from .intmodel import ADD_LEFT_SHIFT, AddLayer, ConvLayer, IntegerModel, PoolLayer

ENGINE_ENV = "INTRS_ENGINE"  # "reference" turns the compiled path off; an instruction set's name picks it
_ABI = 8
_INT32_LIMIT = 2 ** 31 - 1

# The instruction sets by level, as csrc/dispatch.c names them (checked at load); which of them a CPU has is
# the library's answer (``instruction_sets``).
INSTRUCTION_SETS = ("portable", "avx2", "avx-vnni", "avx512-vnni", "neon-dotprod", "neon-i8mm")


class KernelsBuildError(IntrsError):
    """The compiled kernels on disk do not match this intrs (a stale build): rebuilding them fixes it."""


class ConvShape(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int) for name in
                ("n", "h", "w", "cin", "cout", "cout_pad", "kh", "kw", "sh", "sw", "ph", "pw", "oh", "ow")] + \
               [("input_zero_point", ctypes.c_int64)]


class Requant(ctypes.Structure):
    _fields_ = [(name, ctypes.c_void_p) for name in ("offset", "mult", "left", "right", "half")] + \
               [("zero_point", ctypes.c_int64), ("act_min", ctypes.c_int64), ("act_max", ctypes.c_int64),
                ("any_left", ctypes.c_int), ("fast32", ctypes.c_int)] + \
               [(name, ctypes.c_void_p) for name in ("offset32", "mult32", "right32", "half32")] + \
               [("fused", ctypes.c_int), ("relu", ctypes.c_int), ("fused_constants", ctypes.c_void_p)]


class PoolShape(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int) for name in
                ("h", "w", "c", "kh", "kw", "sh", "sw", "ph", "pw", "oh", "ow", "average", "act_min", "act_max")]


class Layout(ctypes.Structure):
    """How a tensor lies in its slot (``layout_t``): (h, w, c) framed by ``pad`` pixels that hold its zero point,
    ``pixel`` bytes per pixel, int8 (lift 0) or u8 x + 128 (lift 128, what the VNNI convolutions read without
    a copy)."""
    _fields_ = [(name, ctypes.c_int) for name in ("h", "w", "c", "pad", "pixel", "lift", "zero_point")]

    @property
    def bytes(self) -> int:
        return (self.h + 2 * self.pad) * (self.w + 2 * self.pad) * self.pixel


# a layer of a network program (``op_t`` in csrc/kernels.h); its kinds:
OP_CONV_S8, OP_CONV_S32, OP_ADD, OP_POOL, OP_FLATTEN = range(5)


class Op(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int) for name in ("kind", "in0", "in1", "out")] + \
               [(name, Layout) for name in ("from0", "from1", "to")] + [("shape", ConvShape)] + \
               [(name, ctypes.c_void_p) for name in ("w_vnni", "q_vnni", "q_sdot", "w_mmla", "w_pairs", "q_pairs", "w_wino",
                                                     "w_wide", "q_wide", "add_params")] + [("pool", PoolShape)]


class Isa(ctypes.Structure):
    """An instruction set's table of entry points (``isa_t``): only its level and layout are read here."""
    _fields_ = [("level", ctypes.c_int), ("lifted", ctypes.c_int)] + \
               [(name, ctypes.c_void_p) for name in ("conv", "add", "add_rescale")]


class ProgramHeader(ctypes.Structure):
    """``program_t``: a program's ops and the instruction-set table it was built for."""
    _fields_ = [("isa", ctypes.c_void_p), ("ops", ctypes.c_void_p), ("count", ctypes.c_int),
                ("slot_bytes", ctypes.c_void_p), ("slots", ctypes.c_int), ("output", ctypes.c_int),
                ("output_bytes", ctypes.c_int64), ("image_values", ctypes.c_int64)]


class _Field(ctypes.Structure):
    _fields_ = [("type", ctypes.c_char_p), ("field", ctypes.c_char_p), ("offset", ctypes.c_int64),
                ("size", ctypes.c_int64)]


class _Constant(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("value", ctypes.c_int64)]


_STRUCTS = {"requant_t": Requant, "conv_shape_t": ConvShape, "pool_shape_t": PoolShape, "layout_t": Layout,
            "op_t": Op, "isa_t": Isa, "program_t": ProgramHeader}
ERR_OVERFLOW, ERR_MEMORY, ERR_UNSUPPORTED, ERR_ISA = 1, 2, 3, 4


def _constants_here() -> dict[str, int]:
    return {"ERR_OVERFLOW": ERR_OVERFLOW, "ERR_MEMORY": ERR_MEMORY, "ERR_UNSUPPORTED": ERR_UNSUPPORTED,
            "ERR_ISA": ERR_ISA, "ADD_LEFT_SHIFT": ADD_LEFT_SHIFT, "ISA_COUNT": len(INSTRUCTION_SETS),
            "OP_CONV_S8": OP_CONV_S8, "OP_CONV_S32": OP_CONV_S32, "OP_ADD": OP_ADD, "OP_POOL": OP_POOL,
            "OP_FLATTEN": OP_FLATTEN}


def check_interface(lib: ctypes.CDLL, path: str) -> None:
    """Raise ``KernelsBuildError`` unless the library's structs (every size and field offset), constants and
    instruction-set names are the ones this module builds and reads."""
    def fail(what: str):
        raise KernelsBuildError(f"the compiled kernels {path} do not match this intrs ({what}): rebuild them "
                                "with 'bash scripts/setup.sh' (or 'pip install -e .')")

    count = ctypes.c_int()
    lib.intrs_fields.restype = ctypes.POINTER(_Field)
    table = lib.intrs_fields(ctypes.byref(count))
    seen: dict[str, set[str]] = {name: set() for name in _STRUCTS}
    for entry in table[:count.value]:
        type_name, field = entry.type.decode(), entry.field.decode()
        struct = _STRUCTS.get(type_name)
        if struct is None:
            fail(f"unknown struct {type_name}")
        here = (0, ctypes.sizeof(struct)) if not field else \
            (getattr(struct, field).offset, getattr(struct, field).size) if hasattr(struct, field) else None
        if here != (entry.offset, entry.size):
            fail(f"{type_name}{'.' + field if field else ''}: offset and size {entry.offset}, {entry.size} in C, "
                 f"{here} here")
        seen[type_name].add(field)
    for type_name, struct in _STRUCTS.items():
        missing = ({name for name, *_ in struct._fields_} | {""}) - seen[type_name]
        if missing:
            fail(f"{type_name} lacks {', '.join(sorted(missing))} in C")
    lib.intrs_constants.restype = ctypes.POINTER(_Constant)
    table = lib.intrs_constants(ctypes.byref(count))
    theirs = {entry.name.decode(): entry.value for entry in table[:count.value]}
    if theirs != _constants_here():
        fail(f"constants {theirs} in C, {_constants_here()} here")
    lib.intrs_isa_name.restype = ctypes.c_char_p
    names = tuple(lib.intrs_isa_name(level).decode() for level in range(len(INSTRUCTION_SETS)))
    if names != INSTRUCTION_SETS:
        fail(f"instruction sets {names} in C, {INSTRUCTION_SETS} here")


@lru_cache(maxsize=1)
def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None where the build found no compiler. A library built from other sources
    than this module's (another ABI, or structs that differ) raises ``KernelsBuildError``."""
    for path in sorted(Path(__file__).parent.glob("_kernels*.so")):
        try:
            lib = ctypes.CDLL(str(path))
        except OSError:
            continue
        if not hasattr(lib, "intrs_kernels_abi") or lib.intrs_kernels_abi() != _ABI:
            raise KernelsBuildError(f"the compiled kernels {path} are of another version of intrs (ABI "
                                    f"{lib.intrs_kernels_abi() if hasattr(lib, 'intrs_kernels_abi') else '?'}, "
                                    f"this one needs {_ABI}): rebuild them with 'bash scripts/setup.sh' "
                                    "(or 'pip install -e .')")
        check_interface(lib, str(path))
        pointer, integer, int64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
        lib.intrs_isa.argtypes, lib.intrs_isa.restype = [integer], pointer
        lib.intrs_run.argtypes = [pointer, pointer, integer, pointer]
        lib.intrs_arena_bytes.argtypes, lib.intrs_arena_bytes.restype = [pointer, integer], int64
        lib.intrs_add.argtypes = [pointer, pointer, pointer, int64, pointer, pointer]
        lib.intrs_add_rescale.argtypes = [pointer, pointer, int64, int64, int64, int64, pointer]
        lib.intrs_table_draw.argtypes = [pointer, int64, pointer, integer, pointer, pointer, int64, pointer, pointer,
                                         pointer, int64]
        lib.intrs_table_draw.restype = int64
        return lib
    return None


def peak_rates(rounds: int = 400_000, pieces: int = 5) -> dict[str, float]:
    """GMAC/s of one core for each multiply-accumulate loop of ``csrc/peak.c`` this CPU has (its name -> rate),
    the best of ``pieces`` runs of ``rounds`` x 12 steps (the defaults take about half a second in all): the
    ceiling that speed ratios are read against. {} without the compiled kernels or on a CPU without them."""
    lib = library()
    if lib is None:
        return {}
    lib.intrs_peak_name.argtypes, lib.intrs_peak_name.restype = [ctypes.c_int], ctypes.c_char_p
    lib.intrs_peak_rate.argtypes = [ctypes.c_int, ctypes.c_long, ctypes.c_int]
    lib.intrs_peak_rate.restype = ctypes.c_double
    rates, kind = {}, 0
    while (name := lib.intrs_peak_name(kind)) is not None:
        rate = lib.intrs_peak_rate(kind, rounds, pieces)
        if rate > 0:
            rates[name.decode()] = rate
        kind += 1
    return rates


def available() -> bool:
    return os.environ.get(ENGINE_ENV, "auto") != "reference" and library() is not None


def instruction_sets() -> tuple[str, ...]:
    """The instruction sets this CPU has (and this build knows), best last; () without the compiled kernels."""
    lib = library()
    if lib is None:
        return ()
    return tuple(name for level, name in enumerate(INSTRUCTION_SETS) if lib.intrs_isa(level))


def instruction_set(requested: str | None = None) -> str:
    """The instruction set a forward pass asking for ``requested`` runs: that one, which the CPU must have
    (else ``ConfigError``); by default ``INTRS_ENGINE``'s choice ('auto': the best the CPU has). 'reference'
    where the compiled path is off or was not built."""
    choice = requested or os.environ.get(ENGINE_ENV, "auto")
    if choice not in ("auto", "reference") + INSTRUCTION_SETS:
        source = "instruction set" if requested else f"{ENGINE_ENV}"
        raise ConfigError(f"unknown {source} {choice!r}: one of auto, reference, {', '.join(INSTRUCTION_SETS)}")
    have = instruction_sets()
    if choice == "reference" or not have or os.environ.get(ENGINE_ENV) == "reference":
        return "reference"
    if choice == "auto":
        return have[-1]
    if choice not in have:
        raise ConfigError(f"this CPU has no {choice} (it has {', '.join(have)}): ask for one of those")
    return choice


_chosen = instruction_set  # under a name that forward's argument does not hide


def _table(name: str) -> int:
    """The address of the instruction set's entry-point table, which the library grants only where the CPU has
    it (never an address for code this CPU can't run)."""
    address = library().intrs_isa(INSTRUCTION_SETS.index(name))
    if not address:
        raise ConfigError(f"this CPU has no {name} (it has {', '.join(instruction_sets())})")
    return address


def table_draw(high: np.ndarray, guide: np.ndarray, guide_bits: int, values: np.ndarray, words: np.ndarray,
               out: np.ndarray, offsets: np.ndarray | None = None) -> np.ndarray | None:
    """Table-sampler draws for 64-bit ``words`` into the int32 array ``out`` (plus ``offsets``, an int32
    array repeated along them), returning the mask of words equal to a threshold's high word (see
    ``intrs.noise.TableSampler``); None without the compiled kernels."""
    if not available():
        return None
    tie = np.empty(words.shape, dtype=np.uint8)
    period = len(offsets) if offsets is not None else max(1, words.size)
    library().intrs_table_draw(_pointer(high), len(high), _pointer(guide), guide_bits, _pointer(values),
                               _pointer(words), words.size, _pointer(out), _pointer(tie),
                               None if offsets is None else _pointer(offsets), period)
    return tie.view(bool)


# the shared worker threads (intrs.threads), under the names this module has always offered
thread_count, parallel_map = threads.thread_count, threads.parallel_map


def _pointer(array) -> int:
    return array.data_ptr() if isinstance(array, torch.Tensor) else array.ctypes.data


def _output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _blocks(weight: np.ndarray, group: int, dtype) -> np.ndarray:
    """(O_pad, C, kh, kw) weights as the VNNI kernels read them: [O_pad / 16][kh][kw][C_g / g][16 outputs][g],
    C padded with zeros to a multiple of the group g (4 int8 for vpdpbusd, 2 int16 for vpdpwssd)."""
    out, cin, kh, kw = weight.shape
    groups = -(-cin // group)
    padded = np.zeros((out, kh, kw, groups * group), dtype=dtype)
    padded[:, :, :, :cin] = weight.transpose(0, 2, 3, 1)
    blocks = padded.reshape(out // 16, 16, kh, kw, groups, group).transpose(0, 2, 3, 4, 1, 5)
    return np.ascontiguousarray(blocks)


def _mmla_blocks(weight: np.ndarray) -> np.ndarray:
    """(O_pad, C, kh, kw) weights as neon_i8mm.c's smmla reads them: [O_pad / 8][kh][kw][C_8 / 8][4 output pairs]
    [2 outputs][8 channels] int8, C padded with zeros to a multiple of 8 (one 16-byte operand: 2 outputs x 8
    channels)."""
    out, cin, kh, kw = weight.shape
    padded = np.zeros((out, kh, kw, -(-cin // 8) * 8), dtype=np.int8)
    padded[:, :, :, :cin] = weight.transpose(0, 2, 3, 1)
    blocks = padded.reshape(out // 8, 4, 2, kh, kw, -1, 8).transpose(0, 3, 4, 5, 1, 2, 6)
    return np.ascontiguousarray(blocks)


# Winograd F(2x2, 3x3) (Lavin & Gray 2016) with its filter transform doubled into integers: G' = 2 G, so the
# transformed filter is U' = G' g G'^T = 4 U (csrc/avx2.c says why the kernel's integers stay exact)
_WINOGRAD_G2 = np.array([[2, 0, 0], [1, 1, 1], [1, -1, 1], [0, 0, 2]], dtype=np.int64)


def _winograd_blocks(weight: np.ndarray) -> np.ndarray:
    """(O_pad, C, 3, 3) weights as avx2.c's conv_wino_avx2 reads them: U' = G' g G'^T per (output, input)
    channel, as [O_pad / 16][16 positions xi = 4 i + j][C_2 / 2][16 outputs][2] int16 (C padded to even)."""
    out, cin = weight.shape[:2]
    u = np.einsum("ik,ockl,jl->ocij", _WINOGRAD_G2, weight.astype(np.int64), _WINOGRAD_G2).reshape(out, cin, 16)
    pairs = np.zeros((out, -(-cin // 2) * 2, 16), dtype=np.int64)
    pairs[:, :cin] = u
    blocks = pairs.reshape(out // 16, 16, -1, 2, 16).transpose(0, 4, 2, 1, 3)
    return np.ascontiguousarray(blocks).astype(np.int16)


class _Requants:
    """One layer's requantization constants (int64 per output channel, int32 copies for the fast lanes)."""

    def __init__(self, layer: ConvLayer, cout_pad: int):
        def pad(values):
            out = np.zeros(cout_pad, dtype=np.int64)
            out[:len(values)] = values
            return out

        self.layer, shift = layer, pad(layer.shift)
        self.mult, self.left, self.right = pad(layer.multiplier), np.maximum(shift, 0), np.maximum(-shift, 0)
        self.half = (np.int64(1) << self.right) >> 1
        self.int32 = [a.astype(np.int32) for a in (self.mult, self.right, self.half)]
        self.keep = []  # offsets handed to C: kept alive with the structs that point at them

    def make(self, offset: np.ndarray, fast32: bool, dot_bound: np.ndarray | None = None) -> Requant:
        """``fast32`` promises |acc| <= 2^30 (the int32-lane epilogue) and is refused with a left shift.
        ``dot_bound`` (per channel, for the VNNI kernels: acc = dot + offset) asks for the fused epilogue."""
        fast32 = fast32 and not self.left.any() and int(np.abs(offset).max(initial=0)) < 2 ** 31
        offset32 = offset.astype(np.int32) if fast32 else offset
        fused = None if dot_bound is None else self._fused(offset, dot_bound)
        self.keep += [offset, offset32, fused]
        mult32, right32, half32 = self.int32
        layer = self.layer
        return Requant(_pointer(offset), _pointer(self.mult), _pointer(self.left), _pointer(self.right),
                       _pointer(self.half), layer.output_zero_point, layer.act_min, layer.act_max,
                       int(self.left.any()), int(fast32), _pointer(offset32), _pointer(mult32), _pointer(right32),
                       _pointer(half32), int(fused is not None), int(layer.act_min >= layer.output_zero_point),
                       None if fused is None else _pointer(fused))

    def _fused(self, offset: np.ndarray, dot_bound: np.ndarray) -> np.ndarray | None:
        """requant_fused's constants (vnni.c; avx2_shared.h's requant_fused_avx2 reads the same), per block of
        16 channels in even-then-odd lane order: add (lift 0), add (lift 128), below, fix, shift; None where
        its bounds fail: a left shift, an accumulator that could leave int32 (TFLite would overflow: the int64
        path checks), or a numerator acc M0 + add - fix that could reach 2^62 in magnitude (the AVX2 kernels,
        which have no 64-bit arithmetic shift, round it in two steps and need floor(numerator / 2^31) within
        int32; AVX-512's single shift would allow 2^63)."""
        if self.left.any():
            return None
        zero = self.layer.output_zero_point
        rows = [[] for _ in range(5)]
        for o, m, r, d in zip(offset.tolist(), self.mult.tolist(), self.right.tolist(), dot_bound.tolist()):
            if d + abs(o) > _INT32_LIMIT:
                return None
            base = o * m + 2 ** 30 + (2 ** (r - 1) << 31 if r else 0)
            adds = [base + (zero + lift) * 2 ** (31 + r) for lift in (0, 128)]
            if max(abs(a) for a in adds) + d * m + 2 ** 31 >= 2 ** 62:
                return None
            for row, value in zip(rows, adds + [-(o * m + 2 ** 30), 2 ** 31 if r else 0, 31 + r]):
                row.append(value)
        lanes = np.concatenate([np.arange(0, 16, 2), np.arange(1, 16, 2)])
        table = np.array(rows, dtype=np.int64).reshape(5, -1, 16)[:, :, lanes]  # (5, blocks, 16)
        return np.ascontiguousarray(table.transpose(1, 0, 2))


class _Conv:
    """A convolution's packed weights and requantization constants, for every instruction set."""

    def __init__(self, layer: ConvLayer, wide_input: bool):
        weight = layer.weight.astype(np.int64)  # (O, C, kh, kw)
        out, cin, kh, kw = weight.shape
        self.layer, self.wide_input = layer, wide_input
        self.cout, self.cin, self.kernel = out, cin, (kh, kw)
        self.cout_pad = -(-out // 16) * 16
        padded = np.zeros((self.cout_pad, cin, kh, kw), dtype=np.int64)
        padded[:out] = weight
        abs_columns = np.abs(padded).sum(axis=(1, 2, 3))
        self.max_abs_column = int(abs_columns.max(initial=0))
        bias = np.zeros(self.cout_pad, dtype=np.int64)
        bias[:out] = layer.bias
        self.max_abs_bias = int(np.abs(bias).max(initial=0))
        requants = _Requants(layer, self.cout_pad)
        # the direct kernel (portable C), rows of output channels (kh, kw, C, O_pad); it sums (x - z_in) w itself
        self.w_wide = np.ascontiguousarray(padded.transpose(2, 3, 1, 0)).astype(np.int32)
        self.q_wide = requants.make(bias, fast32=False)
        # int16 pairs of x - z_in (vpdpwssd for the first layer, vpmaddwd for AVX2): the offset is the bias
        self.w_pairs = _blocks(padded, 2, np.int16)
        if wide_input:
            # whether |acc| <= 2^30 depends on the batch
            # (the fast variant serves batches with |acc| <= 2^30, so |dot| <= 2^30 for the fused epilogue)
            self.q_pairs = {False: requants.make(bias, False),
                            True: requants.make(bias, True, dot_bound=np.full(self.cout_pad, 2 ** 30))}
        else:
            # int8 inputs: |acc| <= 255 sum|w| + |b|, within 2^30 the epilogue runs in int32 lanes; the AVX2
            # kernels' accumulators hold sum (x - z_in) w, |.| <= 255 sum|w|: the fused epilogue where it holds
            fast32 = int((255 * abs_columns + np.abs(bias)).max()) <= 2 ** 30
            self.q_pairs8 = requants.make(bias, fast32, dot_bound=255 * abs_columns)
            # vpdpbusd on x + 128: acc = sum (x + 128) w + b - (z_in + 128) sum w
            self.w_vnni = _blocks(padded, 4, np.int8)
            columns = padded.sum(axis=(1, 2, 3))
            offset = bias - (layer.input_zero_point + 128) * columns
            # the VNNI epilogue: the fused form where its bounds hold, else int64 lanes (no int32-lane form)
            self.q_vnni = requants.make(offset, False, dot_bound=255 * abs_columns)
            # sdot and smmla (NEON) on the signed input: acc = sum x w + b - z_in sum w, the same value as the AVX2 kernels'
            # acc, so the same int32-lane promise; its offset lies within 2^30 + 128 sum|w| < 2^31 there
            self.q_sdot = requants.make(bias - layer.input_zero_point * columns, fast32)
            self.w_mmla = _mmla_blocks(padded)
            # the lifted dot products stay exact in vpdpbusd's wrapping int32 lanes
            self.vnni_exact = kh * kw * self.w_vnni.shape[3] * 4 * 255 * 127 <= _INT32_LIMIT  # shape[3]: cin4 / 4
            # AVX2's Winograd for 3x3 stride-1 layers: its wrapping lanes hold 4 sum (x - z_in) w, within int32
            winograd = (kh, kw) == (3, 3) and tuple(layer.stride) == (1, 1)
            self.w_wino = _winograd_blocks(padded) if winograd and 4 * 255 * self.max_abs_column <= _INT32_LIMIT \
                else None
        self.requants = requants  # owns the arrays the Requant structs point at
        # the weights' addresses, once: numpy's .ctypes costs microseconds per call
        self.weights = {name: _pointer(getattr(self, name)) for name in ("w_wide", "w_pairs", "w_vnni", "w_mmla", "w_wino")
                        if getattr(self, name, None) is not None}

    def choice(self, low: int, high: int) -> str:
        """How the first layer runs a batch whose input values lie in [low, high]: 'wrap' (its int32 sums
        might wrap: the reference engine's int64 products decide), 'pairs32' or 'pairs64' (int16 pairs,
        the int32 or int64 epilogue) or 'wide' (the direct kernel)."""
        zero = self.layer.input_zero_point
        deviation = max(abs(high - zero), abs(low - zero))
        if deviation * self.max_abs_column > _INT32_LIMIT:
            return "wrap"
        if deviation >= 2 ** 15:
            return "wide"
        return "pairs32" if deviation * self.max_abs_column + self.max_abs_bias <= 2 ** 30 else "pairs64"

    def op(self, shape: tuple[int, int, int], choice: str | None = None) -> tuple[Op, tuple[int, int, int]] | None:
        """This layer on one (h, w, c) image, and its output shape; None where the reference must decide.
        A layer reading the network's input runs as ``choice`` says."""
        h, w, c = shape
        layer = self.layer
        (sh, sw), (ph, pw), (kh, kw) = layer.stride, layer.padding, self.kernel
        oh, ow = _output_size(h, kh, sh, ph), _output_size(w, kw, sw, pw)
        op = Op(shape=ConvShape(1, h, w, c, self.cout, self.cout_pad, kh, kw, sh, sw, ph, pw, oh, ow,
                                layer.input_zero_point), w_wide=self.weights["w_wide"],
                q_wide=ctypes.addressof(self.q_wide))
        if self.wide_input:
            if choice == "wrap":
                return None
            op.kind = OP_CONV_S32
            if choice != "wide":
                op.w_pairs = self.weights["w_pairs"]
                op.q_pairs = ctypes.addressof(self.q_pairs[choice == "pairs32"])
        else:
            if not self.vnni_exact:
                return None
            op.kind, op.w_vnni, op.q_vnni = OP_CONV_S8, self.weights["w_vnni"], ctypes.addressof(self.q_vnni)
            op.q_sdot, op.w_mmla = ctypes.addressof(self.q_sdot), self.weights["w_mmla"]
            op.w_pairs, op.q_pairs = self.weights["w_pairs"], ctypes.addressof(self.q_pairs8)
            op.w_wino = self.weights.get("w_wino")
        return op, (oh, ow, self.cout)


class _Add:
    def __init__(self, layer: AddLayer):
        self.params = np.array([layer.input1_zero_point, layer.input2_zero_point, layer.output_zero_point,
                                layer.input1_multiplier, layer.input1_shift, layer.input2_multiplier,
                                layer.input2_shift, layer.output_multiplier, layer.output_shift,
                                layer.act_min, layer.act_max], dtype=np.int64)
        self.params_address = _pointer(self.params)

    def op(self, first: tuple[int, int, int], second: tuple[int, int, int]) -> tuple[Op, tuple[int, int, int]] | None:
        if first != second:
            return None  # broadcasting adds take the reference path
        return Op(kind=OP_ADD, add_params=self.params_address), first


class _Pool:
    def __init__(self, layer: PoolLayer):
        self.layer = layer

    def op(self, shape: tuple[int, int, int]) -> tuple[Op, tuple[int, int, int]]:
        h, w, c = shape
        layer = self.layer
        if layer.is_global:
            (kh, kw), (sh, sw), (ph, pw) = (h, w), (1, 1), (0, 0)
        else:
            (kh, kw), (sh, sw), (ph, pw) = layer.kernel, layer.stride, layer.padding
        oh, ow = _output_size(h, kh, sh, ph), _output_size(w, kw, sw, pw)
        pool = PoolShape(h, w, c, kh, kw, sh, sw, ph, pw, oh, ow, int(layer.op == "average_pool"), layer.act_min,
                         layer.act_max)
        return Op(kind=OP_POOL, pool=pool), (oh, ow, c)


class _Flatten:
    """The reference flattens NCHW: the program reorders the NHWC image (a 1x1 map is the same either way)."""

    def op(self, shape: tuple[int, int, int]) -> tuple[Op, tuple[int, int, int]]:
        return Op(kind=OP_FLATTEN), (1, 1, int(np.prod(shape)))


class _Program:
    """A model's layers as one C call: ops over slots (one image's buffers, reused once a tensor is dead), bound
    to the instruction-set table they were compiled for."""

    def __init__(self, ops: list[Op], slot_bytes: list[int], output: int, output_shape: tuple[int, int, int],
                 image_values: int, table: int, instruction_set: str, steps: list):
        self.steps = steps  # the ops point into their packed weights and constants: they live as long as this
        self.instruction_set = instruction_set
        self.ops = (Op * len(ops))(*ops)
        self.slot_bytes = np.array(slot_bytes, dtype=np.int64)
        self.output_shape = output_shape
        self.header = ProgramHeader(table, ctypes.addressof(self.ops), len(ops), _pointer(self.slot_bytes),
                                    len(slot_bytes), output, int(np.prod(output_shape)), image_values)

    def __call__(self, lib, x: torch.Tensor) -> torch.Tensor | None:
        """int8 outputs (N, h, w, c) of an int32 NHWC batch, or None where the reference must decide."""
        y = torch.empty((len(x), *self.output_shape), dtype=torch.int8)
        rc = lib.intrs_run(ctypes.addressof(self.header), _pointer(x), len(x), _pointer(y))
        if rc == ERR_ISA:  # a table is granted before a program is built: this would be a bug, never a fallback
            raise RuntimeError(f"the kernels refused a program built for {self.instruction_set}")
        return None if rc else y

    def buffers(self) -> dict[int, np.ndarray | ctypes.Structure]:
        """Every array and requantization struct the ops can reach, by address (for the serializers: ``image``
        and intrs.c_export). Arrays with the same address are one buffer."""
        found: dict[int, np.ndarray | ctypes.Structure] = {}

        def collect(value):
            if isinstance(value, np.ndarray):
                found.setdefault(value.ctypes.data, value)
            elif isinstance(value, ctypes.Structure):
                found.setdefault(ctypes.addressof(value), value)
            elif isinstance(value, (list, tuple)):
                for item in value:
                    collect(item)
            elif isinstance(value, dict):
                for item in value.values():
                    collect(item)
            elif isinstance(value, (_Conv, _Add, _Requants)):
                for item in vars(value).values():
                    collect(item)

        collect(self.steps)
        return found

    def image(self, x: torch.Tensor, expected: torch.Tensor) -> bytes:
        """This program as one relocatable file, with int32 NHWC inputs ``x`` and the int8 outputs they must
        give: what tests/program_image.c loads on another machine (an aarch64 one under emulation) to run the
        same ops through its own kernels. Every pointer in the ops and requantization structs becomes 1 + the
        offset of its buffer in the data block (0: null); the structs' sizes travel with it, to be checked.

        Layout (little-endian int64 words, then blocks): magic b"INTRSPG1"; sizeof op_t, sizeof requant_t,
        op count, slots, output slot, output bytes, image values, images, data bytes, requant count; the
        slot sizes; the data offsets of the requant structs; the ops; the data block; x; expected."""
        buffers = {address: value.tobytes() if isinstance(value, np.ndarray) else bytes(value)
                   for address, value in self.buffers().items()}
        offsets, data = {}, bytearray()
        for address, blob in buffers.items():
            offsets[address] = len(data)
            data += blob + bytes(-len(blob) % 64)

        def relocate(struct: ctypes.Structure) -> bytes:
            copy = type(struct).from_buffer_copy(bytes(struct))
            for name, kind in type(struct)._fields_:
                if kind is ctypes.c_void_p and getattr(copy, name):
                    if getattr(copy, name) not in offsets:
                        raise ValueError(f"{type(struct).__name__}.{name} points outside the program's buffers")
                    setattr(copy, name, offsets[getattr(copy, name)] + 1)
            return bytes(copy)

        requants = [address for address in buffers if any(
            address == ctypes.addressof(q) for step in self.steps for q in _requant_structs(step))]
        for address in requants:
            at = offsets[address]
            data[at:at + ctypes.sizeof(Requant)] = relocate(Requant.from_address(address))
        ops = b"".join(relocate(op) for op in self.ops)
        header = self.header
        words = [ctypes.sizeof(Op), ctypes.sizeof(Requant), header.count, header.slots, header.output,
                 header.output_bytes, header.image_values, len(x), len(data), len(requants)]
        return b"".join([b"INTRSPG1", np.array(words, dtype="<i8").tobytes(), self.slot_bytes.astype("<i8").tobytes(),
                         np.array([offsets[a] for a in requants], dtype="<i8").tobytes(), ops, bytes(data),
                         x.numpy().astype("<i4").tobytes(), expected.numpy().astype(np.int8).tobytes()])


def _requant_structs(step) -> list[Requant]:
    found = []
    for value in vars(step).values():
        if isinstance(value, Requant):
            found.append(value)
        elif isinstance(value, dict):
            found += [v for v in value.values() if isinstance(v, Requant)]
    return found


class Plan:
    """A model prepared for the kernels: one step per layer, or ``supported = False``."""

    def __init__(self, model: IntegerModel):
        # no strong reference to the model: the cache below must not keep it alive
        self.model_ref, self.steps, self.supported = weakref.ref(model), [], True
        self.layers, self.input_name, self.output_name = list(model.layers), model.input_name, model.output_name
        self.programs: dict[tuple, _Program | None] = {}
        for layer in model.layers:
            wide = model.input_name in layer.inputs
            if isinstance(layer, ConvLayer):
                self.steps.append(_Conv(layer, wide))
            elif isinstance(layer, AddLayer) and not wide:
                self.steps.append(_Add(layer))
            elif isinstance(layer, PoolLayer) and not wide and layer.op in ("average_pool", "max_pool"):
                self.steps.append(_Pool(layer))
            elif isinstance(layer, PoolLayer) and not wide and layer.op == "flatten":
                self.steps.append(_Flatten())
            else:
                self.supported = False

    def program(self, shape: tuple[int, int, int], low: int, high: int, instruction_set: str) -> _Program | None:
        """The program for (h, w, c) input images with values in [low, high] on ``instruction_set`` (which the
        CPU must have: ``ConfigError`` otherwise), cached by the choices those bounds make for the layers
        reading the input (``_Conv.choice``) and by the instruction set."""
        choices = tuple(step.choice(low, high) if isinstance(step, _Conv) and step.wide_input else None
                        for step in self.steps)
        key = (shape, choices, instruction_set)
        if key not in self.programs:
            self.programs[key] = self._compile(shape, choices, instruction_set)
        return self.programs[key]

    def _compile(self, shape: tuple[int, int, int], choices: tuple, instruction_set: str) -> _Program | None:
        table = _table(instruction_set)
        # the ops and every tensor's (h, w, c)
        ops, shapes = [], {self.input_name: shape}
        for layer, step, choice in zip(self.layers, self.steps, choices):
            made = step.op(*[shapes[name] for name in layer.inputs], *([choice] if choice else []))
            if made is None:
                return None
            ops.append(made[0])
            shapes[layer.output] = made[1]
        layouts = self._layouts(ops, shapes, bool(Isa.from_address(table).lifted))
        # slots: one image's buffers, a dead tensor's slot reused by the next (never by its reader's output)
        last_use = {name: i for i, layer in enumerate(self.layers) for name in layer.inputs}
        slot_of, free, slot_bytes = {self.input_name: 0}, [], [0]
        for i, (layer, op) in enumerate(zip(self.layers, ops)):
            out = free.pop() if free else len(slot_bytes)
            if out == len(slot_bytes):
                slot_bytes.append(0)
            slot_bytes[out] = max(slot_bytes[out], layouts[layer.output].bytes)
            slots = [slot_of[name] for name in layer.inputs]
            op.in0, op.in1, op.out = slots[0], slots[-1], out
            op.from0, op.from1, op.to = layouts[layer.inputs[0]], layouts[layer.inputs[-1]], layouts[layer.output]
            slot_of[layer.output] = out
            free += [slot for name, slot in zip(layer.inputs, slots)
                     if slot and last_use[name] == i and name != self.output_name and slot not in free]
        return _Program(ops, slot_bytes, slot_of[self.output_name], shapes[self.output_name], int(np.prod(shape)),
                        table, instruction_set, self.steps)

    def _layouts(self, ops: list[Op], shapes: dict, lifted: bool) -> dict[str, Layout]:
        """Plain int8 NHWC everywhere, except, on an instruction set that runs lifted layouts (VNNI), the
        tensors that a convolution or an ADD writes for convolutions and ADDs to read: lifted to u8 and framed
        by the widest padding of their readers (the frame holding the tensor's zero point), so that no
        convolution copies its input."""
        readers: dict[str, list[int]] = {}
        for i, layer in enumerate(self.layers):
            for name in layer.inputs:
                readers.setdefault(name, []).append(i)
        layouts = {}
        for name, (h, w, c) in shapes.items():
            layouts[name] = Layout(h, w, c, 0, c, 0, 0)
        if not lifted:
            return layouts
        for i, (layer, op) in enumerate(zip(self.layers, ops)):
            name, (h, w, c) = layer.output, shapes[layer.output]
            writer = op.kind == OP_CONV_S8 or op.kind == OP_ADD or (op.kind == OP_CONV_S32 and op.w_pairs)
            reads = [ops[k] for k in readers.get(name, [])]
            if (not writer or name == self.output_name or c % 4 or not reads
                    or any(r.kind not in (OP_CONV_S8, OP_ADD) for r in reads)):
                continue
            pad = max((max(r.shape.ph, r.shape.pw) for r in reads if r.kind == OP_CONV_S8), default=0)
            layouts[name] = Layout(h, w, c, pad, c, 128, layer.output_zero_point)
        return layouts

    def run(self, lib, z: torch.Tensor, instruction_set: str) -> torch.Tensor | None:
        """int8 logits (N, classes) of an NCHW integer batch, or None where the reference must decide."""
        # numpy, single-threaded: torch's parallel copies and reductions leave OpenMP threads spinning on
        # the cores the kernels' threads need
        values = np.ascontiguousarray(z.numpy().astype(np.int32, copy=False).transpose(0, 2, 3, 1))
        x = torch.from_numpy(values)
        low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
        program = self.program(tuple(x.shape[1:]), low, high, instruction_set)
        out = None if program is None else program(lib, x)
        if out is None:
            return None
        return out.reshape(out.shape[0], -1) if out.shape[1] * out.shape[2] == 1 else out.permute(0, 3, 1, 2)


_plans: dict[int, Plan] = {}  # by id(model), dropped with the model: the model itself stays picklable


def _plan(model: IntegerModel) -> Plan:
    plan = _plans.get(id(model))
    if plan is None or plan.model_ref() is not model:
        plan = _plans[id(model)] = Plan(model)
        weakref.finalize(model, _plans.pop, id(model), None)
    return plan


def forward(model: IntegerModel, z: torch.Tensor, instruction_set: str | None = None) -> torch.Tensor | None:
    """The compiled forward pass of a checked input batch on ``instruction_set`` (default: the choice of
    ``INTRS_ENGINE``, the best the CPU has), or None where the reference engine must run it. An instruction
    set the CPU lacks raises ``ConfigError``."""
    name = _chosen(instruction_set)
    if name == "reference":
        return None
    lib = library()
    plan = _plan(model)
    if not plan.supported:
        return None
    # one piece per thread: a program keeps each image's activations in cache however many it runs, and
    # fewer pieces cost fewer calls (pieces of 1000, 128 and 32 images of 400: 45, 48 and 49 ms at 28x28)
    chunks = [chunk for chunk in torch.tensor_split(z, thread_count()) if len(chunk)]
    parts = parallel_map(lambda chunk: plan.run(lib, chunk, name), chunks)
    return None if any(part is None for part in parts) else torch.cat(parts)

