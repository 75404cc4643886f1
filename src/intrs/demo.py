"""``intrs demo``: what intrs is for, end to end, in a few minutes on a laptop's CPU.

One short run of the whole pipeline on the embedded data (Fashion-MNIST): a noise-augmented ResNet-20, its
integer-only model (QAT, the noisy input saturated to the int8 range so that the exported file computes the
certified function) and its post-training-quantized one, the same test images certified by the paper's three
systems, the speed of float and integer certification measured in this run, sequential certification and the
samples it saved, and the files a device runs: a .tflite checked against LiteRT's reference kernels and a C
tree (``intrs export --format c``). Every step resumes: a re-run reuses what is finished.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import IntrsError
from .progress import Progress, no_progress
from .results import read_results

DEMO_RADII = (0.25, 0.5, 0.75, 1.0)


@dataclass
class DemoSettings:
    sigma: float = 0.25
    images: int = 50  # test images, every 20th (Cohen's choice of test images)
    skip: int = 20
    n0: int = 100  # Cohen's n0
    n: int = 1000
    alpha: float = 0.001
    schedule: str = "short"
    qat_images: int = 4096  # QAT fine-tuning on a subset: one epoch on all of Fashion-MNIST takes ~15 min
    seed: int = 0
    batch: int = 500


@dataclass
class DemoResult:
    lines: list[str] = field(default_factory=list)

    def say(self, text: str = "") -> None:
        self.lines.append(text)


def run_demo(out: Path, settings: DemoSettings, data_dir=None, progress: Progress = no_progress,
             echo=print) -> DemoResult:
    """The demo's steps, each printed as it finishes through ``echo``; returns what it printed."""
    from .certification import CertifySettings, run
    from .checkpoint import load_checkpoint
    from .data import load_dataset
    from .intmodel import load_integer_model, save_integer_model
    from .kernels import instruction_set
    from .quant import QuantizeConfig, quantize
    from .report import analyze
    from .systems import make_system
    from .training import CHECKPOINT_NAME, TrainConfig, train

    result = DemoResult()

    def say(text: str = "") -> None:
        result.say(text)
        echo(text)

    s, out = settings, Path(out)
    model_dir = out / f"fashion-mnist-resnet20-sigma{s.sigma:g}"
    say(f"[1/5] training ResNet-20 on Fashion-MNIST with Gaussian noise sigma={s.sigma:g} ({s.schedule} schedule)")
    ckpt = train(TrainConfig("fashion-mnist", s.sigma, schedule=s.schedule, seed=s.seed), model_dir, data_dir,
                 resume=(model_dir / CHECKPOINT_NAME).exists(), progress=progress)
    say(f"      test accuracy {ckpt.metrics.get('test_accuracy_clean', float('nan')):.3f} clean, "
        f"{ckpt.metrics.get('test_accuracy_noisy', float('nan')):.3f} under noise"
        if getattr(ckpt, "metrics", None) else f"      checkpoint {ckpt.path}")

    say(f"[2/5] quantizing: QAT (IntRS's integer-only model, {s.qat_images:,} images) and PTQ (FloatRS-quant's)")
    paths = {"qat": model_dir / "qat.npz", "ptq": model_dir / "ptq.npz"}
    for method, path in paths.items():
        if not path.exists():
            config = QuantizeConfig(method, epochs=1, train_subset=s.qat_images if method == "qat" else None,
                                    eval_images=200, seed=s.seed, saturate_input=True).check()
            model, _ = quantize(load_checkpoint(ckpt.path), config, data_dir, progress=progress)
            save_integer_model(model, path)
    qat, ptq = load_integer_model(paths["qat"]), load_integer_model(paths["ptq"])

    data = load_dataset("fashion-mnist", "test", data_dir)
    fixed = CertifySettings(s.n0, s.n, s.alpha, s.batch, s.seed, s.skip, s.images)
    say(f"[3/5] certifying {s.images} test images (every {s.skip}th) with each system: n0={s.n0}, n={s.n}, "
        f"alpha={s.alpha:g}")
    sources = {"floatrs-fp": ckpt, "intrs-quant": qat, "floatrs-quant": ptq}
    tsvs, rates = {}, {}
    for name, source in sources.items():
        tsv = out / f"certify-{name}-sigma{s.sigma:g}.tsv"
        fresh = not tsv.exists()
        began = time.perf_counter()
        run("certify", make_system(name, source, s.sigma), data, fixed, tsv, resume=tsv.exists(), progress=progress,
            provenance={"model": str(paths.get({"intrs-quant": "qat", "floatrs-quant": "ptq"}.get(name), ckpt.path))})
        seconds = time.perf_counter() - began
        tsvs[name] = tsv
        # samples per second, where this run computed every row (a resumed run's are partly an earlier one's)
        rates[name] = s.images * (s.n0 + s.n) / seconds if fresh and _rows(tsv) == s.images else None
    say()
    say(f"certified accuracy at radius r (Fashion-MNIST, sigma={s.sigma:g}, {s.images} test images, n={s.n}):")
    say()
    say(analyze([tsvs[name] for name in sources]).to_markdown().rstrip())
    say()
    float_rate, int_rate = rates["floatrs-fp"], rates["intrs-quant"]
    if float_rate and int_rate:
        say(f"speed in this run: FloatRS-fp {float_rate:,.0f} samples/s (PyTorch fp32), IntRS-quant {int_rate:,.0f} "
            f"samples/s (integer kernels, {instruction_set()}): {int_rate / float_rate:.2f}x")
    else:
        say("speed: the rows were reused from an earlier run (delete the TSVs to time them again)")

    say(f"[4/5] sequential CERTIFY (IntRS-quant): decide r = {', '.join(map(str, DEMO_RADII))} with the same "
        f"guarantee, stopping as soon as the votes allow (budget {s.n:,})")
    sequential = CertifySettings(s.n0, s.n, s.alpha, s.batch, s.seed, s.skip, s.images, sequential=True,
                                 radii=DEMO_RADII)
    seq_tsv = out / f"certify-intrs-quant-sequential-sigma{s.sigma:g}.tsv"
    run("certify", make_system("intrs-quant", qat, s.sigma), data, sequential, seq_tsv, resume=seq_tsv.exists(),
        progress=progress, provenance={"model": str(paths["qat"])})
    used = _column_sum(seq_tsv, "n")
    say(f"      {used:,} estimation samples for {s.images} images instead of {s.images * s.n:,} "
        f"({s.images * s.n / max(used, 1):.1f}x fewer); rows: {seq_tsv}")

    say("[5/5] the files a device runs")
    say(_tflite_line(qat, model_dir / "qat.tflite", s, data_dir))
    say(_c_line(qat, model_dir / "c", s))
    say()
    say(f"files: {out} (the TSVs: Cohen's columns; 'intrs analyze FILE' re-reads them), models in {model_dir}")
    return result


def _rows(tsv: Path) -> int:
    return len(read_results(tsv))


def _column_sum(tsv: Path, column: str) -> int:
    return sum(int(row[column]) for row in read_results(tsv))


def _tflite_line(model, path: Path, s: DemoSettings, data_dir) -> str:
    """Export the integer model to TFLite and check it under LiteRT's reference kernels, in one line."""
    from .deploy import export_model, noisy_test_inputs, verify_export

    try:
        if not path.exists():
            path.write_bytes(export_model(model, "tflite"))
        z = noisy_test_inputs(model, 200, s.sigma, s.seed, data_dir)
        report = verify_export(path, model, z, s.sigma, resolvers=("reference",))
    except IntrsError as error:  # LiteRT or flatbuffers not installed: the demo goes on without the check
        return f"      {path}: not checked ({error})"
    agreement = report.results[0]
    verdict = "bit-exact" if report.bit_exact else f"{agreement.logit_mismatches} of {agreement.logits} logits differ"
    return (f"      {path}: LiteRT's reference kernels on {agreement.inputs} noisy test inputs: {verdict} "
            f"with the certified integer engine")


def _c_line(model, tree: Path, s: DemoSettings) -> str:
    from .c_export import export_c, settings_for

    try:
        if not (tree / "export.json").exists():
            facts = export_c(model, settings_for(model, "intrs-quant", sigma=s.sigma, n0=s.n0, n=s.n, alpha=s.alpha,
                                                 max_n=s.n, predict_n=s.n, predict_max_n=s.n, batch=s.batch,
                                                 radii=DEMO_RADII), tree, force=True)
        else:
            import json

            facts = json.loads((tree / "export.json").read_text())
    except IntrsError as error:
        return f"      {tree}: no C tree ({error})"
    return (f"      {tree}: the C tree that certifies on the device ({facts['constant_bytes']['other'] / 1024:,.0f} KiB "
            f"of constants on a microcontroller); 'intrs verify-export {tree} {tree.parent / 'qat.npz'}' builds and checks it")
