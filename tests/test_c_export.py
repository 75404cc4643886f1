"""The C export (intrs export --format c): a device's PREDICT and CERTIFY equal the Python API's, everywhere.

The ladder: the generator's words equal numpy's PCG64 streams; the sampler's draws (a forced tie included)
equal TableSampler's; the example program's rows equal the API's on trained models (IntRS-quant and
FloatRS-quant) and a ResNet-20, on this machine's kernels, on aarch64 under qemu-aarch64, and on a Cortex-M4
under qemu-system-arm; and the Cortex-M binary holds no floating point, by a check that catches a planted one.
"""

import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from intrs import kernels
from intrs.c_export import CSettings, MODES, build, compare_rows, example_rows, export_c, python_rows, write_inputs
from intrs.data import load_dataset
from intrs.intmodel import load_integer_model
from intrs.noise import DiscreteGaussianNoise, RoundedGaussianNoise, TableSampler, numpy_generator
from intrs.rng import STAGE_ESTIMATE, STAGE_PREDICT, STAGE_SELECT, stream_seed

sys.path.insert(0, str(Path(__file__).parent))
from test_kernels import random_model  # noqa: E402

HERE = Path(__file__).parent
SMALL = dict(n0=16, n=120, alpha=0.01, max_n=200, predict_n=120, predict_max_n=200, batch=48, radii=(0.05, 0.1, 0.2))
MISSING = "MISSING {what}: scripts/setup.sh installs Debian's {package} where apt exists"


def needs(*tools: str, package: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.skip(MISSING.format(what=" and ".join(missing), package=package))


@pytest.fixture(autouse=True)
def _compiled_kernels():
    if kernels.library() is None or shutil.which("make") is None:
        pytest.skip("the C export needs the compiled kernels and make (a C compiler at install)")


_KERNEL_OBJECTS: dict[str, Path] = {}  # by machine: the kernels' objects of the first tree built, for the others


def make(tree: Path, *args: str) -> str:
    """``build`` with the kernels' objects of an earlier tree of this session copied in (they depend on the
    kernels alone, and vnni.c takes half a minute to compile)."""
    machine = next((a.split("=", 1)[1] for a in args if a.startswith("MACHINE=")), platform.machine())
    if "cortex-m" not in args and machine in _KERNEL_OBJECTS and _KERNEL_OBJECTS[machine].parents[2] != tree:
        objects = tree / "build" / machine / "kernels"
        shutil.copytree(_KERNEL_OBJECTS[machine], objects, dirs_exist_ok=True)
        for path in objects.glob("*.o"):
            path.touch()  # newer than the sources the export just copied
    output = build(tree, *args)
    if "cortex-m" not in args and machine not in _KERNEL_OBJECTS:
        _KERNEL_OBJECTS[machine] = tree / "build" / machine / "kernels"
    return output


def _run(tree: Path, mode: str, inputs, seed: int, first: int, step: int, runner=()) -> list[dict]:
    run = subprocess.run([*runner, str(tree / "intrs_example"), mode, str(inputs[0]), str(inputs[1]), str(seed),
                          str(first), str(step)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    return example_rows(run.stdout)


def _agree(tree, model, facts, images, labels, seed, first, step, modes=MODES, runner=()) -> None:
    inputs = write_inputs(tree / "inputs", images, labels)
    indices = [first + i * step for i in range(len(images))]
    for mode in modes:
        device = _run(tree, mode, inputs, seed, first, step, runner)
        python = python_rows(model, facts, images, labels, indices, seed, mode)
        assert compare_rows(device, python) == [], mode


# ---------------------------------------------------------------- the generator and the sampler


@pytest.fixture(scope="module")
def probe_tree(tmp_path_factory):
    """A small random model's tree with tests/c_export_probe.c built as its program."""
    tree = tmp_path_factory.mktemp("probe") / "tree"
    model = random_model(5, 1, 4, 6, "global", False)
    export_c(model, CSettings("intrs-quant", DiscreteGaussianNoise(0.5), **SMALL), tree)
    make(tree, f"EXAMPLE={HERE / 'c_export_probe.c'}", "PROGRAM=probe")
    return tree, model


@pytest.mark.parametrize("seed,idx,stage", [(0, 0, STAGE_SELECT), (1, 36122, STAGE_SELECT), (0, 65131, STAGE_ESTIMATE),
                                            (2 ** 32 - 1, 2 ** 32, STAGE_PREDICT), (2 ** 32, 7, STAGE_ESTIMATE),
                                            (2 ** 64 - 1, 2 ** 64 - 1, 2), (12345678901234567, 2 ** 40 + 3, 1)])
def test_the_device_generator_gives_numpys_pcg64_stream_words(probe_tree, seed, idx, stage):
    tree, _ = probe_tree
    run = subprocess.run([str(tree / "probe"), "words", str(seed), str(idx), str(stage), "300"], capture_output=True,
                         text=True, check=True)
    words = [int(line) for line in run.stdout.split()]
    expected = numpy_generator(stream_seed(seed, idx, stage)).bit_generator.random_raw(300)
    assert words == [int(w) for w in expected]


def _draws(tree: Path, image: np.ndarray, seed: int, idx: int, stage: int, copies: int, batch: int) -> np.ndarray:
    path = tree / "image.u8"
    image.astype(np.uint8).tofile(path)
    run = subprocess.run([str(tree / "probe"), "draws", str(path), str(seed), str(idx), str(stage), str(copies),
                          str(batch)], capture_output=True, text=True, check=True)
    return np.array([int(v) for v in run.stdout.split()]).reshape(copies, *image.shape)


def _python_draws(noise, image: np.ndarray, seed: int, idx: int, stage: int, copies: int, batch: int) -> np.ndarray:
    generator, parts, done = noise.generator(seed, idx, stage), [], 0
    while done < copies:
        size = min(batch, copies - done)
        parts.append(noise.perturb(torch.from_numpy(image), size, generator).numpy())
        done += size
    return np.concatenate(parts)


def test_the_device_sampler_draws_what_table_sampler_draws(probe_tree):
    tree, model = probe_tree
    image = np.random.default_rng(1).integers(0, 256, size=model.input_shape).astype(np.uint8)
    device = _draws(tree, image, 99, 4, STAGE_ESTIMATE, 50, 48)
    assert np.array_equal(device, _python_draws(DiscreteGaussianNoise(0.5), image, 99, 4, STAGE_ESTIMATE, 50, 48))


def test_a_word_equal_to_a_threshold_takes_its_low_word_from_after_the_batch_as_python_does(tmp_path):
    """Ties (probability ~2^-50 per coordinate) forced: a table whose thresholds' high words are words the stream
    will draw, in the first and the second batch, so that the device must take each tie's low word from after
    its batch's words, in index order, and leave the generator past them, as TableSampler does."""
    model = random_model(5, 1, 4, 6, "global", False)
    noise = DiscreteGaussianNoise(0.5)
    seed, idx, stage, batch = 7, 3, STAGE_SELECT, 3
    words = numpy_generator(stream_seed(seed, idx, stage)).bit_generator.random_raw(400)
    table = noise.table
    forced = TableSampler.__new__(TableSampler)
    forced.__dict__.update(table.__dict__)
    forced.high, forced.low = table.high.copy(), table.low.copy()
    for position in (5, 17, 40, 130):  # copies 0, 0, 1 (batch 1) and 3 (batch 2) of 36 values each
        word = words[position]
        j = int(np.searchsorted(forced.high, word))
        if j < len(forced.high) - 1 and forced.high[j] != word:
            forced.high[j] = word
    starts = np.arange(2 ** forced.guide_bits, dtype=np.uint64) << np.uint64(64 - forced.guide_bits)
    forced.guide = np.searchsorted(forced.high, starts, side="left").astype(np.int32)
    noise.table = forced
    tree = tmp_path / "tree"
    export_c(model, CSettings("intrs-quant", noise, **SMALL), tree)
    make(tree, f"EXAMPLE={HERE / 'c_export_probe.c'}", "PROGRAM=probe")
    image = np.random.default_rng(2).integers(0, 256, size=model.input_shape).astype(np.uint8)
    device = _draws(tree, image, seed, idx, stage, 8, batch)
    python = _python_draws(noise, image, seed, idx, stage, 8, batch)
    assert np.array_equal(device, python)
    # and the ties did happen: the stream's words at those positions are thresholds' high words
    assert np.isin(words[[5, 17, 40, 130]], forced.high).all()


# ---------------------------------------------------------------- the example program on this machine


def test_host_certify_and_predict_equal_the_python_api_on_trained_models(digits_int_models, tmp_path):
    """IntRS-quant (the QAT model, discrete Gaussian) and FloatRS-quant (the PTQ model, rounded Gaussian) on
    digits test images: every row of all four modes (fixed n and sequential) as the API's, votes included."""
    data = load_dataset("digits", "test")
    images, labels = data.images[:6].numpy(), data.labels[:6].numpy()
    for system, path, noise in (("intrs-quant", digits_int_models["qat"], DiscreteGaussianNoise(0.25)),
                                ("floatrs-quant", digits_int_models["ptq"], RoundedGaussianNoise(0.25))):
        model = load_integer_model(path)
        tree = tmp_path / system
        facts = export_c(model, CSettings(system, noise, **SMALL), tree)
        make(tree)
        _agree(tree, model, facts, images, labels, seed=2 ** 63 + 5, first=0, step=1)


def test_host_certify_on_a_resnet20_equals_the_python_api(tmp_path, calibrated_resnet20):
    _, model = calibrated_resnet20((1, 28, 28), seed=3)
    tree = tmp_path / "resnet20"
    settings = dict(SMALL, n0=8, n=40, batch=16)
    facts = export_c(model, CSettings("intrs-quant", DiscreteGaussianNoise(0.25), **settings), tree)
    make(tree)
    images = np.random.default_rng(4).integers(0, 256, size=(2, 1, 28, 28)).astype(np.uint8)
    _agree(tree, model, facts, images, np.array([1, 2]), seed=11, first=100, step=20, modes=("certify",))


def test_an_export_refuses_a_nonempty_folder_without_force(tmp_path):
    from intrs.errors import ConfigError

    model = random_model(5, 1, 4, 6, "global", False)
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="--force"):
        export_c(model, CSettings("intrs-quant", DiscreteGaussianNoise(0.5), **SMALL), tmp_path / "tree")
    assert (tmp_path / "tree" / "keep.txt").read_text() == "mine"


def test_the_tree_holds_the_packages_own_kernel_and_runtime_files(tmp_path):
    from intrs import c_export

    model = random_model(5, 1, 4, 6, "global", False)
    export_c(model, CSettings("intrs-quant", DiscreteGaussianNoise(0.5), **SMALL), tmp_path / "tree")
    for name in c_export.KERNEL_SOURCES:
        assert (tmp_path / "tree" / "kernels" / name).read_bytes() == (c_export._CSRC / name).read_bytes()
    for name in c_export.DEVICE_SOURCES:
        assert (tmp_path / "tree" / name).read_bytes() == (c_export._DEVICE / name).read_bytes()


# ---------------------------------------------------------------- other machines, emulated


@pytest.fixture(scope="module")
def fashion_tree(fashion_qat, tmp_path_factory):
    """The small trained Fashion-MNIST CNN (28x28x1) exported for IntRS, with three test images."""
    path, _ = fashion_qat
    model = load_integer_model(path)
    tree = tmp_path_factory.mktemp("fashion") / "tree"
    settings = dict(SMALL, n0=8, n=40, max_n=64, predict_n=40, predict_max_n=64, batch=16)
    facts = export_c(model, CSettings("intrs-quant", DiscreteGaussianNoise(0.25), **settings), tree)
    data = load_dataset("fashion-mnist", "test")
    return tree, model, facts, data.images[:3].numpy(), data.labels[:3].numpy()


@pytest.mark.parametrize("cpu,kernels_used", [("max", "neon-i8mm"), ("cortex-a76", "neon-dotprod"),
                                              ("cortex-a53", "portable")])
def test_aarch64_build_under_qemu_equals_the_python_api(fashion_tree, cpu, kernels_used):
    needs("aarch64-linux-gnu-gcc", "qemu-aarch64", package="gcc-aarch64-linux-gnu and qemu-user")
    tree, model, facts, images, labels = fashion_tree
    make(tree, "CC=aarch64-linux-gnu-gcc", "MACHINE=aarch64", "LDFLAGS=-static")
    inputs = write_inputs(tree / "inputs", images, labels)
    run = subprocess.run(["qemu-aarch64", "-cpu", cpu, str(tree / "intrs_example"), "certify", *map(str, inputs),
                          "5", "0", "1"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert f"kernels {kernels_used}" in run.stderr
    python = python_rows(model, facts, images, labels, [0, 1, 2], 5, "certify")
    assert compare_rows(example_rows(run.stdout), python) == []


def _cortex_m(tree: Path, mode: str, inputs, seed: int, count: int) -> subprocess.CompletedProcess:
    args = ",".join(f"arg={a}" for a in ("intrs_example", mode, *map(str, inputs), str(seed), "0", "1", str(count)))
    return subprocess.run(["qemu-system-arm", "-M", "mps2-an386", "-nographic", "-semihosting-config",
                           f"enable=on,target=native,{args}", "-kernel", str(tree / "intrs_example.elf")],
                          capture_output=True, text=True, timeout=900)


def test_cortex_m4_build_certifies_as_the_host_does_and_holds_no_floating_point(fashion_tree):
    """A Cortex-M4 without FPU (-mfloat-abi=soft) on QEMU's MPS2 AN386 board, semihosting for files and output:
    CERTIFY and sequential PREDICT rows equal the API's; `make check-integer-only` finds no FPU instruction and
    no call into soft-float or libm in the whole linked binary (newlib included)."""
    needs("arm-none-eabi-gcc", "qemu-system-arm", package="gcc-arm-none-eabi, libnewlib-arm-none-eabi and qemu-system-arm")
    tree, model, facts, images, labels = fashion_tree
    print(build(tree, "cortex-m"))
    inputs = write_inputs(tree / "inputs", images[:2], labels[:2])
    for mode in ("certify", "predict-sequential"):
        run = _cortex_m(tree, mode, inputs, 5, 2)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "kernels portable" in run.stdout + run.stderr
        rows = example_rows("\n".join(line for line in run.stdout.splitlines() if not line.startswith("intrs_example:")))
        assert compare_rows(rows, python_rows(model, facts, images[:2], labels[:2], [0, 1], 5, mode)) == []
    check = subprocess.run(["make", "-s", "-C", str(tree), "check-integer-only"], capture_output=True, text=True)
    print(check.stdout)
    assert check.returncode == 0 and "integer-only" in check.stdout, check.stdout + check.stderr


@pytest.mark.parametrize("planted", ["soft", "hard"])
def test_the_integer_only_check_catches_a_planted_float_operation(fashion_tree, tmp_path, planted):
    """The same check on the same tree with one multiplication added: a double one as a soft-float call
    (__aeabi_dmul), and a float one as an FPU instruction (compiled for a Cortex-M4F's FPU). It must fail."""
    needs("arm-none-eabi-gcc", package="gcc-arm-none-eabi and libnewlib-arm-none-eabi")
    tree = tmp_path / "planted"
    shutil.copytree(fashion_tree[0], tree, ignore=shutil.ignore_patterns("build", "intrs_example*"))
    args = [f"EXTRA={HERE / 'c_export_planted_float.c'}"]
    if planted == "hard":
        # the hard-float newlib lives in its own multilib; the planted file alone is compiled for the FPU
        subprocess.run(["arm-none-eabi-gcc", "-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=softfp", "-mfpu=fpv4-sp-d16",
                        "-O2", "-DPLANTED=float", "-c", str(HERE / "c_export_planted_float.c"), "-o", str(tmp_path / "planted.o")],
                       check=True)
        args = [f"EXTRA={tmp_path / 'planted.o'}"]
    build(tree, "cortex-m", *args)
    check = subprocess.run(["make", "-s", "-C", str(tree), "check-integer-only"], capture_output=True, text=True)
    assert check.returncode != 0, check.stdout + check.stderr
    assert "FLOATING POINT FOUND" in check.stdout
    assert ("__aeabi_dmul" in check.stdout) if planted == "soft" else ("vmul.f32" in check.stdout)


def test_the_runtime_and_the_kernels_it_runs_allocate_nothing(fashion_tree, tmp_path):
    """No malloc in the per-sample path: the objects of the runtime, the portable kernels and the sampler call no
    allocator, and the runtime calls the interpreter's arena entry, never the allocating one."""
    needs("arm-none-eabi-gcc", "arm-none-eabi-nm", package="gcc-arm-none-eabi")
    tree = fashion_tree[0]
    allocators = {"malloc", "calloc", "realloc", "free", "aligned_alloc", "posix_memalign", "intrs_run"}
    for source in ("runtime.c", "kernels/portable.c", "kernels/table_draw.c"):
        obj = tmp_path / (Path(source).stem + ".o")
        subprocess.run(["arm-none-eabi-gcc", "-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=soft", "-O2", "-std=c11",
                        "-I", str(tree), "-c", str(tree / source), "-o", str(obj)], check=True)
        undefined = set(subprocess.run(["arm-none-eabi-nm", "-u", str(obj)], capture_output=True, text=True,
                                       check=True).stdout.split()) - {"U"}
        assert not undefined & allocators, (source, undefined & allocators)


# ---------------------------------------------------------------- the command line


def test_export_c_and_verify_export_pass_and_a_tree_of_another_model_fails(digits_int_models, tmp_path, capsys):
    from intrs.cli import main

    small = ["--n0", "10", "--n", "60", "--max-n", "60", "--predict-n", "60", "--predict-max-n", "60", "--batch", "20",
             "--radii", "0.1,0.2"]
    tree = tmp_path / "tree"
    assert main(["export", str(digits_int_models["qat"]), "--format", "c", "--out", str(tree), *small]) == 0
    out = capsys.readouterr().out
    assert "KiB on a microcontroller" in out and (tree / "model.c").is_file()
    assert main(["verify-export", str(tree), str(digits_int_models["qat"]), "--images", "2", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1].startswith("PASS") and "| certify | 2 | yes |" in out
    # the PTQ model has the same shape but other weights: its API rows are not the tree's
    assert main(["verify-export", str(tree), str(digits_int_models["ptq"]), "--images", "2", "--seed", "3"]) == 1
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("FAIL")
    # an existing tree is kept without --force
    assert main(["export", str(digits_int_models["qat"]), "--format", "c", "--out", str(tree), *small]) == 2
    assert "--force" in capsys.readouterr().err and (tree / "model.c").is_file()


def test_the_device_runtime_source_has_no_floating_point_type():
    """The runtime and the example written without float or double anywhere (the binary check above proves the
    build; this keeps the source honest on machines without the Cortex-M toolchain)."""
    import re

    from intrs import c_export

    for name in c_export.DEVICE_SOURCES:
        if name.endswith((".c", ".h")):
            code = re.sub(r"/\*.*?\*/|//[^\n]*|\"(\\.|[^\"])*\"", "", (c_export._DEVICE / name).read_text(), flags=re.S)
            assert not re.search(r"\b(float|double|_Float\d+)\b", code), name


@pytest.mark.parametrize("cpu,kernels_used", [("Haswell", "avx2"), ("Nehalem", "portable")])
def test_the_x86_build_on_cpus_without_avx512_picks_what_they_have_and_answers_the_same(digits_int_models, tmp_path,
                                                                                         cpu, kernels_used):
    """The x86-64 tree holds the AVX2 and VNNI data too: on an emulated CPU without AVX-512 (Haswell) or without
    AVX2 (Nehalem) dispatch grants only what it has, and the rows stay the API's."""
    if platform.machine() != "x86_64":
        pytest.skip("an x86-64 build")
    needs("qemu-x86_64", package="qemu-user")
    model = load_integer_model(digits_int_models["qat"])
    tree = tmp_path / "tree"
    facts = export_c(model, CSettings("intrs-quant", DiscreteGaussianNoise(0.25), **SMALL), tree)
    make(tree)
    data = load_dataset("digits", "test")
    images, labels = data.images[:3].numpy(), data.labels[:3].numpy()
    inputs = write_inputs(tree / "inputs", images, labels)
    run = subprocess.run(["qemu-x86_64", "-cpu", cpu, str(tree / "intrs_example"), "certify", *map(str, inputs), "7",
                          "0", "1"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert f"kernels {kernels_used}" in run.stderr
    assert compare_rows(example_rows(run.stdout), python_rows(model, facts, images, labels, [0, 1, 2], 7, "certify")) == []
