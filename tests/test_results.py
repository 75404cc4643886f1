import pytest

from intrs.errors import DataError, OutputExistsError
from intrs.report import analyze, certified_accuracy
from intrs.results import ResultWriter, metadata_path, read_results

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
    assert analyze([ours, cohen]).rows == table.rows
    assert table.radii[:3] == [0.0, 0.25, 0.5] and table.radii[-1] == 1.5
    # the paper's order: known systems first, then other files
    assert table.rows[0]["system"] == "floatrs-fp" and table.rows[1]["system"] == "noise_0.25"
    assert table.rows[1]["accuracies"][:4] == pytest.approx([2 / 3, 2 / 3, 1 / 3, 0.0])
    markdown = table.to_markdown()
    assert "| noise_0.25 |  | 3 | 0.667 | 0.667 | 0.333 | 0.000 |" in markdown
    assert table.to_csv().splitlines()[0].startswith("system,sigma,file,images,0,0.25,0.5")


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
