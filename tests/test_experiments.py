"""intrs reproduce: every experiment of the ci preset end to end, resumed without recomputation."""

import json

import pytest

from intrs.experiments import EXPERIMENTS

from test_cli import assert_one_line_error, run_cli


@pytest.fixture(scope="module")
def ci_run(tmp_path_factory):
    from intrs.data import FASHION_MNIST_DEFAULT_DIR

    if not (FASHION_MNIST_DEFAULT_DIR / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST is not installed (scripts/setup.sh installs it)")
    from intrs.cli import main

    out = tmp_path_factory.mktemp("reproduce") / "ci"
    assert main(["reproduce", "all", "--preset", "ci", "--out", str(out)]) == 0
    return out


def test_every_experiment_writes_data_tables_and_figures(ci_run):
    for name in EXPERIMENTS:
        folder = ci_run / name
        assert list(folder.glob("*.md")), name
        if name not in ("table1", "sigma-mismatch"):  # tables in the paper, figures elsewhere
            assert list(folder.glob("*.png")), name
        if name != "noisy-images":
            assert list(folder.glob("*.csv")), name
    for png in ci_run.glob("*/*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (ci_run / "certify-sigma" / "certified_accuracy.md").read_text()
    # issue 19: the clean accuracy (r = 0) first, then Tables 2/3's radii, each cell with its interval
    for label in ("| FloatRS-fp | r = 0 | r = 0.25", "| IntRS-quant | r = 0 | r = 0.25",
                  "| FloatRS-quant | r = 0 | r = 0.25", "sigma = 1.00", "IntRS-quant - FloatRS-fp", "| 8 | 116 |"):
        assert label in table
    assert "IntRS speed-up" in (ci_run / "table1" / "table1.md").read_text()
    table1 = (ci_run / "table1" / "table1.csv").read_text().splitlines()
    assert table1[0].startswith("n,FloatRS-fp correct") and [r.split(",")[0] for r in table1[1:]] == ["100", "200"]
    linf = (ci_run / "pgd-linf" / "accuracy.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in linf[1:]] == ["0", "0.01", "0.03", "0.05"]
    # issue 15: "\r\n" line endings, and a sigma column holding "sigma = 0.12"
    for csv_file in ci_run.glob("*/*.csv"):
        assert b"\r" not in csv_file.read_bytes(), csv_file
    sigma_rows = (ci_run / "certify-sigma" / "certified_accuracy.csv").read_text().splitlines()
    assert sigma_rows[0].startswith("system,sigma,") and sigma_rows[1].split(",")[1] == "0.12"
    assert "IntRS-quant - FloatRS-fp, sigma = 0.12" in table and "FloatRS-quant - FloatRS-fp, sigma = 0.12" in table


def test_the_gap_tables_carry_the_paired_test_of_each_cell(ci_run):
    """Each gap cell: the difference on the same images, the images each system alone certifies at that radius,
    and McNemar's exact p-value of that split, recomputed here from the two cells' TSVs."""
    import re

    from scipy.stats import binomtest

    from intrs.results import read_result_table

    folder = ci_run / "certify-sigma"
    table = (folder / "certified_accuracy.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| IntRS-quant - FloatRS-fp, sigma = 0.25 |"))
    cell = row.split("|")[3].strip()  # r = 0.25
    mine = {r["idx"]: r for r in read_result_table(next(folder.glob("certify-intrs-quant-*sigma0.25*.tsv")))[1]}
    theirs = {r["idx"]: r for r in read_result_table(next(folder.glob("certify-floatrs-fp-*sigma0.25*.tsv")))[1]}
    certified = lambda r: int(r["correct"]) == 1 and float(r["radius"]) >= 0.25
    only_mine = sum(certified(mine[i]) and not certified(theirs[i]) for i in mine)
    only_theirs = sum(certified(theirs[i]) and not certified(mine[i]) for i in mine)
    p = binomtest(only_mine, only_mine + only_theirs, 0.5).pvalue if only_mine + only_theirs else 1.0
    assert cell == f"{(only_mine - only_theirs) / len(mine):+.2f} ({only_mine}/{only_theirs}, p {p:.2f})"
    assert re.search(r"McNemar", table)


def test_experiments_write_data_and_the_report_renders_it(capsys, ci_run, tmp_path):
    """Issue 16: experiments write data only; the report makes every table and figure from those files, so an
    unfinished run (a cell's TSV not yet there) renders its finished cells."""
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(ci_run, copy)
    for shown in list(copy.glob("*/*.md")) + list(copy.glob("*/*.png")) + list(copy.glob("certify-sigma/*.csv")):
        shown.unlink()
    (copy / "certify-sigma" / "certify-floatrs-quant-train1.00-sigma1.00-alpha0.001-n100.tsv").unlink()
    code, out, _ = run_cli(capsys, "report", copy)
    assert code == 0 and "report.html" in out
    for name in EXPERIMENTS:
        assert list((copy / name).glob("*.md")), name
    table = (copy / "certify-sigma" / "certified_accuracy.md").read_text()
    assert table.count("| sigma = 0.50 |") == 3 and table.count("| sigma = 1.00 |") == 2  # FloatRS-quant's is gone
    assert "| IntRS-quant - FloatRS-fp, sigma = 1.00 |" in table
    wide = (copy / "certify-sigma" / "certified_accuracy.csv").read_text().splitlines()
    assert len(wide) == 1 + 3 * 4 - 1
    long = (copy / "certify-sigma" / "certified_accuracy_intervals.csv").read_text().splitlines()
    assert long[0] == "system,sigma,radius,images,certified,accuracy,lower 95%,upper 95%,mean samples,median samples"
    for row in long[1:]:
        fields = row.split(",")
        images, certified, accuracy, lower, upper = int(fields[3]), int(fields[4]), *map(float, fields[5:8])
        assert images == 8 and accuracy == certified / images and lower <= accuracy <= upper


def test_a_sequential_run_is_rendered_at_the_radii_it_decided(capsys, ci_run, tmp_path):
    """A sequential row's radius is where it stopped, not the largest it could reach: the captions say what
    the r = 0 column means there and how the samples were spent, and the figures draw the decided radii."""
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(ci_run, copy)
    settings = json.loads((copy / "preset.json").read_text())
    settings["preset"]["sequential"] = True
    (copy / "preset.json").write_text(json.dumps(settings))
    code, _, _ = run_cli(capsys, "report", copy)
    table = (copy / "certify-sigma" / "certified_accuracy.md").read_text()
    assert code == 0 and "sequential up to n = 100" in table and "decides the radii above 0 only" in table
    assert (copy / "certify-sigma" / "certified_accuracy_sigma0.25.png").read_bytes()[:4] == b"\x89PNG"


def test_reproduction_alone_writes_no_table_or_figure(tmp_path):
    from intrs.experiments import Reproduction, preset

    Reproduction(preset("ci"), tmp_path / "run").run("noisy-images")
    written = {p.name for p in (tmp_path / "run" / "noisy-images").iterdir()}
    assert written == {"noisy_images.npz", "facts.json"}


def test_report_is_one_self_contained_page(ci_run):
    page = (ci_run / "report.html").read_text()
    assert page.count("<img src=\"data:image/png;base64,") >= 8 and "<table>" in page
    assert "Departures from the paper" in page and "certify-sigma" in page
    # issue 19: the paper's names as headings, a contents list, the software that ran and rendered it, and every
    # setting that departs from the paper's protocol
    assert "<h2>Contents</h2>" in page and "Tables 2 and 3: certified accuracy" in page and "Figure 10: PGD L2" in page
    assert page.count("intrs 0.") >= 2 and "commit " in page
    assert "<code>n: 100,000 -&gt; 100</code>" in page and "<code>dataset: cifar10 -&gt; fashion-mnist</code>" in page


def test_rerun_resumes_without_recomputing(capsys, ci_run):
    data = sorted(ci_run.glob("*/*.tsv")) + sorted(ci_run.glob("models/**/*.pt")) + sorted(ci_run.glob("models/*.npz"))
    stamps = {p: p.stat().st_mtime_ns for p in data}
    tsv = ci_run / "certify-sigma" / "certify-intrs-quant-train0.25-sigma0.25-alpha0.001-n100.tsv"
    full = tsv.read_text().splitlines()
    tsv.write_text("\n".join(full[:-3]) + "\n")  # an interrupted run: three images missing
    code, _, _ = run_cli(capsys, "reproduce", "certify-sigma", "--preset", "ci", "--out", ci_run)
    assert code == 0
    strip = lambda lines: [line.split("\t")[:5] + line.split("\t")[6:] for line in lines]
    assert strip(tsv.read_text().splitlines()) == strip(full)
    changed = [p for p, stamp in stamps.items() if p != tsv and p.stat().st_mtime_ns != stamp]
    assert changed == []


def test_other_settings_in_the_same_folder_are_refused(capsys, ci_run):
    code, _, err = run_cli(capsys, "reproduce", "table1", "--preset", "fmnist", "--out", ci_run)
    assert_one_line_error(code, err, "other settings", "another --out")
    assert json.loads((ci_run / "preset.json").read_text())["preset"]["name"] == "ci"


def test_paper_presets_fail_cleanly_without_their_data(capsys, tmp_path):
    for preset in ("paper-cifar10", "paper-caltech101"):
        code, _, err = run_cli(capsys, "reproduce", "certify-sigma", "--preset", preset, "--out", tmp_path / preset)
        assert_one_line_error(code, err, "cannot be downloaded", "--data-dir")
        assert (tmp_path / preset / "preset.json").exists()  # started; re-running with --data-dir resumes
