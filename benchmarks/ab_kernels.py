"""A/B of the compiled kernels of two source trees: the same integer ResNet-20 (one model file, made by this
tree's intrs and read by each tree's own) on the same noisy images, timed on one thread through each tree's
own kernels library, in processes that alternate A, B, A, B, ..., the best time of each kept (separate runs
on shared machines differ by 10-20%, more than the effects worth measuring). The trees may differ in their
kernels' ABI: each process imports only its own tree.

    git worktree add /tmp/old <commit>          # A: its kernels built in place, e.g.
    (cd /tmp/old && .venv/bin/python setup.py build_ext --inplace)   # (or its own build command)
    scripts/env .venv/bin/python benchmarks/ab_kernels.py /tmp/old/src src 1x28x28 [rounds] [instruction set]
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

# run in each tree's process: the best of `repeats` runs of one program over 200 noisy images, in ms
_TIMING = """
import sys, time, torch
import intrs
assert intrs.__file__.startswith(sys.argv[1]), intrs.__file__
from intrs import kernels
from intrs.intmodel import load_integer_model
torch.set_num_threads(1)
model = load_integer_model(sys.argv[5])
shape = tuple(model.input_shape)
generator = torch.Generator().manual_seed(0)
noisy = (torch.randint(0, 256, (200, *shape), generator=generator)
         + torch.randint(-60, 61, (200, *shape), generator=generator)).to(torch.int32)
images = noisy.permute(0, 2, 3, 1).contiguous()
program = kernels.Plan(model).program(tuple(images.shape[1:]), int(noisy.min()), int(noisy.max()), sys.argv[3])
library = kernels.library()
out = program(library, images)
best = float("inf")
for _ in range(int(sys.argv[4])):
    start = time.perf_counter()
    program(library, images)
    best = min(best, time.perf_counter() - start)
print(best * 1e3, int(out.to(torch.int64).sum()), int((out.to(torch.int64) * torch.arange(out.numel()).reshape(out.shape)).sum()))
"""


def main(first: str, second: str, shape: str, rounds: int = 6, instruction_set: str = "avx512-vnni") -> None:
    from intrs.bench import calibrated_resnet20
    from intrs.intmodel import save_integer_model

    trees = [str(Path(tree).resolve()) for tree in (first, second)]
    best, checks = [float("inf")] * 2, [None, None]
    model_file = Path(tempfile.mkdtemp()) / "resnet20.npz"
    save_integer_model(calibrated_resnet20(tuple(int(v) for v in shape.split("x")))[1], model_file)
    for _ in range(rounds):
        for k, tree in enumerate(trees):
            run = subprocess.run([sys.executable, "-c", _TIMING, tree, shape, instruction_set, "10", str(model_file)],
                                 env={**os.environ, "PYTHONPATH": tree}, capture_output=True, text=True)
            if run.returncode:
                sys.exit(f"{tree}: {run.stderr.strip().splitlines()[-1]}")
            ms, *check = run.stdout.split()
            best[k], checks[k] = min(best[k], float(ms)), check
    assert checks[0] == checks[1], "the two trees' kernels disagree on the logits"
    print(f"{shape}, {instruction_set}, one thread, 200 images: A {best[0]:.1f} ms, B {best[1]:.1f} ms, "
          f"B/A {best[1] / best[0]:.3f}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], *(int(v) for v in sys.argv[4:5]), *sys.argv[5:6])
