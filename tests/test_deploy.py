"""Export to TFLite and ONNX, verified against the engine by independent runtimes; the device table."""

import re

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")
pytest.importorskip("onnxruntime")

from intrs.certificate import certifying_from, radius_table  # noqa: E402
from intrs.confidence import clopper_pearson_lower  # noqa: E402
from intrs.intmodel import load_integer_model  # noqa: E402

from test_cli import assert_one_line_error, run_cli  # noqa: E402


def test_tflite_round_trip_is_bit_exact_under_the_reference_kernels(capsys, tmp_path, digits_int_models):
    out = tmp_path / "m.tflite"
    code, stdout, _ = run_cli(capsys, "export", digits_int_models["qat"], "--format", "tflite", "--saturate",
                              "--table-n", 500, "--out", out)
    assert code == 0 and out.exists() and (tmp_path / "m.intrs.npz").exists() and (tmp_path / "m.radius.h").exists()
    assert load_integer_model(tmp_path / "m.intrs.npz").input_saturation == (0, 255)
    code, stdout, _ = run_cli(capsys, "verify-export", out, tmp_path / "m.intrs.npz", "--inputs", 300)
    assert code == 0, stdout
    row = next(line for line in stdout.splitlines() if line.startswith("| LiteRT reference"))
    assert "| 0 of 3000 |" in row and "1.000000" in row


def test_tflite_needs_an_int8_input(capsys, tmp_path, digits_int_models):
    code, _, err = run_cli(capsys, "export", digits_int_models["qat"], "--format", "tflite", "--out",
                           tmp_path / "m.tflite")
    assert_one_line_error(code, err, "does not fit int8", "--saturate")


def test_onnx_export_agreement_is_reported(capsys, tmp_path, digits_int_models):
    out = tmp_path / "m.onnx"
    assert run_cli(capsys, "export", digits_int_models["qat"], "--format", "onnx", "--table-n", 0, "--out", out)[0] == 0
    code, stdout, _ = run_cli(capsys, "verify-export", out, digits_int_models["qat"], "--inputs", 200)
    row = next(line for line in stdout.splitlines() if line.startswith("| onnxruntime"))
    predictions = float(row.split("|")[4])
    assert code == 0 and predictions >= 0.9


def test_verify_export_rejects_corrupt_and_mismatched_files(capsys, tmp_path, digits_int_models):
    other = tmp_path / "ptq.tflite"
    run_cli(capsys, "export", digits_int_models["ptq"], "--format", "tflite", "--saturate", "--table-n", 0,
            "--out", other)
    run_cli(capsys, "export", digits_int_models["qat"], "--format", "tflite", "--saturate", "--table-n", 0,
            "--out", tmp_path / "qat.tflite")
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\x00" * 64)
    code, _, err = run_cli(capsys, "verify-export", bad, tmp_path / "qat.intrs.npz", "--inputs", 10)
    assert_one_line_error(code, err, "LiteRT cannot run")
    # the file export --saturate wrote beside it is what the .tflite computes: the error names it
    code, _, err = run_cli(capsys, "verify-export", tmp_path / "qat.tflite", digits_int_models["qat"], "--inputs", 10)
    assert_one_line_error(code, err, "qat.intrs.npz")
    code, stdout, err = run_cli(capsys, "verify-export", other, tmp_path / "qat.intrs.npz", "--inputs", 100)
    assert code == 1 and "does not compute the certified integers" in stdout
    assert stdout.strip().splitlines()[-1].startswith("FAIL")
    code, _, err = run_cli(capsys, "verify-export", tmp_path / "missing.onnx", digits_int_models["qat"])
    assert_one_line_error(code, err, "missing.onnx not found")


def test_radius_table_header_holds_the_table(capsys, tmp_path):
    out = tmp_path / "t.h"
    code, _, _ = run_cli(capsys, "radius-table", "--n", 1000, "--alpha", 0.001, "--sigma", 0.25, "--out", out)
    text = out.read_text()
    body = text[text.index("{") + 1:text.index("}")]
    values = np.array([int(v) for v in re.findall(r"-?\d+", body)])
    first = int(re.search(r"#define INTRS_CERTIFY_FROM (\d+)", text).group(1))
    table = radius_table(1000, 0.001, 0.25, 16)
    assert code == 0 and "#define INTRS_N 1000" in text
    # only the certifying counts are stored; the table below them is all abstentions
    assert first == certifying_from(1000, 0.001) and not table[:first].any()
    assert np.array_equal(values, table[first:]) and len(values) < len(table) / 2
    assert np.array_equal(np.load(tmp_path / "t.npy"), table)
    assert clopper_pearson_lower(first, 1000, 0.001) > 0.5 >= clopper_pearson_lower(first - 1, 1000, 0.001)


def test_a_missing_optional_package_is_one_line_naming_its_extra(capsys, tmp_path, digits_int_models, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnx", None)  # what an install without intrs[export] meets
    out = tmp_path / "m.onnx"
    code, _, err = run_cli(capsys, "export", digits_int_models["qat"], "--format", "onnx", "--table-n", 0, "--out", out)
    assert_one_line_error(code, err, "pip install 'intrs[export]'")
    assert not out.exists()


def test_litert_log_lines_stay_off_the_terminal(capfd, tmp_path, digits_int_models):
    """LiteRT's C++ writes "INFO: Created TensorFlow Lite XNNPACK delegate" to file descriptor 2 (issue 15)."""
    from intrs.cli import main

    out = tmp_path / "m.tflite"
    assert main(["export", str(digits_int_models["qat"]), "--format", "tflite", "--saturate", "--table-n", "0",
                 "--out", str(out)]) == 0
    assert main(["verify-export", str(out), str(tmp_path / "m.intrs.npz"), "--inputs", "20"]) == 0
    captured = capfd.readouterr()
    assert "XNNPACK" not in captured.err and "INFO:" not in captured.err
    assert captured.out.strip().splitlines()[-1].startswith("PASS")


def test_a_second_export_beside_the_first_keeps_its_radius_header(capsys, tmp_path, digits_int_models):
    """Issue 15: the ONNX export overwrote the .radius.h the TFLite export had written beside the same stem."""
    code, _, _ = run_cli(capsys, "export", digits_int_models["qat"], "--format", "tflite", "--saturate",
                         "--table-n", 300, "--out", tmp_path / "m.tflite")
    header = (tmp_path / "m.radius.h").read_text()
    code, _, err = run_cli(capsys, "export", digits_int_models["qat"], "--format", "onnx", "--table-n", 500,
                           "--out", tmp_path / "m.onnx")
    assert_one_line_error(code, err, "m.radius.h already exists", "--force")
    assert (tmp_path / "m.radius.h").read_text() == header and not (tmp_path / "m.onnx").exists()
