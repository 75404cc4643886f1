"""Throughput of the certification loop (noise + forward pass + vote counting), system against system.

Every contender certifies the same image with the same number of samples, in
one process, interleaved and repeated, so that the ratios are measured in one
run on the same (shared, noisy) machine. Models are ResNet-20s with random
weights, calibrated for quantization: speed does not depend on what was learned.

With a ``device`` (a GPU) FloatRS-fp (PyTorch float32, its Gaussian noise drawn there) and IntRS
(``intrs.torch_engine``, the table searched there, the random words the CPU's) are timed on it as well,
beside the CPU contenders; each row's ratios are against the float contenders of its own device.
"""

from __future__ import annotations

import copy
import json
import os
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from . import engine, kernels
from .models import ModelConfig, build_model
from .noise import DiscreteGaussianNoise, GaussianNoise
from .quant import prepare
from .smoothing import SmoothedClassifier, TorchClassifier
from .systems import IntegerClassifier
from .tables import markdown_table


@dataclass
class Measurement:
    contender: str
    input_shape: tuple[int, int, int]
    batch: int
    samples_per_second: float
    ratio_to_float: float  # against PyTorch float32 on the same device
    ratio_to_fastest_float: float  # against the fastest float32 contender of the same shape, batch and device
    peak_rss_mib: float  # the process's peak resident memory so far (cumulative across contenders)
    noise_share: float  # the fraction of the loop's time spent drawing noise
    device: str = "cpu"  # where the contender's forward pass runs
    # IntRS on the kernels: its ratio to the float contender running the ceiling's FMA (the fastest float; PyTorch
    # fp32 when PyTorch is restricted to AVX2) over the ceiling ratio; above 1 where that float runs below its peak
    of_ceiling: float | None = None


class OnnxClassifier:
    """onnxruntime on the QDQ export of the integer model (requantizes in float): a reference runtime."""

    def __init__(self, model):
        import onnxruntime

        from .onnx_export import export_onnx

        options = onnxruntime.SessionOptions()
        self.session = onnxruntime.InferenceSession(export_onnx(model), options, providers=["CPUExecutionProvider"])
        self.name = self.session.get_inputs()[0].name

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        logits = self.session.run(None, {self.name: batch.numpy().astype(np.int16)})[0]
        return torch.from_numpy(logits.argmax(1))


class OnnxFloatClassifier:
    """onnxruntime on the float model exported to ONNX (fp32): the other float yardstick, often faster than
    PyTorch's own CPU kernels."""

    def __init__(self, model: torch.nn.Module, shape: tuple[int, int, int]):
        import io
        import warnings

        import onnxruntime

        buffer = io.BytesIO()
        with warnings.catch_warnings():  # the TorchScript exporter is deprecated upstream; it needs no onnxscript
            warnings.simplefilter("ignore")
            torch.onnx.export(copy.deepcopy(model).eval(), torch.rand(1, *shape), buffer, input_names=["x"],
                              output_names=["logits"], dynamic_axes={"x": {0: "n"}}, dynamo=False)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        self.session = onnxruntime.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {"x": batch.numpy()})[0].argmax(1))


class ReferenceEngineClassifier:
    """The reference engine (PyTorch integer ops), without the compiled kernels: what they replace."""

    def __init__(self, model):
        self.model = model

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return engine.argmax_lowest(engine.reference_forward(self.model, batch))


def pytorch_int8(model: torch.nn.Module, shape: tuple[int, int, int]) -> TorchClassifier:
    """PyTorch's own int8 model (FX post-training quantization, x86 backend): fast, but it requantizes with
    float multipliers, so it is not an integer-only function. A reference runtime for speed only."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    example = torch.rand(8, *shape)
    prepared = prepare_fx(copy.deepcopy(model).eval(), get_default_qconfig_mapping("x86"), (example,))
    with torch.no_grad():
        prepared(torch.rand(64, *shape))
    classifier = TorchClassifier.__new__(TorchClassifier)
    classifier.model = convert_fx(prepared).eval()
    return classifier


FLOAT_PYTORCH = "FloatRS-fp (PyTorch float32)"
FLOAT_ONNX = "FloatRS-fp (onnxruntime float32)"
FLOATS = (FLOAT_PYTORCH, FLOAT_ONNX)
INTRS_COMPILED = "IntRS (intrs compiled kernels)"
INTRS_AVX2 = "IntRS (intrs compiled kernels, AVX2 only)"
INTRS_AVX_VNNI = "IntRS (intrs compiled kernels, AVX-VNNI only)"
INTRS_NEON_DOTPROD = "IntRS (intrs compiled kernels, NEON sdot only)"
# the instruction sets timed beside the best one, for the CPUs that have only them
FALLBACKS = {"avx2": INTRS_AVX2, "avx-vnni": INTRS_AVX_VNNI, "neon-dotprod": INTRS_NEON_DOTPROD}
INTRS_REFERENCE = "IntRS (intrs reference engine)"


def float_on(device: torch.device) -> str:
    return f"FloatRS-fp (PyTorch float32, {device.type})"


def intrs_on(device: torch.device) -> str:
    return f"IntRS (intrs torch engine, {device.type})"


def calibrated_resnet20(shape: tuple[int, int, int], seed: int = 0):
    """A ResNet-20 with random weights and its integer model, calibrated on random pixels: what a speed
    measurement and the kernel-exactness tests need (neither depends on what was learned; tests/conftest.py
    hands it to the tests as a fixture). Seeds torch's global generator."""
    torch.manual_seed(seed)
    channels = shape[0]
    model = build_model(ModelConfig("resnet20", channels, 10, (0.5,) * channels, (0.25,) * channels)).eval()
    quantizer = prepare(model, shape)
    with torch.no_grad():
        quantizer(torch.randint(0, 256, (64, *shape)).float())
    return model, quantizer.to_integer_model()


def _contenders(shape: tuple[int, int, int], seed: int, device: torch.device | None = None) -> dict:
    model, integer = calibrated_resnet20(shape, seed)
    contenders = {}
    if device is not None and device.type != "cpu":
        from .torch_engine import TorchIntegerClassifier

        # a copy: moving a module to a device moves it in place, and the CPU contenders below keep theirs
        contenders[float_on(device)] = (TorchClassifier(copy.deepcopy(model), device), GaussianNoise(0.25, device))
        contenders[intrs_on(device)] = (TorchIntegerClassifier(integer, device), DiscreteGaussianNoise(0.25, device))
    contenders[FLOAT_PYTORCH] = (TorchClassifier(model), GaussianNoise(0.25))
    try:
        contenders[FLOAT_ONNX] = (OnnxFloatClassifier(model, shape), GaussianNoise(0.25))
    except Exception:  # onnx and onnxruntime are optional: the benchmark runs without them
        pass
    if kernels.available():
        contenders[INTRS_COMPILED] = (IntegerClassifier(integer), DiscreteGaussianNoise(0.25))
        for isa, name in FALLBACKS.items():
            if kernels.instruction_set() != isa and isa in kernels.instruction_sets():
                contenders[name] = (IntegerClassifier(integer, isa), DiscreteGaussianNoise(0.25))
    contenders[INTRS_REFERENCE] = (ReferenceEngineClassifier(integer), DiscreteGaussianNoise(0.25))
    try:
        contenders["PyTorch int8 x86 (float requant)"] = (pytorch_int8(model, shape), GaussianNoise(0.25))
    except Exception:  # torch.ao's quantization is optional here (deprecated upstream): the benchmark goes on
        pass
    try:
        contenders["onnxruntime int8 QDQ (float requant)"] = (OnnxClassifier(integer), DiscreteGaussianNoise(0.25))
    except Exception:  # onnxruntime is optional: the benchmark runs without it
        pass
    return contenders


# The peak loop (csrc/peak.c) each instruction set's convolutions run, and the float contenders' FMA.
KERNEL_PEAKS = {"avx2": "vpmaddwd int16 pairs (AVX2)", "avx-vnni": "vpdpbusd u8 x s8 (AVX-VNNI, ymm)",
                "avx512-vnni": "vpdpbusd u8 x s8 (AVX-512 VNNI)", "neon-dotprod": "sdot s8 x s8 (NEON DotProd)",
                "neon-i8mm": "smmla s8 x s8 (NEON I8MM)"}
# where an instruction set's kernels multiply less than a direct convolution, so a row may pass its loop's ratio
FEWER_MULTIPLIES = {"avx2": "its 3x3 stride-1 layers run as integer Winograd F(2x2, 3x3), 2.25x fewer multiplies "
                            "(csrc/avx2.c): rows above 100% are the algorithm, not a faster loop"}
FP32_WIDE, FP32_AVX2, FP32_NEON = "fp32 FMA (AVX-512)", "fp32 FMA (AVX2)", "fp32 FMLA (NEON)"
# what restricts PyTorch's float instruction set: ATen's kernels, and the convolutions' oneDNN
FLOAT_ISA_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")


def float_restriction() -> str | None:
    """The environment's limit on PyTorch's float instruction set (``FLOAT_ISA_ENV``), said as the bench
    prints it, or None."""
    said = [f"{name}={os.environ[name]}" for name in FLOAT_ISA_ENV if os.environ.get(name)]
    return ", ".join(said) or None


def ceiling(rates: dict[str, float] | None = None) -> dict:
    """The ceiling of this CPU for IntRS against float, from one core's peak rates (``kernels.peak_rates``):
    the float contenders' FMA (AVX-512 where the CPU has it, unless PyTorch is restricted to AVX2) and, per
    instruction set the kernels can run here, its convolution loop's rate and the ratio of the two. That
    ratio bounds what a whole network can reach against a float runtime that uses its FMA as well."""
    rates = kernels.peak_rates() if rates is None else rates
    restricted = any(os.environ.get(name, "").lower().startswith("avx2") for name in FLOAT_ISA_ENV)
    fp32 = FP32_AVX2 if restricted or FP32_WIDE not in rates else FP32_WIDE
    fp32 = FP32_NEON if FP32_NEON in rates else fp32  # aarch64: NEON's FMLA is the float contenders' FMA
    if fp32 not in rates:
        return {}
    return {"fp32": {"loop": fp32, "gmacs": rates[fp32]}, "restriction": float_restriction(),
            "int8": {isa: {"loop": loop, "gmacs": rates[loop], "ratio": rates[loop] / rates[fp32]}
                     for isa, loop in KERNEL_PEAKS.items() if loop in rates and isa in kernels.instruction_sets()},
            "peaks": rates}


def _kernel_isa(name: str) -> str | None:
    """The instruction set a contender's integer kernels run, or None for the others."""
    return {INTRS_COMPILED: kernels.instruction_set(), **{label: isa for isa, label in FALLBACKS.items()}}.get(name)


def _time_loop(base, noise, pixels: torch.Tensor, samples: int, batch: int) -> float:
    smoothed = SmoothedClassifier(base, noise, 10, batch)
    start = time.perf_counter()
    counts = smoothed.sample_counts(pixels, samples, 12345)
    elapsed = time.perf_counter() - start
    assert counts.sum() == samples
    return samples / elapsed


def _time_noise(noise, pixels: torch.Tensor, samples: int, batch: int) -> float:
    generator = noise.generator(12345)
    start = time.perf_counter()
    for first in range(0, samples, batch):
        drawn = noise.perturb(pixels, min(batch, samples - first), generator)
    if drawn.device.type == "cuda":
        torch.cuda.synchronize(drawn.device)  # a GPU draws asynchronously: time the draws, not their launch
    return samples / (time.perf_counter() - start)


def bench_certification(shapes=((3, 32, 32), (1, 28, 28)), batches=(100, 400, 1000), samples: int = 2000,
                        repeats: int = 3, seed: int = 0, progress=None,
                        device: torch.device | None = None, limits: dict | None = None) -> list[Measurement]:
    """samples/s of each contender's certification loop; the best of ``repeats`` interleaved rounds
    (``device``: also FloatRS-fp and IntRS there). With ``limits`` (``ceiling()``), each IntRS row on the
    kernels also says what fraction of the CPU's ceiling ratio it reaches."""
    results = []
    per_isa = (limits or {}).get("int8", {})
    for shape in shapes:
        contenders = _contenders(shape, seed, device)
        pixels = torch.randint(0, 256, shape, dtype=torch.uint8)
        for batch in batches:
            best = {name: 0.0 for name in contenders}
            noise_rate = {name: 0.0 for name in contenders}
            peak = {}
            for _ in range(repeats):
                for name, (base, noise) in contenders.items():
                    best[name] = max(best[name], _time_loop(base, noise, pixels, samples, batch))
                    noise_rate[name] = max(noise_rate[name], _time_noise(noise, pixels, samples, batch))
                    peak[name] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            for name, rate in best.items():
                on = device.type if device is not None and name in (float_on(device), intrs_on(device)) else "cpu"
                floats = (float_on(device),) if on != "cpu" else FLOATS
                reference = best[floats[0]]
                fastest = max(rate for other, rate in best.items() if other in floats)
                isa = _kernel_isa(name) if on == "cpu" else None
                # under a restriction only PyTorch runs at the ceiling's AVX2 FMA (onnxruntime's MLAS picks its
                # own instructions): the row is then read against PyTorch's rate, else against the fastest float's
                against = reference if (limits or {}).get("restriction") else fastest
                share = rate / against / per_isa[isa]["ratio"] if isa in per_isa else None
                results.append(Measurement(name, shape, batch, rate, rate / reference, rate / fastest, peak[name],
                                           rate / noise_rate[name], on, share))
                if progress:
                    progress(results[-1])
    return results


def bench_noise(count: int = 4_000_000, repeats: int = 3) -> dict:
    """Draws per second: the discrete Gaussian table sampler against numpy's and torch's normal."""
    noise = DiscreteGaussianNoise(0.25)
    generator = noise.generator(1)
    normal = np.random.default_rng(1)
    torch_generator = torch.Generator().manual_seed(1)
    rates = {"discrete Gaussian (128-bit table, integer bits)": 0.0, "numpy standard_normal (float64)": 0.0,
             "torch.randn (float32)": 0.0}
    for _ in range(repeats):
        for name, draw in ((list(rates)[0], lambda: noise.draw((count,), generator)),
                           (list(rates)[1], lambda: normal.standard_normal(count)),
                           (list(rates)[2], lambda: torch.randn(count, generator=torch_generator))):
            start = time.perf_counter()
            draw()
            rates[name] = max(rates[name], count / (time.perf_counter() - start))
    return rates


def format_table(results: list[Measurement], noise: dict) -> str:
    header = ["contender", "device", "input", "batch", "samples/s", "vs PyTorch fp32", "vs fastest fp32",
              "of ceiling", "noise share", "peak RSS MiB"]
    rows = [[r.contender, r.device, "x".join(map(str, r.input_shape)), r.batch, f"{r.samples_per_second:,.0f}",
             f"{r.ratio_to_float:.2f}", f"{r.ratio_to_fastest_float:.2f}",
             f"{r.of_ceiling:.0%}" if r.of_ceiling is not None else "-", f"{r.noise_share:.0%}",
             f"{r.peak_rss_mib:,.0f}"] for r in results]
    return (markdown_table(header, rows) + "\n"
            + markdown_table(["noise sampler", "draws/s"], [[name, f"{rate:,.0f}"] for name, rate in noise.items()]))


def describe_ceiling(limits: dict) -> str:
    """The ceiling as one paragraph of the bench's output."""
    if not limits:
        return "ceiling: not measured (no compiled kernels, or no x86 peak loops for this CPU)\n"
    fp32 = limits["fp32"]
    lines = [f"ceiling (one core, peak loops of csrc/peak.c, measured in this run): float contenders' "
             f"{fp32['loop']} {fp32['gmacs']:.1f} GMAC/s"
             + (f" (PyTorch restricted: {limits['restriction']})" if limits.get("restriction") else "")]
    for isa, loop in limits["int8"].items():
        lines.append(f"  IntRS {isa}: {loop['loop']} {loop['gmacs']:.1f} GMAC/s, ceiling ratio {loop['ratio']:.2f}x"
                     + (f"; {FEWER_MULTIPLIES[isa]}" if isa in FEWER_MULTIPLIES else ""))
    lines.append("  'of ceiling': an IntRS row's ratio to " + ("PyTorch fp32 (restricted; onnxruntime is not)"
                 if limits.get("restriction") else "the fastest float contender") + " over its ceiling ratio")
    return "\n".join(lines) + "\n"


def machine(device: torch.device | None = None) -> dict:
    """What the numbers were measured on: threads, the integer kernels' instruction set, the CPU (and the GPU)."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown") if Path("/proc/cpuinfo").exists() else "unknown"
    where = {"threads": torch.get_num_threads(), "intrs_kernels": kernels.instruction_set(), "cpu": cpu,
             "torch": torch.__version__}
    if device is not None and device.type == "cuda":
        where["gpu"] = torch.cuda.get_device_name(device)
    return where


def write_json(path: str | Path, results: list[Measurement], noise: dict, settings: dict) -> None:
    Path(path).write_text(json.dumps({"settings": settings, "certification": [asdict(r) for r in results],
                                      "noise": noise}, indent=2) + "\n")
