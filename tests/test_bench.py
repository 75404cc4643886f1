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
