"""The benchmark tools under benchmarks/ still run (nothing else calls them: layer_rate.c went stale once when the
kernels' entry points changed; tests/test_kernels.py builds it with the kernels' objects). Their figures are not
checked here; speed lives in the benchmarks."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from intrs import kernels

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}

needs_kernels = pytest.mark.skipif(not kernels.available(), reason="the compiled kernels were not built here")


@needs_kernels
def test_op_times_lists_every_op_of_the_program():
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "op_times.py"), "--shape", "1x28x28",
                          "--images", "4", "--rounds", "1"], env=ENV, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    rows = [line for line in run.stdout.splitlines() if re.match(r"\| \d+ \|", line)]
    assert len(rows) > 20 and rows[0].split("|")[2].strip() == "conv (first)"  # ResNet-20: 33 ops
    assert kernels.instruction_set() in run.stdout.splitlines()[0]


@needs_kernels
def test_ab_kernels_times_a_tree_against_itself_and_checks_the_logits_agree():
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ab_kernels.py"), str(ROOT / "src"),
                          str(ROOT / "src"), "1x28x28", "1", kernels.instruction_set()], env=ENV, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert re.search(r"A [\d.]+ ms, B [\d.]+ ms, B/A [\d.]+$", run.stdout.strip())
