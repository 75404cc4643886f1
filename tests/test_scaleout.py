"""Crash safety and Ray: a run killed at any moment resumes to the same bytes; Ray rows equal local rows."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from intrs.certification import CertifySettings, local_rows, run
from intrs.checkpoint import load_checkpoint
from intrs.data import load_dataset
from intrs.intmodel import load_integer_model
from intrs.systems import make_system

ENV = {**os.environ, "GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=1073741824"}


def without_time(path: Path) -> list[str]:
    """Every line of a result file, the time column (6th) removed."""
    lines = path.read_text().splitlines()
    return ["\t".join(line.split("\t")[:5] + line.split("\t")[6:]) for line in lines]


def certify_command(checkpoint, out, *extra):
    return [sys.executable, "-m", "intrs.cli", "certify", "--checkpoint", str(checkpoint), "--n0", "32", "--n",
            "6000", "--batch", "500", "--max", "40", "--out", str(out), *extra]


def test_killed_runs_resume_to_the_same_bytes(tmp_path, digits_checkpoint):
    reference = tmp_path / "reference.tsv"
    subprocess.run(certify_command(digits_checkpoint, reference), check=True, env=ENV, capture_output=True)
    out = tmp_path / "killed.tsv"
    rng = np.random.default_rng(2026)
    kills = 0
    for attempt in range(6):
        extra = ["--resume"] if out.exists() else []
        process = subprocess.Popen(certify_command(digits_checkpoint, out, *extra), env=ENV,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(float(rng.uniform(1.5, 4.0)))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait()
    finish = subprocess.run(certify_command(digits_checkpoint, out, "--resume"), env=ENV, capture_output=True,
                            text=True)
    assert finish.returncode == 0, finish.stderr
    assert kills >= 2  # the test killed runs mid-way, not only finished ones
    assert without_time(out) == without_time(reference)
    indices = [line.split("\t")[0] for line in out.read_text().splitlines()[1:]]
    assert indices == [str(i) for i in range(40)]  # none lost, none duplicated, in order


ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_rows_equal_local_rows(ray_local, tmp_path, digits_checkpoint, digits_int_models):
    from intrs.scaleout import RayExecutor

    data = load_dataset("digits", "test")
    settings = CertifySettings(n0=16, n=200, alpha=0.01, batch_size=64, seed=5, max_images=6)
    systems = [make_system("floatrs-fp", load_checkpoint(digits_checkpoint), 0.25),
               make_system("intrs-quant", load_integer_model(digits_int_models["qat"]), 0.25)]
    for system in systems:
        local = run("certify", system, data, settings, tmp_path / f"local-{system.name}.tsv")
        remote = run("certify", system, data, settings, tmp_path / f"ray-{system.name}.tsv",
                     executor=RayExecutor(workers=2))
        assert without_time(local) == without_time(remote)


class DiesOnce:
    """A base classifier whose first call in a fresh process kills that process, once per marker file."""

    def __init__(self, base, marker: Path):
        self.base, self.marker = base, marker

    def __call__(self, batch):
        if not self.marker.exists():
            self.marker.write_text("killed")
            os._exit(1)
        return self.base(batch)


def test_a_killed_ray_worker_is_restarted_and_loses_nothing(ray_local, tmp_path, digits_checkpoint):
    from ray import cloudpickle

    from intrs.scaleout import RayExecutor

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    data = load_dataset("digits", "test")
    settings = CertifySettings(n0=16, n=200, alpha=0.01, batch_size=64, seed=1, max_images=5)
    system = make_system("floatrs-fp", load_checkpoint(digits_checkpoint), 0.25)
    local = list(local_rows("certify", system, data, settings, list(range(5))))
    system.base = DiesOnce(system.base, tmp_path / "marker")
    remote = list(RayExecutor(workers=2)("certify", system, data, settings, list(range(5))))
    assert (tmp_path / "marker").exists()
    strip = lambda rows: [{k: v for k, v in row.items() if k != "time"} for row in rows]
    assert strip(remote) == strip(local)
