"""The compiled fast path of the integer engine (``_kernels.c``, built by the package's own build).

It computes exactly the integers of the reference engine (``intrs.engine``; the
tests hold the two equal on random models and inputs, on both instruction sets),
on NHWC int8 arrays: AVX-512 VNNI where the CPU has it, portable C otherwise.
The reference engine stays the definition and the fallback, chosen
automatically: where no compiler built the library, for layers the kernels do
not cover, for the rare batch whose accumulators could leave int32 (the
reference then raises its error), and when ``INTRS_ENGINE=reference`` is set.

A model is prepared once (weights packed for vpdpbusd, per-channel
requantization constants) and the batch is split across
``torch.get_num_threads()`` threads; ctypes releases the GIL during each call.
Every array here is an integer array.
"""

from __future__ import annotations

import ctypes
import os
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from .intmodel import AddLayer, ConvLayer, IntegerModel, PoolLayer

ENGINE_ENV = "INTRS_ENGINE"  # "reference" turns the compiled path off
_ABI = 1
_OVERFLOW = 1
_INT32_LIMIT = 2 ** 31 - 1
_MIN_CHUNK = 16  # images per thread below which splitting the batch costs more than it saves


class ConvShape(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int) for name in
                ("n", "h", "w", "cin", "cout", "cout_pad", "kh", "kw", "sh", "sw", "ph", "pw", "oh", "ow")] + \
               [("input_zero_point", ctypes.c_int64)]


class Requant(ctypes.Structure):
    _fields_ = [(name, ctypes.c_void_p) for name in ("offset", "mult", "left", "right", "half")] + \
               [("zero_point", ctypes.c_int64), ("act_min", ctypes.c_int64), ("act_max", ctypes.c_int64),
                ("any_left", ctypes.c_int)]


@lru_cache(maxsize=1)
def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None where the build found no compiler (or the ABI differs)."""
    for path in sorted(Path(__file__).parent.glob("_kernels*.so")):
        try:
            lib = ctypes.CDLL(str(path))
        except OSError:
            continue
        if lib.intrs_kernels_abi() != _ABI:
            continue
        pointer, integer, int64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
        lib.intrs_conv_s8.argtypes = [pointer] * 7
        lib.intrs_conv_s32.argtypes = [pointer] * 5
        lib.intrs_add.argtypes = [pointer, pointer, int64, pointer, pointer]
        lib.intrs_pool.argtypes = [pointer] + [integer] * 15 + [pointer]
        lib.intrs_set_isa.argtypes = [integer]
        lib.intrs_table_draw.argtypes = [pointer, int64, pointer, integer, pointer, pointer, int64, pointer, pointer]
        lib.intrs_table_draw.restype = int64
        return lib
    return None


def available() -> bool:
    return os.environ.get(ENGINE_ENV, "auto") != "reference" and library() is not None


_requested_level = 1  # 1: AVX-512 VNNI where the CPU has it, 0: portable C


def instruction_set() -> str:
    """Which kernels run: 'avx512-vnni', 'portable' or 'reference' (no compiled path)."""
    if not available():
        return "reference"
    return "avx512-vnni" if library().intrs_set_isa(_requested_level) else "portable"


def set_instruction_set(name: str) -> str:
    """Ask for 'avx512-vnni' (granted where the CPU has it) or force 'portable' C; for tests and benchmarks."""
    global _requested_level
    if name not in ("avx512-vnni", "portable"):
        raise ValueError(f"unknown instruction set {name!r}")
    _requested_level = int(name == "avx512-vnni")
    return instruction_set()


def table_draw(high: np.ndarray, guide: np.ndarray, guide_bits: int, values: np.ndarray,
               words: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Table-sampler draws for 64-bit ``words`` and the mask of words equal to a threshold's high word
    (see ``intrs.noise.TableSampler``), or None without the compiled kernels."""
    if not available():
        return None
    out = np.empty(words.shape, dtype=np.int32)
    tie = np.empty(words.shape, dtype=np.uint8)
    library().intrs_table_draw(_pointer(high), len(high), _pointer(guide), guide_bits, _pointer(values),
                               _pointer(words), words.size, _pointer(out), _pointer(tie))
    return out, tie.view(bool)


def _pointer(array) -> int:
    return array.data_ptr() if isinstance(array, torch.Tensor) else array.ctypes.data


class _Conv:
    """A convolution's packed weights and requantization constants, for both instruction sets."""

    def __init__(self, layer: ConvLayer, wide_input: bool):
        weight = layer.weight.astype(np.int64)  # (O, C, kh, kw)
        out, cin, kh, kw = weight.shape
        self.layer, self.wide_input = layer, wide_input
        self.cout, self.cin, self.kernel = out, cin, (kh, kw)
        self.cout_pad = -(-out // 16) * 16
        padded = np.zeros((self.cout_pad, cin, kh, kw), dtype=np.int64)
        padded[:out] = weight
        column_sums = padded.sum(axis=(1, 2, 3))
        # (kh, kw, C, O_pad) int32: the direct kernel's rows of output channels
        self.w_wide = np.ascontiguousarray(padded.transpose(2, 3, 1, 0)).astype(np.int32)
        # vpdpbusd blocks: [O_pad / 16][kh][kw][C4 / 4][16 outputs][4 inputs]
        cin4 = -(-cin // 4) * 4
        lifted = np.zeros((self.cout_pad, kh, kw, cin4), dtype=np.int8)
        lifted[:, :, :, :cin] = padded.transpose(0, 2, 3, 1)
        blocks = lifted.reshape(self.cout_pad // 16, 16, kh, kw, cin4 // 4, 4).transpose(0, 2, 3, 4, 1, 5)
        self.w_vnni = np.ascontiguousarray(blocks)
        self.max_abs_column = int(np.abs(padded).sum(axis=(1, 2, 3)).max(initial=0))
        bias = np.zeros(self.cout_pad, dtype=np.int64)
        bias[:out] = layer.bias
        shift = np.zeros(self.cout_pad, dtype=np.int64)
        shift[:out] = layer.shift
        mult = np.zeros(self.cout_pad, dtype=np.int64)
        mult[:out] = layer.multiplier
        left, right = np.maximum(shift, 0), np.maximum(-shift, 0)
        self.arrays = dict(mult=mult, left=left, right=right, half=(np.int64(1) << right) >> 1,
                           offset_wide=bias,  # the direct kernel sums (x - z_in) w itself
                           offset_vnni=bias - (layer.input_zero_point + 128) * column_sums)
        self.q_wide = self._requant("offset_wide")
        self.q_vnni = self._requant("offset_vnni")
        # the lifted dot products stay exact in vpdpbusd's wrapping int32 lanes
        self.vnni_exact = kh * kw * cin4 * 255 * 127 <= _INT32_LIMIT

    def _requant(self, offset: str) -> Requant:
        a, layer = self.arrays, self.layer
        return Requant(_pointer(a[offset]), _pointer(a["mult"]), _pointer(a["left"]), _pointer(a["right"]),
                       _pointer(a["half"]), layer.output_zero_point, layer.act_min, layer.act_max,
                       int(a["left"].any()))

    def __call__(self, lib, x: torch.Tensor) -> torch.Tensor | None:
        n, h, w, c = x.shape
        layer = self.layer
        (sh, sw), (ph, pw), (kh, kw) = layer.stride, layer.padding, self.kernel
        oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        shape = ConvShape(n, h, w, c, self.cout, self.cout_pad, kh, kw, sh, sw, ph, pw, oh, ow,
                          layer.input_zero_point)
        y = torch.empty((n, oh, ow, self.cout), dtype=torch.int8)
        if self.wide_input:
            if x.numel() and max(abs(int(x.max()) - layer.input_zero_point),
                                 abs(int(x.min()) - layer.input_zero_point)) * self.max_abs_column > _INT32_LIMIT:
                return None  # int32 sums might wrap: the reference engine's int64 products decide
            rc = lib.intrs_conv_s32(_pointer(x), ctypes.byref(shape), _pointer(self.w_wide),
                                    ctypes.byref(self.q_wide), _pointer(y))
        else:
            if not self.vnni_exact:
                return None
            rc = lib.intrs_conv_s8(_pointer(x), ctypes.byref(shape), _pointer(self.w_vnni), _pointer(self.w_wide),
                                   ctypes.byref(self.q_vnni), ctypes.byref(self.q_wide), _pointer(y))
        return None if rc else y


class _Add:
    def __init__(self, layer: AddLayer):
        self.params = np.array([layer.input1_zero_point, layer.input2_zero_point, layer.output_zero_point,
                                layer.input1_multiplier, layer.input1_shift, layer.input2_multiplier,
                                layer.input2_shift, layer.output_multiplier, layer.output_shift,
                                layer.act_min, layer.act_max], dtype=np.int64)

    def __call__(self, lib, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor | None:
        if a.shape != b.shape:
            return None  # broadcasting adds take the reference path
        y = torch.empty(a.shape, dtype=torch.int8)
        rc = lib.intrs_add(_pointer(a), _pointer(b), a.numel(), _pointer(self.params), _pointer(y))
        return None if rc else y


class _Pool:
    def __init__(self, layer: PoolLayer):
        self.layer = layer

    def __call__(self, lib, x: torch.Tensor) -> torch.Tensor | None:
        n, h, w, c = x.shape
        layer = self.layer
        if layer.is_global:
            (kh, kw), (sh, sw), (ph, pw) = (h, w), (1, 1), (0, 0)
        else:
            (kh, kw), (sh, sw), (ph, pw) = layer.kernel, layer.stride, layer.padding
        oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        y = torch.empty((n, oh, ow, c), dtype=torch.int8)
        lib.intrs_pool(_pointer(x), n, h, w, c, kh, kw, sh, sw, ph, pw, oh, ow, int(layer.op == "average_pool"),
                       layer.act_min, layer.act_max, _pointer(y))
        return y


class _Flatten:
    def __call__(self, lib, x: torch.Tensor) -> torch.Tensor:
        # the reference flattens NCHW; a 1x1 map is the same either way
        if x.shape[1] * x.shape[2] != 1:
            x = x.permute(0, 3, 1, 2).contiguous()
        return x.reshape(x.shape[0], 1, 1, -1)


class Plan:
    """A model prepared for the kernels: one step per layer, or ``supported = False``."""

    def __init__(self, model: IntegerModel):
        self.model, self.steps, self.supported = model, [], True
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

    def run(self, lib, z: torch.Tensor) -> torch.Tensor | None:
        """int8 logits (N, classes) of an NCHW integer batch, or None where the reference must decide."""
        values = {self.model.input_name: z.to(torch.int32).permute(0, 2, 3, 1).contiguous()}
        for layer, step in zip(self.model.layers, self.steps):
            out = step(lib, *[values[name] for name in layer.inputs])
            if out is None:
                return None
            values[layer.output] = out
        out = values[self.model.output_name]
        return out.reshape(out.shape[0], -1) if out.shape[1] * out.shape[2] == 1 else out.permute(0, 3, 1, 2)


_pool: ThreadPoolExecutor | None = None


def _plan(model: IntegerModel) -> Plan:
    plan = model.__dict__.get("_kernels_plan")
    if plan is None:
        plan = Plan(model)
        model.__dict__["_kernels_plan"] = plan  # not a dataclass field: never saved nor compared
    return plan


def forward(model: IntegerModel, z: torch.Tensor) -> torch.Tensor | None:
    """The compiled forward pass of a checked input batch, or None where the reference engine must run it."""
    global _pool
    if not available():
        return None
    lib = library()
    lib.intrs_set_isa(_requested_level)
    plan = _plan(model)
    if not plan.supported:
        return None
    threads = max(1, min(torch.get_num_threads(), len(z) // _MIN_CHUNK))
    if threads == 1:
        return plan.run(lib, z)
    if _pool is None or _pool._max_workers < threads:
        _pool = ThreadPoolExecutor(threads, thread_name_prefix="intrs-kernels")
    chunks = list(_pool.map(lambda part: plan.run(lib, part), torch.tensor_split(z, threads)))
    return None if any(c is None for c in chunks) else torch.cat(chunks)
