"""intrs bench runs every contender and reports ratios (speed itself is measured by the benchmark, not here)."""

import json

from test_cli import assert_one_line_error, run_cli


def test_bench_reports_every_contender(capsys, tmp_path, monkeypatch):
    import intrs.bench as bench

    monkeypatch.setattr(bench, "bench_noise", lambda: {"discrete": 1.0, "numpy": 2.0})
    out = tmp_path / "b.json"
    code, stdout, _ = run_cli(capsys, "bench", "--inputs", "1x8x8", "--batches", "50", "--samples", 100,
                              "--repeats", 1, "--out", out)
    data = json.loads(out.read_text())
    names = {r["contender"] for r in data["certification"]}
    assert code == 0 and {"FloatRS-fp (PyTorch float32)", bench.INTRS_REFERENCE} <= names
    assert (bench.INTRS_COMPILED in names) == (data["settings"]["intrs_kernels"] != "reference")
    float_row = next(r for r in data["certification"] if r["contender"] == bench.FLOAT_PYTORCH)
    assert float_row["ratio_to_float"] == 1.0 and all(r["samples_per_second"] > 0 for r in data["certification"])
    # onnxruntime (a test dependency) is the second float yardstick; ratios are also against the faster one
    floats = [r for r in data["certification"] if r["contender"] in bench.FLOATS]
    assert {r["contender"] for r in floats} == set(bench.FLOATS)
    assert max(r["ratio_to_fastest_float"] for r in floats) == 1.0
    fastest = max(r["samples_per_second"] for r in floats)
    assert all(abs(r["ratio_to_fastest_float"] - r["samples_per_second"] / fastest) < 1e-9
               for r in data["certification"])
    assert all(r["noise_share"] > 0 for r in data["certification"])
    assert "| contender |" in stdout


def test_bench_rejects_bad_flags(capsys):
    code, _, err = run_cli(capsys, "bench", "--inputs", "32x32")
    assert_one_line_error(code, err, "CxHxW")


def test_bench_reads_its_ratios_against_the_cpus_ceiling(capsys, tmp_path, monkeypatch):
    """Issue 14: the peak loops' rates, the ceiling ratio per instruction set, and each IntRS row's fraction of
    it, consistent with each other (the rates themselves depend on the machine and are not asserted)."""
    import intrs.bench as bench
    from intrs import kernels

    if not kernels.available() or not kernels.peak_rates(rounds=1000, pieces=1):
        import pytest

        pytest.skip("no compiled kernels or no peak loops for this CPU")
    monkeypatch.setattr(bench, "bench_noise", lambda: {"discrete": 1.0})
    fast = kernels.peak_rates(rounds=20_000, pieces=1)
    # the bench names csrc/peak.c's loops: each loop of an instruction set this CPU has is measured under it
    assert bench.FP32_AVX2 in fast
    assert all(loop in fast for isa, loop in bench.KERNEL_PEAKS.items() if isa in kernels.instruction_sets())
    monkeypatch.setattr(bench.kernels, "peak_rates", lambda: fast)
    out = tmp_path / "b.json"
    code, stdout, _ = run_cli(capsys, "bench", "--inputs", "1x8x8", "--batches", "50", "--samples", 100,
                              "--repeats", 1, "--out", out)
    data = json.loads(out.read_text())
    limits = data["settings"]["ceiling"]
    assert code == 0 and "ceiling ratio" in stdout and limits["fp32"]["loop"] in fast
    for isa, loop in limits["int8"].items():
        assert abs(loop["ratio"] - fast[loop["loop"]] / limits["fp32"]["gmacs"]) < 1e-9
    rows = [r for r in data["certification"] if r["contender"] == bench.INTRS_COMPILED]
    assert rows and all(r["of_ceiling"] is not None for r in rows)
    isa = kernels.instruction_set()
    against = "ratio_to_float" if limits["restriction"] else "ratio_to_fastest_float"
    assert all(abs(r["of_ceiling"] - r[against] / limits["int8"][isa]["ratio"]) < 1e-9 for r in rows)
    assert all(r["of_ceiling"] is None for r in data["certification"] if r["contender"] in bench.FLOATS)


def test_pytorch_restricted_to_avx2_is_read_against_avx2_fma(monkeypatch):
    import intrs.bench as bench

    rates = {bench.FP32_WIDE: 100.0, bench.FP32_AVX2: 50.0, "vpmaddwd int16 pairs (AVX2)": 60.0}
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert bench.ceiling(rates)["fp32"]["loop"] == bench.FP32_WIDE and bench.float_restriction() is None
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    assert bench.ceiling(rates)["fp32"]["loop"] == bench.FP32_AVX2
    assert bench.float_restriction() == "ATEN_CPU_CAPABILITY=avx2"
