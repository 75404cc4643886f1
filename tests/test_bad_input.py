"""Bad input, command by command: one line "intrs: error: ..." and exit status 2, never a traceback, and found
before the work starts (issue 15's table: each of these gave a traceback, hung, or was silently accepted)."""

import pytest

from intrs.cli import main

# An unwritable location for every user, root included (permission bits do not stop root; /sys does).
UNWRITABLE = "/sys/intrs-test"
SMALL_CERTIFY = ["--n0", "16", "--n", "64", "--alpha", "0.01", "--batch", "32", "--max", "2"]
TRAIN = ["train", "--dataset", "digits", "--arch", "resnet8", "--width", "4", "--sigma", "0.25", "--schedule", "ci",
         "--epochs", "1"]


def _garbage_row(tmp, ckpt):
    """A finished run's file with a line that is no row: --resume must refuse it, not raise ValueError."""
    assert main(["certify", "--checkpoint", ckpt, *SMALL_CERTIFY, "--out", tmp / "c.tsv"]) == 0
    with open(tmp / "c.tsv", "a") as handle:
        handle.write("garbage\trow\n")


def _second_output_exists(tmp, ckpt):
    (tmp / "floatrs-quant.tsv").write_text("idx\tlabel\n")


def _torn_preset(tmp, ckpt):
    (tmp / "run").mkdir()
    (tmp / "run" / "preset.json").write_text('{"preset": {"na')


def _a_file(tmp, ckpt):
    (tmp / "afile").write_text("not a folder")


def _a_folder(tmp, ckpt):
    (tmp / "adir").mkdir()


CASES = [
    # certify: the output location, checked before the model is loaded
    ("certify-unwritable", ["certify", "--checkpoint", "CKPT", "--out", f"{UNWRITABLE}/c.tsv"], None,
     ["cannot be written", "/sys"]),
    ("certify-parent-is-file", ["certify", "--checkpoint", "CKPT", "--out", "TMP/afile/c.tsv"], _a_file,
     ["afile is a file, not a folder"]),
    ("certify-out-is-folder", ["certify", "--checkpoint", "CKPT", "--out", "TMP/adir", "--force"], _a_folder,
     ["adir is a folder"]),
    ("certify-second-output-exists", ["certify", "--system", "floatrs-fp,floatrs-quant", "--checkpoint", "CKPT",
                                      "--ptq-model", "CKPT", "--out", "TMP/{system}.tsv"], _second_output_exists,
     ["floatrs-quant.tsv already exists"]),
    ("certify-seed-negative", ["certify", "--checkpoint", "CKPT", "--seed", "-1", "--out", "TMP/c.tsv"], None,
     ["--seed must be an integer in [0, 2^64)", "-1"]),
    ("certify-sigma-1e308", ["certify", "--checkpoint", "CKPT", "--sigma", "1e308", "--out", "TMP/c.tsv"], None,
     ["at most 100"]),
    ("certify-n-1e12", ["certify", "--checkpoint", "CKPT", "--n", "1000000000000", "--out", "TMP/c.tsv"], None,
     ["1,000,000,000,000 samples", "more than a run takes"]),
    ("certify-n-float", ["certify", "--checkpoint", "CKPT", "--n", "1e12", "--out", "TMP/c.tsv"], None,
     ["'1e12' is not a valid integer"]),
    ("certify-workers-without-ray", ["certify", "--checkpoint", "CKPT", "--workers", "0", "--out", "TMP/c.tsv"],
     None, ["--workers counts Ray workers", "--ray"]),
    ("certify-workers-0", ["certify", "--checkpoint", "CKPT", "--ray", "--workers", "0", "--out", "TMP/c.tsv"],
     None, ["--workers must be at least 1"]),
    ("certify-ray-client", ["certify", "--checkpoint", "CKPT", *SMALL_CERTIFY, "--ray", "ray://127.0.0.1:1",
                            "--out", "TMP/c.tsv"], None, ["Ray"]),
    ("certify-resume-garbage-row", ["certify", "--checkpoint", "CKPT", *SMALL_CERTIFY, "--resume",
                                    "--out", "TMP/c.tsv"], _garbage_row, ["c.tsv line 4 is not a result row"]),
    # train: found before the first epoch
    ("train-unwritable", [*TRAIN, "--out", f"{UNWRITABLE}/run"], None, ["cannot be written"]),
    ("train-out-is-file", [*TRAIN, "--out", "TMP/afile"], _a_file, ["afile is a file, not a folder"]),
    ("train-parent-is-file", [*TRAIN, "--out", "TMP/afile/run"], _a_file, ["afile is a file, not a folder"]),
    ("train-subset-0", [*TRAIN, "--train-subset", "0", "--out", "TMP/run"], None, ["--train-subset must be at least 1"]),
    ("train-subset-negative", [*TRAIN, "--train-subset", "-5", "--out", "TMP/run"], None,
     ["--train-subset must be at least 1", "-5"]),
    ("train-lr-nan", [*TRAIN, "--lr", "nan", "--out", "TMP/run"], None, ["lr a number > 0", "nan"]),
    ("train-seed-negative", [*TRAIN, "--seed", "-1", "--out", "TMP/run"], None, ["--seed must be an integer"]),
    # quantize
    ("quantize-eval-images", ["quantize", "--checkpoint", "CKPT", "--ptq", "--eval-images", "-1", "--out",
                              "TMP/q.npz"], None, ["--eval-images must be at least 1, got -1"]),
    ("quantize-qat-lr-nan", ["quantize", "--checkpoint", "CKPT", "--qat", "--lr", "nan", "--out", "TMP/q.npz"], None,
     ["--lr must be a number > 0, got nan"]),
    ("quantize-unwritable", ["quantize", "--checkpoint", "CKPT", "--ptq", "--out", f"{UNWRITABLE}/q.npz"], None,
     ["cannot be written"]),
    ("quantize-parent-is-file", ["quantize", "--checkpoint", "CKPT", "--ptq", "--out", "TMP/afile/q.npz"], _a_file,
     ["afile is a file, not a folder"]),
    ("quantize-out-is-folder", ["quantize", "--checkpoint", "CKPT", "--ptq", "--out", "TMP/adir", "--force"],
     _a_folder, ["adir is a folder"]),
    # reproduce
    ("reproduce-unwritable", ["reproduce", "table1", "--out", f"{UNWRITABLE}/run"], None, ["cannot be written"]),
    ("reproduce-out-is-file", ["reproduce", "table1", "--out", "TMP/afile"], _a_file, ["is a file, not a folder"]),
    ("reproduce-torn-preset", ["reproduce", "table1", "--out", "TMP/run"], _torn_preset,
     ["preset.json is damaged"]),
    # analyze
    ("analyze-checkpoint", ["analyze", "CKPT"], None, ["is not a text file"]),
]


@pytest.mark.parametrize("args,prepare,fragments", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_is_one_error_line_and_exit_2(capsys, tmp_path, digits_checkpoint, args, prepare, fragments):
    if prepare is not None:
        prepare(tmp_path, str(digits_checkpoint))
    capsys.readouterr()
    subst = {"CKPT": str(digits_checkpoint)}
    code = main([subst.get(a, a.replace("TMP", str(tmp_path))) for a in args])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("intrs: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_every_output_is_checked_before_the_first_system_runs(capsys, tmp_path, digits_checkpoint):
    """Issue 15: the second system's existing output was refused only after the first system's whole run."""
    _second_output_exists(tmp_path, None)
    code = main(["certify", "--system", "floatrs-fp,floatrs-quant", "--checkpoint", str(digits_checkpoint),
                 "--ptq-model", str(digits_checkpoint), *SMALL_CERTIFY, "--out", str(tmp_path / "{system}.tsv")])
    assert code == 2 and not (tmp_path / "floatrs-fp.tsv").exists()


def test_train_refuses_its_output_before_the_first_epoch(capsys, tmp_path, monkeypatch):
    """Issue 15: train found an unusable --out only when saving, after a whole epoch."""
    import intrs.training

    def no_epoch(*args, **kwargs):
        raise AssertionError("an epoch ran before the output was checked")

    monkeypatch.setattr(intrs.training, "_train_epoch", no_epoch)
    (tmp_path / "afile").write_text("x")
    assert main([*TRAIN, "--out", str(tmp_path / "afile" / "run")]) == 2
