"""Where one thread's time goes in a network program: microseconds per image of every op of ResNet-20 (random
weights, calibrated on random pixels: ``intrs.bench.calibrated_resnet20``) on one instruction set, and each
convolution's multiply-accumulate rate, to hold against ``benchmarks/peak.sh`` (docs/speed.md).

The kernels carry no timers: an op's time is the difference between the same program stopped after it and
stopped before it (the header's op count cut), each cut timed in interleaved rounds and the best round kept,
since these machines are shared and single runs differ by 10-30%. A cut's output slot is whatever that op left,
so nothing is checked here: tests/test_kernels.py holds the kernels to the reference engine. A difference of
two noisy totals is noisier than either: on the slower instruction sets (a whole image takes 0.5-1 ms) single
ops can come out negative with 12 rounds; raise --rounds, or read the shares of groups of ops.

Usage: scripts/env .venv/bin/python benchmarks/op_times.py [--isa avx512-vnni] [--shape 3x32x32] [--images 200]
       [--rounds 15] [--noisy]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from intrs import kernels
from intrs.bench import calibrated_resnet20
from intrs.noise import DiscreteGaussianNoise

KINDS = {kernels.OP_CONV_S8: "conv int8", kernels.OP_CONV_S32: "conv (first)", kernels.OP_ADD: "add",
         kernels.OP_POOL: "pool", kernels.OP_FLATTEN: "flatten"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--isa", default=None, help="instruction set (default: the best this CPU has)")
    parser.add_argument("--shape", default="3x32x32", help="input CxHxW")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--noisy", action="store_true", help="time noisy inputs (sigma 0.25) instead of pixels")
    args = parser.parse_args()
    torch.set_num_threads(1)
    shape = tuple(int(v) for v in args.shape.split("x"))
    isa = kernels.instruction_set(args.isa)
    _, integer = calibrated_resnet20(shape)
    pixels = torch.randint(0, 256, (args.images, *shape), dtype=torch.int32)
    if args.noisy:
        noise = DiscreteGaussianNoise(0.25)
        pixels = noise.perturb(pixels[0], args.images, noise.generator(1))
    plan = kernels._plan(integer)
    if kernels.forward(integer, pixels, isa) is None:
        raise SystemExit("the kernels do not run this model: nothing to time")
    program = plan.program(shape[1:] + shape[:1], int(pixels.min()), int(pixels.max()), isa)
    lib = kernels.library()
    x = torch.from_numpy(np.ascontiguousarray(pixels.numpy().transpose(0, 2, 3, 1)))
    count = program.header.count
    best = [float("inf")] * (count + 1)
    try:
        for _ in range(args.rounds):
            for cut in range(count + 1):
                program.header.count = cut
                start = time.perf_counter()
                program(lib, x)
                best[cut] = min(best[cut], time.perf_counter() - start)
    finally:
        program.header.count = count
    micros = [b / args.images * 1e6 for b in best]
    total = micros[count] - micros[0]
    print(f"{isa}, {args.shape}, one thread, {args.images} images, best of {args.rounds} interleaved rounds: "
          f"{micros[count]:.1f} us per image ({1e6 / micros[count]:,.0f} images/s)\n")
    print("| op | kind | shape | us / image | share | GMAC/s |")
    print("|---|---|---|---|---|---|")
    for i in range(count):
        op, spent = program.ops[i], micros[i + 1] - micros[i]
        s = op.shape
        conv = op.kind in (kernels.OP_CONV_S8, kernels.OP_CONV_S32)
        described = (f"{s.cin}->{s.cout} {s.h}x{s.w} k{s.kh} s{s.sh}" if conv else f"{op.to.h}x{op.to.w}x{op.to.c}")
        rate = f"{s.oh * s.ow * s.cout * s.cin * s.kh * s.kw / spent / 1e3:.0f}" if conv and spent > 0 else "-"
        print(f"| {i} | {KINDS[op.kind]} | {described} | {spent:.2f} | {spent / total:.0%} | {rate} |")


if __name__ == "__main__":
    main()
