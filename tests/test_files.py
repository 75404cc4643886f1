"""Writing outputs: whole or not at all, on a full disk too (issue 15: torn checkpoints, 0-byte files under the final
name, temporaries left behind, tracebacks)."""

import errno
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import intrs.files
from intrs.checkpoint import load_checkpoint, save_checkpoint
from intrs.cli import main
from intrs.errors import OutputError
from intrs.files import check_output, file_sha256, write_text_atomically
from intrs.intmodel import load_integer_model, save_integer_model
from intrs.results import read_results


class _FullDisk(io.FileIO):
    """A file on a disk with ``room`` bytes left: writes past it fail with ENOSPC, as a full disk's do."""

    room = 0

    def write(self, data):
        if _FullDisk.room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        count = min(len(data), _FullDisk.room)
        _FullDisk.room -= count
        return super().write(bytes(data[:count]))


def _full_disk_open(room):
    def fake_open(path, mode="r", encoding=None, newline=None):
        _FullDisk.room = room
        raw = io.BufferedWriter(_FullDisk(path, mode.replace("b", "")))
        return raw if "b" in mode else io.TextIOWrapper(raw, encoding=encoding, newline=newline)
    return fake_open


def _leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


@pytest.mark.parametrize("room", [0, 10, 5000])
def test_a_full_disk_leaves_the_previous_file_and_no_temporary(tmp_path, monkeypatch, digits_checkpoint,
                                                               digits_int_models, room):
    """Checkpoint, integer model and settings writers: ENOSPC part-way leaves the old file whole, removes the
    temporary, and is one OutputError naming the file and the reason."""
    checkpoint, model = load_checkpoint(digits_checkpoint), load_integer_model(digits_int_models["ptq"])
    targets = {"checkpoint.pt": lambda p: save_checkpoint(p, checkpoint),
               "model.npz": lambda p: save_integer_model(model, p),
               "preset.json": lambda p: write_text_atomically(p, '{"preset": {"name": "ci"}}\n' + " " * 8000)}
    for name, write in targets.items():
        write(tmp_path / name)
    before = {name: file_sha256(tmp_path / name) for name in targets}
    monkeypatch.setattr(intrs.files, "open", _full_disk_open(room), raising=False)
    for name, write in targets.items():
        with pytest.raises(OutputError) as caught:
            write(tmp_path / name)
        message = str(caught.value)
        assert message == f"cannot write {tmp_path / name}: No space left on device", message
    monkeypatch.undo()
    assert _leftovers(tmp_path, set(targets)) == []
    assert {name: file_sha256(tmp_path / name) for name in targets} == before
    assert load_checkpoint(tmp_path / "checkpoint.pt").epoch == checkpoint.epoch


def test_a_full_disk_writes_no_file_under_the_final_name(tmp_path, monkeypatch, digits_int_models):
    """Issue 15: export left a 0-byte file under the final name and quantize left q.npz.tmp.npz."""
    model = load_integer_model(digits_int_models["ptq"])
    monkeypatch.setattr(intrs.files, "open", _full_disk_open(1000), raising=False)
    with pytest.raises(OutputError, match="No space left on device"):
        save_integer_model(model, tmp_path / "q.npz")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_certify_on_a_full_disk_stops_with_one_line_and_resumes(capsys, tmp_path, monkeypatch, digits_checkpoint):
    """A row that cannot be written stops the run with one error line (was: OSError from results.py's __exit__);
    the rows before it are kept and --resume completes the file with the rows of an uninterrupted run."""
    import intrs.results

    args = ["certify", "--checkpoint", str(digits_checkpoint), "--n0", "16", "--n", "64", "--alpha", "0.01",
            "--batch", "32", "--max", "6"]
    assert main([*args, "--out", str(tmp_path / "whole.tsv")]) == 0
    real_fsync, calls = os.fsync, []

    def fsync(descriptor):  # the header and 3 rows reach the disk, then it is full
        calls.append(descriptor)
        if len(calls) > 4:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(descriptor)

    monkeypatch.setattr(intrs.results.os, "fsync", fsync)
    capsys.readouterr()
    out = tmp_path / "cut.tsv"
    assert main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"intrs: error: cannot write {out}: No space left on device"), err
    monkeypatch.undo()
    assert main([*args, "--out", str(out), "--resume"]) == 0
    strip = lambda rows: [{k: v for k, v in r.items() if k != "time"} for r in rows]
    assert strip(read_results(out)) == strip(read_results(tmp_path / "whole.tsv"))
    assert _leftovers(tmp_path, {"whole.tsv", "whole.tsv.json", "cut.tsv", "cut.tsv.json"}) == []


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux") or os.geteuid() != 0,
                    reason="mounting a small tmpfs needs root on Linux")
def test_certify_on_a_real_full_tmpfs_resumes(tmp_path, digits_checkpoint):
    """The same on a real file system that fills up: two free pages hold the settings and about 40 rows."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("this container may not mount a tmpfs")
    try:
        filler = mount / "filler"
        with open(filler, "wb", buffering=0) as handle:  # unbuffered: the write that fails is the last
            try:
                while True:
                    handle.write(b"\0" * 4096)
            except OSError:
                pass
        os.truncate(filler, max(0, filler.stat().st_size - 2 * 4096))  # a page of settings, one of rows
        out = mount / "c.tsv"
        args = [sys.executable, "-m", "intrs.cli", "certify", "--checkpoint", str(digits_checkpoint), "--n0", "8",
                "--n", "16", "--alpha", "0.1", "--batch", "16", "--max", "80", "--out", str(out)]
        first = subprocess.run(args, capture_output=True, text=True)
        assert first.returncode == 2, first.stderr
        lines = [line for line in first.stderr.splitlines() if line.startswith("intrs:")]
        assert lines and "No space left on device" in lines[-1] and "Traceback" not in first.stderr
        kept = len(read_results(out))
        assert 0 < kept < 80
        filler.unlink()
        second = subprocess.run(args + ["--resume"], capture_output=True, text=True)
        assert second.returncode == 0, second.stderr
        assert [int(r["idx"]) for r in read_results(out)] == list(range(80))
        assert sorted(p.name for p in mount.iterdir()) == ["c.tsv", "c.tsv.json"]
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_check_output_refuses_what_cannot_be_written(tmp_path):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    assert check_output(tmp_path / "new" / "deeper" / "out.tsv") == tmp_path / "new" / "deeper" / "out.tsv"
    assert not (tmp_path / "new").exists()  # a check creates nothing
    for path, folder, fragment in [(tmp_path / "afile" / "x.tsv", False, "afile is a file, not a folder"),
                                   (tmp_path / "adir", False, "is a folder"),
                                   (tmp_path / "afile", True, "is a file, not a folder"),
                                   (Path("/sys/intrs-test/x.tsv"), False, "not writable")]:
        with pytest.raises(OutputError, match=fragment):
            check_output(path, folder=folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "afile"]


def test_file_sha256_is_of_the_content(tmp_path):
    (tmp_path / "a").write_bytes(b"abc")
    assert file_sha256(tmp_path / "a") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    np.save(tmp_path / "b.npy", np.arange(3))
    shutil.copy(tmp_path / "b.npy", tmp_path / "c.npy")
    assert file_sha256(tmp_path / "b.npy") == file_sha256(tmp_path / "c.npy")


def test_a_run_whose_settings_cannot_be_written_leaves_no_file(tmp_path, monkeypatch):
    """Issue 15: certify on a full disk left an empty y.tsv beside y.tsv.tmp."""
    from intrs.results import ResultWriter

    monkeypatch.setattr(intrs.files, "open", _full_disk_open(0), raising=False)
    with pytest.raises(OutputError, match="y.tsv.json: No space left on device"):
        with ResultWriter(tmp_path / "y.tsv", ["idx"], {"seed": 0}):
            pass
    assert list(tmp_path.iterdir()) == []
