"""The command line: thin over the library, one clear line and exit status 2 for every user mistake."""

import sys

import pytest

from intrs.cli import main
from intrs.results import read_results


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *fragments):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("intrs: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def certify_args(checkpoint, out, *extra):
    return ["certify", "--checkpoint", checkpoint, "--n0", 16, "--n", 64, "--alpha", 0.01, "--batch", 32,
            "--max", 5, "--out", out, *extra]


def test_certify_writes_cohen_rows_and_prints_the_table(capsys, tmp_path, digits_checkpoint):
    out = tmp_path / "c.tsv"
    code, stdout, _ = run_cli(capsys, *certify_args(digits_checkpoint, out))
    assert code == 0 and "| system | sigma | file | images | r = 0 |" in stdout and f"| {out} | 5 |" in stdout
    rows = read_results(out)
    assert [r["idx"] for r in rows] == ["0", "1", "2", "3", "4"]
    header = out.read_text().splitlines()[0].split("\t")
    assert header[:6] == ["idx", "label", "predict", "radius", "correct", "time"]
    assert {"counts_top", "n", "pA_lower", "sigma", "alpha", "system"} <= set(header)
    assert all(r["system"] == "floatrs-fp" and r["sigma"] == "0.25" and r["n"] == "64" for r in rows)


def test_certify_same_seed_same_rows_and_skip_selects_like_cohen(capsys, tmp_path, digits_checkpoint):
    run_cli(capsys, *certify_args(digits_checkpoint, tmp_path / "a.tsv"))
    run_cli(capsys, *certify_args(digits_checkpoint, tmp_path / "b.tsv", "--skip", 2))
    a = {r["idx"]: r for r in read_results(tmp_path / "a.tsv")}
    b = read_results(tmp_path / "b.tsv")
    assert [r["idx"] for r in b] == ["0", "2", "4", "6", "8"]
    for r in b[:3]:  # the same image gets the same streams whatever else runs
        assert {k: v for k, v in r.items() if k != "time"} == {k: v for k, v in a[r["idx"]].items() if k != "time"}


def test_interrupted_certify_resumes_without_recomputing(capsys, tmp_path, digits_checkpoint):
    out = tmp_path / "c.tsv"
    run_cli(capsys, *certify_args(digits_checkpoint, out))
    full = out.read_text().splitlines()
    out.write_text("\n".join(full[:3]) + "\n" + full[3][:7])  # two rows done, the third torn
    code, _, _ = run_cli(capsys, *certify_args(digits_checkpoint, out, "--resume"))
    assert code == 0
    strip = lambda lines: [line.split("\t")[:5] + line.split("\t")[6:] for line in lines]
    assert strip(out.read_text().splitlines()) == strip(full)


def test_predict_writes_rows(capsys, tmp_path, digits_checkpoint):
    out = tmp_path / "p.tsv"
    code, _, _ = run_cli(capsys, "predict", "--checkpoint", digits_checkpoint, "--n", 50, "--max", 3,
                         "--out", out)
    rows = read_results(out)
    assert code == 0 and len(rows) == 3 and all(r["radius"] == "0" for r in rows)
    assert all(int(r["counts_top"]) >= int(r["counts_second"]) for r in rows)


def test_analyze_prints_side_by_side(capsys, tmp_path, digits_checkpoint):
    run_cli(capsys, *certify_args(digits_checkpoint, tmp_path / "a.tsv"))
    run_cli(capsys, *certify_args(digits_checkpoint, tmp_path / "b.tsv", "--sigma", 0.5))
    code, out, _ = run_cli(capsys, "analyze", tmp_path / "a.tsv", tmp_path / "b.tsv", "--format", "csv")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 3 and lines[1].startswith("floatrs-fp,0.25,") \
        and lines[2].startswith("floatrs-fp,0.5,")


CERTIFY_HEADER = "idx\tlabel\tpredict\tradius\tcorrect\ttime\n"


@pytest.mark.parametrize("content,args,fragments", [
    (b"PK\x03\x04\x00\x00\x08\x08\x00\x8b\xc8\xff", [], ["bad.tsv is not a text file"]),
    (CERTIFY_HEADER + "0\t1\t1\tabc\t1\t0.1\n", [], ["bad.tsv line 2", "'abc' is not a number"]),
    (CERTIFY_HEADER + "0\t1\t1\tnan\t1\t0.1\n", [], ["bad.tsv line 2", "finite number"]),
    (CERTIFY_HEADER, ["--max-radius", "nan"], ["max radius=nan"]),
    (CERTIFY_HEADER, ["--max-radius", "inf"], ["max radius=inf"]),
    (CERTIFY_HEADER, ["--step", "1e-12"], ["more than the 1000", "--step"]),
], ids=["binary", "radius-abc", "radius-nan", "max-nan", "max-inf", "step-1e-12"])
def test_analyze_bad_input_is_one_line(capsys, tmp_path, content, args, fragments):
    """Issue 15: a binary file, radius 'abc', NaN rows and --max-radius nan/inf gave tracebacks; --step 1e-12 hung."""
    path = tmp_path / "bad.tsv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    code, _, err = run_cli(capsys, "analyze", path, *args)
    assert_one_line_error(code, err, *fragments)


def test_analyze_plot_and_latex(capsys, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    cohen = tmp_path / "noise_0.25" / "test" / "sigma_0.25"
    cohen.parent.mkdir(parents=True)
    cohen.write_text(CERTIFY_HEADER + "0\t3\t3\t0.581\t1\t0:00:01\n1\t3\t-1\t0.0\t0\t0:00:01\n")
    plot = tmp_path / "curves.png"
    code, out, err = run_cli(capsys, "analyze", cohen, "--plot", plot)
    assert code == 0 and plot.read_bytes()[:4] == b"\x89PNG" and err.strip() == f"wrote {plot}"
    assert f"| sigma_0.25 | 0.25 | {cohen} | 2 | 0.500 |" in out
    code, _, err = run_cli(capsys, "analyze", cohen, "--plot", plot)
    assert_one_line_error(code, err, "already exists", "--force")
    code, out, _ = run_cli(capsys, "analyze", cohen, "--format", "latex", "--max-radius", 0.5)
    assert code == 0 and out.startswith("\\begin{tabular}{lllrrrr}\n") and "sigma\\_0.25 & 0.25 &" in out
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    code, _, err = run_cli(capsys, "analyze", cohen, "--plot", plot, "--force")
    assert_one_line_error(code, err, "matplotlib", "pip install 'intrs[report]'")


def test_train_command_trains_and_reports(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "train", "--dataset", "digits", "--arch", "resnet8", "--width", 4, "--sigma",
                           0.12, "--schedule", "ci", "--epochs", 1, "--out", tmp_path / "m")
    assert code == 0 and "epoch 1" in out and (tmp_path / "m" / "checkpoint.pt").exists()


@pytest.mark.parametrize("extra,fragments", [
    (["--sigma", "0"], ["sigma must be a positive number"]),
    (["--sigma", "-1"], ["sigma must be a positive number"]),
    (["--n0", "100", "--n", "10"], ["n0", "1..n = 10"]),
    (["--alpha", "0"], ["alpha must lie strictly between 0 and 1"]),
    (["--alpha", "1"], ["alpha must lie strictly between 0 and 1"]),
    (["--system", "intrs-quantum"], ["unknown system 'intrs-quantum'", "floatrs-fp"]),
    (["--dataset", "fashion-mnist", "--data-dir", "."], ["Fashion-MNIST file"]),
    (["--n", "many"], ["'many' is not a valid integer"]),
])
def test_bad_certify_input_is_one_line_and_exit_2(capsys, tmp_path, digits_checkpoint, extra, fragments):
    out = tmp_path / "c.tsv"
    code, _, err = run_cli(capsys, "certify", "--checkpoint", digits_checkpoint, "--out", out, *extra)
    assert_one_line_error(code, err, *fragments)
    assert not out.exists()


def test_missing_and_corrupt_checkpoints(capsys, tmp_path):
    code, _, err = run_cli(capsys, "certify", "--checkpoint", tmp_path / "none.pt", "--out", tmp_path / "c.tsv")
    assert_one_line_error(code, err, "none.pt not found")
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    code, _, err = run_cli(capsys, "predict", "--checkpoint", tmp_path / "bad.pt", "--out", tmp_path / "c.tsv")
    assert_one_line_error(code, err, "bad.pt is corrupt")


def test_checkpoint_for_another_dataset_or_channel_count(capsys, tmp_path, digits_checkpoint, cifar_dir):
    code, _, err = run_cli(capsys, "certify", "--checkpoint", digits_checkpoint, "--dataset", "cifar10",
                           "--data-dir", cifar_dir, "--out", tmp_path / "c.tsv")
    assert_one_line_error(code, err, "trained on digits (1 channels", "cifar10 (3 channels")


def test_existing_output_is_kept(capsys, tmp_path, digits_checkpoint):
    out = tmp_path / "c.tsv"
    run_cli(capsys, *certify_args(digits_checkpoint, out))
    before = out.read_text()
    code, _, err = run_cli(capsys, *certify_args(digits_checkpoint, out, "--sigma", 0.5))
    assert_one_line_error(code, err, "already exists", "--force")
    code, _, err = run_cli(capsys, *certify_args(digits_checkpoint, out, "--sigma", 0.5, "--resume"))
    assert_one_line_error(code, err, "other settings (sigma differ)")
    assert out.read_text() == before


def test_unknown_flag_and_missing_data_are_one_line(capsys, tmp_path):
    code, _, err = run_cli(capsys, "certify", "--bogus")
    assert_one_line_error(code, err, "--bogus")
    code, _, err = run_cli(capsys, "train", "--dataset", "cifar10", "--sigma", 0.25, "--out", tmp_path)
    assert_one_line_error(code, err, "cannot be downloaded", "--data-dir")
    code, _, err = run_cli(capsys, "analyze", tmp_path / "none.tsv")
    assert_one_line_error(code, err, "none.tsv")


def three_systems(checkpoint, models, out, *extra):
    return ["certify", "--system", "floatrs-fp,intrs-quant", "--system", "floatrs-quant", "--checkpoint", checkpoint,
            "--int-model", models["qat"], "--ptq-model", models["ptq"], "--n0", 16, "--n", 64, "--alpha", 0.01,
            "--batch", 64, "--max", 4, "--out", out, *extra]


def test_three_systems_on_the_same_images_one_tsv_each(capsys, tmp_path, digits_checkpoint, digits_int_models):
    code, stdout, _ = run_cli(capsys, *three_systems(digits_checkpoint, digits_int_models,
                                                     str(tmp_path / "{system}.tsv")))
    assert code == 0
    noises = {"floatrs-fp": "gaussian", "intrs-quant": "discrete-gaussian", "floatrs-quant": "rounded-gaussian"}
    for system, noise in noises.items():
        rows = read_results(tmp_path / f"{system}.tsv")
        assert [r["idx"] for r in rows] == ["0", "1", "2", "3"]
        assert all(r["system"] == system and r["noise"] == noise for r in rows)
    table_lines = [line for line in stdout.splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[0] for line in table_lines[1:]] == ["| floatrs-fp", "| intrs-quant", "| floatrs-quant"]


def test_intrs_quant_with_rounded_gaussian_noise(capsys, tmp_path, digits_int_models):
    out = tmp_path / "r.tsv"
    code, _, _ = run_cli(capsys, "predict", "--system", "intrs-quant", "--int-model", digits_int_models["qat"],
                         "--noise", "rounded-gaussian", "--n", 50, "--max", 2, "--out", out)
    assert code == 0 and all(r["noise"] == "rounded-gaussian" for r in read_results(out))


@pytest.mark.parametrize("args,fragments", [
    (["--system", "intrs-quant"], ["intrs-quant needs --int-model"]),
    (["--system", "floatrs-fp,intrs-quant", "--checkpoint", "CKPT", "--int-model", "QAT"], ["{system}"]),
    (["--system", "floatrs-fp,floatrs-fp", "--checkpoint", "CKPT"], ["listed twice"]),
    (["--system", "intrs-quant", "--int-model", "CKPT"], ["not an intrs integer model"]),
    (["--system", "intrs-quant", "--int-model", "QAT", "--dataset", "fashion-mnist", "--data-dir", "FASHION"],
     ["was made for digits", "fashion-mnist"]),
])
def test_bad_system_choices_are_one_line(capsys, tmp_path, digits_checkpoint, digits_int_models, fashion_dir, args,
                                         fragments):
    subst = {"CKPT": str(digits_checkpoint), "QAT": str(digits_int_models["qat"]), "FASHION": str(fashion_dir)}
    args = [subst.get(a, a) for a in args]
    code, _, err = run_cli(capsys, "certify", "--out", tmp_path / "o.tsv", *args)
    assert_one_line_error(code, err, *fragments)


def test_quantize_command_writes_an_integer_model(capsys, tmp_path, digits_checkpoint):
    out = tmp_path / "m.npz"
    code, stdout, _ = run_cli(capsys, "quantize", "--checkpoint", digits_checkpoint, "--ptq", "--calibration-images",
                              64, "--eval-images", 50, "--out", out)
    assert code == 0 and out.exists() and "engine accuracy" in stdout
    code, _, err = run_cli(capsys, "quantize", "--checkpoint", digits_checkpoint, "--ptq", "--out", out)
    assert_one_line_error(code, err, "already exists")
    code, _, err = run_cli(capsys, "quantize", "--checkpoint", digits_checkpoint, "--out", tmp_path / "x.npz")
    assert_one_line_error(code, err, "--qat", "--ptq")


def _cut_to(path, rows):
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:1 + rows]))


def test_resume_compares_the_models_content_not_its_path(capsys, tmp_path, monkeypatch, digits_checkpoint):
    """Issue 15: a resume after the checkpoint was replaced at the same path mixed two models' rows (exit 0), and
    the same file spelled relative instead of absolute was refused."""
    import shutil

    import torch

    from intrs.checkpoint import load_checkpoint, save_checkpoint

    model = tmp_path / "m" / "checkpoint.pt"
    model.parent.mkdir()
    shutil.copy(digits_checkpoint, model)
    out = tmp_path / "out.tsv"
    assert run_cli(capsys, *certify_args(model, out))[0] == 0
    whole = read_results(out)
    _cut_to(out, 2)
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, *certify_args("m/checkpoint.pt", out, "--resume"))  # relative, same content
    assert code == 0, err
    assert [r["predict"] for r in read_results(out)] == [r["predict"] for r in whole]
    other = load_checkpoint(model)
    with torch.no_grad():
        for parameter in other.model.parameters():
            parameter.mul_(-1)
    save_checkpoint(model, other)
    _cut_to(out, 2)
    code, _, err = run_cli(capsys, *certify_args(model, out, "--resume"))
    assert_one_line_error(code, err, f"was made with the model {model} (sha256 ", f"but {model} has other "
                          "content (sha256 ")
    assert len(read_results(out)) == 2


def test_help_and_bad_flags_import_neither_torch_nor_scipy():
    """Issue 15: 'intrs --help' took about 3 s importing torch and scipy eagerly."""
    import subprocess

    probe = ("import sys\nfrom intrs.cli import main\n"
             "codes = [main(['--help']), main(['certify', '--help']), main(['train', '--bogus'])]\n"
             "heavy = sorted(m for m in ('torch', 'scipy', 'mpmath', 'numpy') if m in sys.modules)\n"
             "print(codes, heavy)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip().splitlines()[-1] == "[0, 0, 2] []", result.stdout + result.stderr


def test_the_tables_behind_the_flags_match_the_library():
    """The CLI's torch-free names (intrs.choices) are those the library implements."""
    from intrs import choices
    from intrs.data import DATASETS
    from intrs.deploy import FORMATS
    from intrs.experiments import PRESETS

    assert choices.DATASET_NAMES == tuple(DATASETS) and choices.PRESET_NAMES == tuple(PRESETS)
    assert choices.EXPORT_FORMATS == tuple(FORMATS)


def test_help_lists_n0_with_n_and_explains_every_schedule(capsys):
    code, out, _ = run_cli(capsys, "certify", "--help")
    options = [line.split()[0].rstrip(",") for line in out.splitlines() if line.strip().startswith("--")]
    assert code == 0 and options[options.index("--n") + 1] == "--n0"
    code, out, _ = run_cli(capsys, "train", "--help")
    text = " ".join(out.split())
    for name in ("paper: 90 epochs", "short: 3 epochs on the first 30,000 images", "ci: 2 epochs on the first 1,024"):
        assert name in text, text
    code, out, _ = run_cli(capsys, "certify", "--help")
    assert "about 10 s" in " ".join(out.split())


class _Terminal:
    """stderr as a terminal (tqdm draws bars only there) that keeps what is written."""

    def __init__(self, tty):
        self.text, self.tty = [], tty

    def write(self, text):
        self.text.append(text)

    def flush(self):
        pass

    def isatty(self):
        return self.tty


@pytest.mark.parametrize("tty", [True, False])
def test_progress_bars_on_a_terminal_only_and_they_stay(monkeypatch, tty):
    """Issue 15: bars went into log files, and a finished bar vanished with its elapsed time."""
    from intrs import cli

    terminal = _Terminal(tty)
    monkeypatch.setattr(sys, "stderr", terminal)
    assert list(cli._progress(range(3), desc="work", total=3)) == [0, 1, 2]
    text = "".join(terminal.text)
    if tty:
        assert "work: 100%" in text.split("\r")[-1] and "3/3 [00:00<00:00" in text.split("\r")[-1], repr(text)
    else:
        assert text == ""


def test_train_log_is_numeric_with_newline_endings(capsys, tmp_path):
    """Issue 15: train_log.tsv had "\\r\\n" line endings and lr 0.010000000000000002."""
    code, _, _ = run_cli(capsys, "train", "--dataset", "digits", "--arch", "resnet8", "--width", 4, "--sigma", 0.12,
                         "--schedule", "ci", "--epochs", 2, "--lr", 0.1, "--train-subset", 64, "--out", tmp_path)
    data = (tmp_path / "train_log.tsv").read_bytes()
    assert code == 0 and b"\r" not in data
    header, *rows = data.decode().splitlines()
    lr = header.split("\t").index("lr")
    assert [row.split("\t")[lr] for row in rows] == ["0.1", "0.01"]


def test_demo_runs_the_three_systems_the_speeds_sequential_and_the_device_files(capsys, tmp_path):
    """README line 1's job, small: every step prints, the three systems' table and both rates are there."""
    from intrs.data import FASHION_MNIST_DEFAULT_DIR

    if not (FASHION_MNIST_DEFAULT_DIR / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST is not installed (scripts/setup.sh installs Debian's dataset-fashion-mnist)")
    code, out, err = run_cli(capsys, "demo", "--out", tmp_path / "demo", "--schedule", "ci", "--images", 3, "--n", 60,
                             "--n0", 10, "--qat-images", 128)
    assert code == 0, err
    for step in ("[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"):
        assert step in out
    for system in ("floatrs-fp", "intrs-quant", "floatrs-quant"):
        assert (tmp_path / "demo" / f"certify-{system}-sigma0.25.tsv").is_file() and f"| {system} |" in out
    assert "samples/s (integer kernels" in out and "estimation samples for 3 images instead of 180" in out
    assert (tmp_path / "demo" / "fashion-mnist-resnet20-sigma0.25" / "c" / "model.c").is_file()
    # a re-run resumes: nothing is trained or certified again, and it says the rates were not measured
    code, out, _ = run_cli(capsys, "demo", "--out", tmp_path / "demo", "--schedule", "ci", "--images", 3, "--n", 60,
                           "--n0", 10, "--qat-images", 128)
    assert code == 0 and "reused from an earlier run" in out
