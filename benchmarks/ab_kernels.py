"""A/B of two builds of the compiled kernels in one process: the same ResNet-20 program run through each,
alternating, the best time of each kept (separate runs on shared machines differ by 10-20%, more than the
effects worth measuring). Both builds must share the ABI of the installed intrs (its ctypes structs).

    cc -O3 -std=c11 -shared -fPIC -o /tmp/a.so <old _kernels.c>
    cc -O3 -std=c11 -shared -fPIC -o /tmp/b.so src/intrs/_kernels.c
    scripts/env .venv/bin/python benchmarks/ab_kernels.py /tmp/a.so /tmp/b.so 1x28x28 [rounds]
"""

import ctypes
import sys
import time

import torch

from intrs import kernels
from intrs.bench import calibrated_resnet20


def main(first: str, second: str, shape_text: str, rounds: int = 30) -> None:
    libraries = [ctypes.CDLL(path) for path in (first, second)]
    for library in libraries:
        library.intrs_run.argtypes = kernels.library().intrs_run.argtypes
    shape = tuple(int(v) for v in shape_text.split("x"))
    _, model = calibrated_resnet20(shape)
    noisy = (torch.randint(0, 256, (200, *shape)) + torch.randint(-60, 61, (200, *shape))).to(torch.int32)
    images = noisy.permute(0, 2, 3, 1).contiguous()
    program = kernels.Plan(model).program(tuple(images.shape[1:]), int(noisy.min()), int(noisy.max()),
                                          "avx512-vnni")
    outputs = [program(library, images) for library in libraries]
    assert torch.equal(outputs[0], outputs[1]), "the two builds disagree"
    best = [float("inf")] * 2
    for _ in range(rounds):
        for k, library in enumerate(libraries):
            start = time.perf_counter()
            program(library, images)
            best[k] = min(best[k], time.perf_counter() - start)
    print(f"{shape_text}, one thread, 200 images: A {best[0] * 1e3:.1f} ms, B {best[1] * 1e3:.1f} ms, "
          f"B/A {best[1] / best[0]:.3f}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], *(int(v) for v in sys.argv[4:5]))
