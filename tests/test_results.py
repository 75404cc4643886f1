import re
import sys

import pytest

from intrs.errors import ConfigError, DataError, IntrsError, MissingDependencyError, OutputExistsError
from intrs.report import analyze, certified_accuracy, file_label, write_accuracy_plot
from intrs.results import PREDICT_COLUMNS, ResultWriter, metadata_path, read_results

COLUMNS = ("idx", "label", "predict", "radius", "correct", "time", "sigma", "system")


def row(idx, radius="0.5", correct=1):
    return {"idx": idx, "label": 1, "predict": 1, "radius": radius, "correct": correct, "time": "0.1",
            "sigma": 0.25, "system": "floatrs-fp"}


def test_rows_are_written_with_cohens_header_first(tmp_path):
    out = tmp_path / "r.tsv"
    with ResultWriter(out, COLUMNS, {"n": 10}) as writer:
        writer.write(row(0))
    assert out.read_text().splitlines()[0].split("\t")[:6] == ["idx", "label", "predict", "radius", "correct", "time"]
    assert metadata_path(out).exists()


def test_existing_output_is_never_overwritten_without_force(tmp_path):
    out = tmp_path / "r.tsv"
    with ResultWriter(out, COLUMNS, {"n": 10}) as writer:
        writer.write(row(0))
    before = out.read_text()
    with pytest.raises(OutputExistsError, match="--resume.*--force"):
        ResultWriter(out, COLUMNS, {"n": 10}).__enter__()
    assert out.read_text() == before
    with ResultWriter(out, COLUMNS, {"n": 10}, force=True):
        pass
    assert len(out.read_text().splitlines()) == 1


def test_resume_skips_finished_rows_and_cuts_a_torn_row(tmp_path):
    out = tmp_path / "r.tsv"
    with ResultWriter(out, COLUMNS, {"n": 10}) as writer:
        writer.write(row(0))
        writer.write(row(1))
    with open(out, "a") as handle:
        handle.write("2\t1\t1\t0.3")  # a crash mid-row
    with ResultWriter(out, COLUMNS, {"n": 10}, resume=True) as writer:
        assert writer.done == {0, 1}
        writer.write(row(2))
    assert [r["idx"] for r in read_results(out)] == ["0", "1", "2"]


def test_resume_with_other_settings_is_refused(tmp_path):
    out = tmp_path / "r.tsv"
    with ResultWriter(out, COLUMNS, {"n": 10}) as writer:
        writer.write(row(0))
    with pytest.raises(OutputExistsError, match="other settings \\(n differ\\)"):
        ResultWriter(out, COLUMNS, {"n": 20}, resume=True).__enter__()


def test_two_writers_cannot_hold_the_same_file(tmp_path):
    out = tmp_path / "r.tsv"
    with ResultWriter(out, COLUMNS, {"n": 10}):
        with pytest.raises(OutputExistsError, match="another intrs run"):
            ResultWriter(out, COLUMNS, {"n": 10}, force=True).__enter__()


def test_certified_accuracy_counts_correct_rows_with_radius_at_least_r():
    rows = [row(0, "0.3"), row(1, "0.6"), row(2, "0.9", correct=0), row(3, "0")]
    assert certified_accuracy(rows, 0.0) == 0.75
    assert certified_accuracy(rows, 0.3) == 0.5
    assert certified_accuracy(rows, 0.5) == 0.25
    assert certified_accuracy(rows, 0.75) == 0.0


def test_analyze_reads_cohens_own_files(tmp_path):
    cohen = tmp_path / "noise_0.25.tsv"  # as locuslab/smoothing's certify.py writes it
    cohen.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n"
                     "0\t3\t3\t0.581\t1\t0:00:01.234567\n"
                     "20\t8\t-1\t0.0\t0\t0:00:01.100000\n"
                     "40\t1\t1\t0.262\t1\t0:00:01.000001\n")
    ours = tmp_path / "ours.tsv"
    with ResultWriter(ours, COLUMNS, {}) as writer:
        writer.write(row(0, "0.7"))
    table = analyze([cohen, ours])
    assert table.radii[:3] == [0.0, 0.25, 0.5] and table.radii[-1] == 1.5
    assert table.rows[0]["system"] == "noise_0.25" and table.rows[1]["system"] == "floatrs-fp"
    assert table.rows[0]["accuracies"][:4] == pytest.approx([2 / 3, 2 / 3, 1 / 3, 0.0])
    markdown = table.to_markdown()
    assert f"| noise_0.25 | 0.25 | {cohen} | 3 | 0.667 | 0.667 | 0.333 | 0.000 |" in markdown
    assert table.to_csv().splitlines()[0].startswith("system,sigma,file,images,0,0.25,0.5")


CERTIFY_HEADER = "idx\tlabel\tpredict\tradius\tcorrect\ttime\n"


def test_analyze_labels_cohens_extensionless_sigma_file_and_reads_its_sigma(tmp_path):
    """Issue 15: locuslab/smoothing writes noise_0.25/test/sigma_0.25; its '.25' is no extension (was 'sigma_0')."""
    paths = []
    for train, sigma in (("0.25", "0.25"), ("0.25", "0.50")):
        path = tmp_path / f"noise_{train}" / "test" / f"sigma_{sigma}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(CERTIFY_HEADER + "0\t3\t3\t0.581\t1\t0:00:01\n")
        paths.append(path)
    rows = analyze(paths).rows
    assert [(r["system"], r["sigma"]) for r in rows] == [("sigma_0.25", "0.25"), ("sigma_0.50", "0.50")]
    assert file_label("a/certify.tsv") == "certify" and file_label("sigma_0.25") == "sigma_0.25"


def test_analyze_keeps_the_order_given_and_names_each_file(tmp_path):
    """Issue 15: rows were re-sorted into paper order, and two files with the same settings printed identical rows."""
    paths = []
    for name, radius in (("b.tsv", "0.9"), ("a.tsv", "0.3"), ("c.tsv", "0.9")):
        with ResultWriter(tmp_path / name, COLUMNS, {}) as writer:
            writer.write({**row(0, radius), "system": "intrs-quant" if name == "b.tsv" else "floatrs-fp"})
        paths.append(tmp_path / name)
    table = analyze(paths)
    assert [r["file"] for r in table.rows] == [str(p) for p in paths]
    lines = table.to_markdown().splitlines()[2:]
    assert len(set(lines)) == 3 and all(str(p) in line for p, line in zip(paths, lines))
    assert [line.split(",")[2] for line in table.to_csv().splitlines()[1:]] == [str(p) for p in paths]


def test_analyze_gives_a_predict_files_accuracy_and_abstain_rate(tmp_path):
    """Issue 15: a PREDICT file printed certified accuracy 0.000 (its radius column is 0)."""
    ours = tmp_path / "predict.tsv"
    with ResultWriter(ours, PREDICT_COLUMNS, {}) as writer:
        for idx, (predict, correct) in enumerate([(1, 1), (-1, 0), (2, 0), (1, 1)]):
            writer.write({c: 0 for c in PREDICT_COLUMNS} | {"idx": idx, "predict": predict, "correct": correct,
                                                           "sigma": 0.25, "system": "floatrs-fp"})
    cohen = tmp_path / "predict_sigma_0.12"  # locuslab/smoothing's predict.py: no radius column
    cohen.write_text("idx\tlabel\tpredict\tcorrect\ttime\n0\t1\t1\t1\t0.1\n1\t2\t-1\t0\t0.1\n")
    certify = tmp_path / "certify.tsv"
    certify.write_text(CERTIFY_HEADER + "0\t1\t1\t0.6\t1\t0.1\n")
    only = analyze([ours, cohen])
    assert [(r["kind"], r["accuracy"], r["abstain"]) for r in only.rows] == [("predict", 0.5, 0.25),
                                                                              ("predict", 0.5, 0.5)]
    assert only.to_markdown().splitlines()[0] == "| system | sigma | file | images | accuracy | abstain |"
    assert only.rows[1]["sigma"] == "0.12"
    mixed = analyze([certify, ours]).to_markdown().splitlines()
    assert mixed[0].startswith("| system | sigma | file | images | accuracy | abstain | r = 0 | r = 0.25 |")
    assert mixed[2].startswith(f"| certify |  | {certify} | 1 | 1.000 | 0.000 | 1.000 | 1.000 | 1.000 | 0.000 |")
    assert mixed[3].startswith(f"| floatrs-fp | 0.25 | {ours} | 4 | 0.500 | 0.250 | - | - |")


def test_analyze_writes_latex(tmp_path):
    path = tmp_path / "my_run.tsv"
    path.write_text(CERTIFY_HEADER + "0\t1\t1\t0.6\t1\t0.1\n1\t1\t1\t0.1\t0\t0.1\n")
    latex = analyze([path], max_radius=0.5).to_latex().splitlines()
    assert latex[0] == r"\begin{tabular}{lllrrrr}" and latex[-1] == r"\end{tabular}"
    assert latex[2] == r"system & sigma & file & images & $r = 0$ & $r = 0.25$ & $r = 0.5$ \\"
    assert latex[4] == "my" + r"\_run &  & " + str(path).replace("_", r"\_") + r" & 2 & 0.500 & 0.500 & 0.500 \\"


@pytest.mark.parametrize("content,max_radius,step,match", [
    (b"PK\x03\x04\x00\x00\x08\x08\x00\x8b\xc8\xff", None, 0.25, "not a text file"),  # a torch .pt is a zip
    (CERTIFY_HEADER + "0\t1\t1\tabc\t1\t0.1\n", None, 0.25, "line 2: radius 'abc' is not a number"),
    (CERTIFY_HEADER + "0\t1\t1\tnan\t1\t0.1\n", None, 0.25, "line 2: the radius must be a finite number"),
    (CERTIFY_HEADER + "0\t1\t1\tinf\t1\t0.1\n", None, 0.25, "line 2: the radius must be a finite number"),
    (CERTIFY_HEADER + "0\t1\t1\t0.5\t1\t0.1\n1\t1\t1\n", None, 0.25, "line 3 has fewer fields"),
    (CERTIFY_HEADER + "0\t1\t1\t0.5\t2\t0.1\n", None, 0.25, "correct must be 0 or 1"),
    (CERTIFY_HEADER, float("nan"), 0.25, "largest radius a number >= 0"),
    (CERTIFY_HEADER, float("inf"), 0.25, "largest radius a number >= 0"),
    (CERTIFY_HEADER, 1.0, float("nan"), "step must be a number > 0"),
    (CERTIFY_HEADER, None, 1e-12, "more than the 1000 a table holds"),
    (CERTIFY_HEADER, 1e300, 1e-300, "more than the 1000 a table holds"),
], ids=["binary", "radius-abc", "radius-nan", "radius-inf", "short-row", "correct-2", "max-nan", "max-inf", "step-nan",
        "step-1e-12", "step-overflows"])
def test_analyze_refuses_bad_input_with_a_clear_error(tmp_path, content, max_radius, step, match):
    """Issue 15's bad-input table: these raised UnicodeDecodeError, ValueError, OverflowError, or hung (step 1e-12)."""
    path = tmp_path / "bad.tsv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(IntrsError, match=re.escape(match)):
        analyze([path], max_radius, step)


def test_analyze_plots_one_curve_per_certify_file(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    certify, predict = tmp_path / "sigma_0.25", tmp_path / "p.tsv"
    certify.write_text(CERTIFY_HEADER + "0\t1\t1\t0.6\t1\t0.1\n")
    predict.write_text("idx\tlabel\tpredict\tcorrect\ttime\n0\t1\t1\t1\t0.1\n")
    out = tmp_path / "curves.png"
    assert write_accuracy_plot(analyze([certify, predict]), out) == out
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(OutputExistsError, match="--force"):
        write_accuracy_plot(analyze([certify]), out)
    with pytest.raises(ConfigError, match="PREDICT files certify no radius"):
        write_accuracy_plot(analyze([predict]), tmp_path / "none.png")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed: import raises ImportError
    with pytest.raises(MissingDependencyError, match=re.escape("pip install 'intrs[report]'")):
        write_accuracy_plot(analyze([certify]), out, force=True)


def test_analyze_rejects_files_without_cohens_columns(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\n1\t2\n")
    with pytest.raises(DataError, match="lacks the columns"):
        analyze([bad])
    with pytest.raises(DataError, match="cannot read results"):
        analyze([tmp_path / "missing.tsv"])


def test_a_run_killed_while_writing_its_header_starts_afresh_on_resume(tmp_path):
    out = tmp_path / "r.tsv"
    with ResultWriter(out, COLUMNS, {"n": 10}):
        pass
    out.write_text("idx\tlab")  # torn header
    with ResultWriter(out, COLUMNS, {"n": 10}, resume=True) as writer:
        assert writer.done == set()
        writer.write(row(0))
    assert [r["idx"] for r in read_results(out)] == ["0"]


def test_information_only_settings_are_not_compared_on_resume(tmp_path):
    """A run begun before its sidecar recorded the certificate status (or under another wording) resumes."""
    out = tmp_path / "r.tsv"
    with ResultWriter(out, COLUMNS, {"n": 10}) as writer:
        writer.write(row(0))
    with ResultWriter(out, COLUMNS, {"n": 10, "certificate_status": "proven."}, resume=True) as writer:
        assert writer.done == {0}
    with pytest.raises(OutputExistsError, match="other settings \\(n differ\\)"):
        ResultWriter(out, COLUMNS, {"n": 20, "certificate_status": "proven."}, resume=True).__enter__()


@pytest.mark.parametrize("mode", ["certify", "predict"])
@pytest.mark.parametrize("sequential", [False, True])
def test_a_rows_keys_are_its_files_columns(mode, sequential):
    """certification's rows and results' columns name the same fields: the columns are defined once."""
    from types import SimpleNamespace

    from intrs.certification import ROW_FUNCTIONS, CertifySettings
    from intrs.results import result_columns

    answer = SimpleNamespace(prediction=1, counts_top=9, counts_second=1, n=10, p_lower=0.6, p_upper=0.9,
                             p_value=0.01, radius=0.1, max_n=20, stop="decided", decisions=[(0.1, "certified")])
    smoothed = SimpleNamespace(**{name: lambda *args: answer for name in
                                  ("certify", "certify_sequential", "predict", "predict_sequential")})
    system = SimpleNamespace(name="test", noise=SimpleNamespace(sigma=0.25, name="gaussian"))
    settings = CertifySettings(sequential=sequential, radii=(0.1,) if sequential and mode == "certify" else None)
    row = ROW_FUNCTIONS[mode](system, smoothed, None, 1, 0, settings)
    assert sorted(row) == sorted(result_columns(mode, sequential))
