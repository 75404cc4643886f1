"""The paper's experiments (SPEC section 8) as resumable runs that write data, then tables and figures.

``Reproduction(preset, out_dir).run(name)`` runs one experiment (or ``all``):
models are trained or quantized once and reused (checkpoints), certification
rows are appended and resumed (``intrs.results``), attack results are written per
eps, so an interrupted run picks up where it stopped and never recomputes a
finished part. Every experiment writes its numbers as CSV and as a markdown table
in the paper's layout, and its figures as PNG; ``intrs.report`` turns a run
folder into one HTML page.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .attacks import pgd, to_pixel_grid
from .certification import CertifySettings, run
from .checkpoint import Checkpoint, load_checkpoint
from .choices import EXPERIMENTS
from .data import PIXEL_MAX, ImageSet, load_dataset
from .errors import ConfigError, OutputExistsError
from .files import check_output, write_atomically, write_text_atomically
from .intmodel import IntegerModel, load_integer_model, save_integer_model
from .noise import DiscreteGaussianNoise, GaussianNoise, numpy_generator
from .progress import Progress, no_progress
from .quant import QuantModel, QuantizeConfig, quantize
from .results import certified_accuracy, radius_grid, read_results
from .rng import random_stream, stream_seed
from .systems import make_system
from .tables import markdown_table
from .training import CHECKPOINT_NAME, TrainConfig, train

SYSTEM_LABELS = {"floatrs-fp": "FloatRS-fp", "intrs-quant": "IntRS-quant", "floatrs-quant": "FloatRS-quant"}
STAGE_ATTACK = 40  # random streams of the attacks: (seed, STAGE_ATTACK, eps index)
REFERENCE_SIGMA = 0.25  # the paper's one sigma for Table 1, Figure 11 and the attacks (train = certify sigma)


@dataclass(frozen=True)
class Preset:
    """Every setting of a reproduction; ``reductions`` says how it departs from the paper."""

    name: str
    dataset: str
    arch: str = "resnet20"
    width: int = 16
    schedule: str = "paper"
    train_epochs: int | None = None
    train_subset: int | None = None
    sigmas: tuple[float, ...] = (0.12, 0.25, 0.50, 1.00)
    mismatch_train_sigmas: tuple[float, ...] = (0.12, 0.25)
    images: int = 500  # certified test images (every skip-th)
    skip: int = 20
    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001
    batch: int = 1000
    table1_ns: tuple[int, ...] = (100, 1000, 10_000, 100_000)
    table1_images: int = 500
    alphas: tuple[float, ...] = (0.1, 0.01, 0.001)
    max_radius: float = 1.5
    mismatch_max_radius: float = 1.75
    linf_eps: tuple[float, ...] = (0.001, 0.005, 0.01, 0.02, 0.03, 0.05)
    l2_eps: tuple[float, ...] = (0.0, 0.12, 0.25, 0.50, 1.00)
    attack_images: int = 500
    predict_n: int = 1000
    attack_samples: int = 8  # noise samples per PGD step against a smoothed classifier
    qat_epochs: int = 5
    qat_subset: int | None = None
    noisy_images: int = 4
    reductions: tuple[str, ...] = ()


PRESETS: dict[str, Preset] = {
    "ci": Preset(
        "ci", "fashion-mnist", arch="resnet8", width=8, schedule="ci", train_epochs=2, train_subset=2048,
        images=8, skip=50, n0=16, n=100, batch=100, table1_ns=(100, 200), table1_images=8, linf_eps=(0.01, 0.03, 0.05),
        attack_images=16, predict_n=100, attack_samples=2, qat_epochs=1, qat_subset=1024, noisy_images=3,
        reductions=("a test of the pipeline, not of the method: ResNet-8 of width 8, 2 epochs on 2,048 images, "
                    "8 test images, n = 100",)),
    "fmnist": Preset(
        "fmnist", "fashion-mnist", schedule="short", images=50, skip=200, n=1000, table1_ns=(100, 1000, 10_000),
        table1_images=30, attack_images=100, attack_samples=4, qat_epochs=1, qat_subset=20_000,
        reductions=(
            "data: Fashion-MNIST (28x28x1) instead of CIFAR-10; ResNet-20 with 1 input channel",
            "training: the 'short' schedule (3 epochs on 30,000 images, lr 0.1 / 10 after 2) instead of 90 epochs",
            "QAT: 1 epoch on 20,000 images at lr 0.01",
            "certification: 50 test images (every 200th) and n = 1,000 samples instead of 500 images and "
            "n = 100,000 (the largest certifiable radius at alpha = 0.001 is then sigma * 2.46)",
            "Table 1: n up to 10,000 on 30 images (the paper: up to 100,000 on the test set)",
            "attacks: 100 test images; PGD L2 averages 4 noise samples per step",
        )),
    "paper-cifar10": Preset("paper-cifar10", "cifar10"),
    "paper-caltech101": Preset("paper-caltech101", "caltech101", arch="resnet50", max_radius=2.0,
                               mismatch_max_radius=2.0, batch=200),
}


def preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def _sigma_tag(sigma: float) -> str:
    return f"{sigma:.2f}"


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    """A CSV with "\n" line endings (the csv module's default is "\r\n"), written atomically."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_text_atomically(path, out.getvalue())


def save_figure(fig, path: Path, dpi: int) -> None:
    """A matplotlib figure as a PNG, written atomically."""
    write_atomically(path, lambda handle: fig.savefig(handle, format="png", dpi=dpi))


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


class Reproduction:
    """One run folder for one preset: models, data, tables, figures."""

    def __init__(self, chosen: Preset, out_dir: str | Path, data_dir: str | Path | None = None, seed: int = 0,
                 progress: Progress = no_progress, log: Callable[[str], None] = lambda message: None,
                 device: torch.device | None = None):
        self.preset, self.out, self.data_dir, self.seed = chosen, Path(out_dir), data_dir, seed
        self.device = device  # training and the certified systems (intrs.devices); attacks stay on the CPU
        self.progress, self.log = progress, log
        check_output(self.out, folder=True)
        settings = {"preset": asdict(chosen), "seed": seed, "data_dir": str(data_dir) if data_dir else None}
        settings_path = self.out / "preset.json"
        if settings_path.exists():
            try:
                previous = json.loads(settings_path.read_text())
                previous["preset"]["name"]
            except (OSError, ValueError, KeyError, TypeError):
                raise OutputExistsError(f"{settings_path} is damaged (not the settings 'intrs reproduce' writes): "
                                        "remove it to go on with the run in this folder, or choose another --out") \
                    from None
            if previous.get("preset") != json.loads(json.dumps(settings["preset"])) or previous.get("seed") != seed:
                raise OutputExistsError(f"{self.out} holds a run of other settings ({previous['preset']['name']}, "
                                        f"seed {previous.get('seed')}): choose another --out")
        else:  # atomically: a torn preset.json would make the folder unreadable
            write_text_atomically(settings_path, json.dumps(settings, indent=2) + "\n")
        self._test: ImageSet | None = None

    # ------------------------------------------------------------ shared parts

    @property
    def test_set(self) -> ImageSet:
        if self._test is None:
            self._test = load_dataset(self.preset.dataset, "test", self.data_dir)
        return self._test

    def float_model(self, sigma: float) -> Checkpoint:
        """The base classifier trained with noise sigma (trained once, resumed if interrupted)."""
        folder = self.out / "models" / f"float-sigma{_sigma_tag(sigma)}"
        p = self.preset
        config = TrainConfig(p.dataset, sigma, arch=p.arch, width=p.width, schedule=p.schedule,
                             epochs=p.train_epochs, train_subset=p.train_subset, seed=self.seed)
        checkpoint = folder / CHECKPOINT_NAME
        if checkpoint.exists():
            previous = load_checkpoint(checkpoint)
            if previous.epoch >= config.resolved_schedule(self.test_set.info.paper_batch_size).epochs:
                return previous
        self.log(f"training {p.arch} at sigma={sigma:g} into {folder}")
        return train(config, folder, self.data_dir, resume=checkpoint.exists(), progress=self.progress,
                     device=self.device)

    def int_model(self, sigma: float, method: str) -> IntegerModel:
        """The QAT (IntRS) or PTQ (FloatRS-quant) integer model of the sigma-trained float model."""
        path = self.out / "models" / f"{method}-sigma{_sigma_tag(sigma)}.npz"
        if path.exists():
            return load_integer_model(path)
        checkpoint = self.float_model(sigma)
        self.log(f"quantizing ({method.upper()}) the sigma={sigma:g} model into {path}")
        config = QuantizeConfig(method, epochs=self.preset.qat_epochs, train_subset=self.preset.qat_subset,
                                seed=self.seed, eval_images=200)
        model, _ = quantize(checkpoint, config, self.data_dir, progress=self.progress)
        save_integer_model(model, path)
        return model

    def system(self, name: str, train_sigma: float, sigma: float):
        if name == "floatrs-fp":
            return make_system(name, self.float_model(train_sigma), sigma, device=self.device)
        return make_system(name, self.int_model(train_sigma, "qat" if name == "intrs-quant" else "ptq"), sigma,
                           device=self.device)

    def smooth(self, folder: Path, mode: str, name: str, train_sigma: float, sigma: float, alpha: float | None = None,
               n: int | None = None, images: int | None = None) -> Path:
        """One certify/predict TSV (resumed if interrupted)."""
        p = self.preset
        alpha = p.alpha if alpha is None else alpha
        n = p.n if n is None else n
        tag = f"{name}-train{_sigma_tag(train_sigma)}-sigma{_sigma_tag(sigma)}-alpha{alpha:g}-n{n}"
        path = folder / f"{mode}-{tag}.tsv"
        settings = CertifySettings(p.n0, n, alpha, p.batch, self.seed, p.skip, images or p.images)
        run(mode, self.system(name, train_sigma, sigma), self.test_set, settings, path,
            provenance={"train_sigma": train_sigma, "preset": p.name}, resume=path.exists(), progress=self.progress)
        return path

    def folder(self, name: str) -> Path:
        path = self.out / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def run(self, name: str) -> list[Path]:
        """Run one experiment (or 'all'); returns the folders written."""
        names = EXPERIMENTS if name == "all" else (name,)
        for experiment in names:
            if experiment not in EXPERIMENTS:
                raise ConfigError(f"unknown experiment {experiment!r}: choose one of {', '.join(EXPERIMENTS)} or all")
        done = []
        for experiment in names:
            self.log(f"== {experiment} ({self.preset.name})")
            getattr(self, "run_" + experiment.replace("-", "_"))(self.folder(experiment))
            done.append(self.out / experiment)
        return done

    # ------------------------------------------------------------ Table 1: PREDICT against n

    def run_table1(self, folder: Path) -> None:
        p, sigma = self.preset, REFERENCE_SIGMA
        rows = []
        for n in p.table1_ns:
            row = [n]
            for name in ("floatrs-fp", "intrs-quant"):
                results = read_results(self.smooth(folder, "predict", name, sigma, sigma, n=n, images=p.table1_images))
                correct = np.mean([r["correct"] == "1" for r in results])
                abstain = np.mean([r["predict"] == "-1" for r in results])
                seconds = np.mean([float(r["time"]) for r in results])
                row += [f"{correct:.2f}", f"{abstain:.2f}", f"{seconds:.3f}"]
            rows.append(row)
        header = ["n", "FloatRS-fp correct", "abstain", "s/image", "IntRS-quant correct", "abstain", "s/image"]
        write_csv(folder / "table1.csv", header, rows)
        write_text_atomically(folder / "table1.md",
            f"Table 1: PREDICT with sigma = {sigma}, alpha = {p.alpha} ({p.table1_images} test images)\n\n"
            + markdown_table(header, rows))

    # ------------------------------------------------------------ Tables 2 and 3: certified accuracy by sigma

    def _accuracy_blocks(self, entries: list[tuple[str, str, Path]], radii: list[float]) -> tuple[list, str]:
        """Rows (label, row label, accuracies) and the markdown in the paper's layout, one block per label."""
        csv_rows, blocks = [], []
        by_label: dict[str, list] = {}
        for label, row_label, path in entries:
            results = read_results(path)
            accuracies = [certified_accuracy(results, r) for r in radii]
            # the CSV's column is numeric: "sigma = 0.12" is 0.12 there, the markdown keeps the words
            csv_rows.append([label, row_label.split(" = ")[-1]] + [f"{a:.4f}" for a in accuracies])
            by_label.setdefault(label, []).append([row_label] + [f"{a:.2f}" for a in accuracies])
        for label, rows in by_label.items():
            blocks.append(markdown_table([label] + [f"r = {r:g}" for r in radii], rows))
        return csv_rows, "\n".join(blocks)

    def _gap_table(self, csv_rows: list, radii: list[float], base: str, other: str) -> str:
        table = {(r[0], r[1]): [float(v) for v in r[2:]] for r in csv_rows}
        rows = []
        for (label, row_label), values in table.items():
            if label.startswith(other) and (label.replace(other, base, 1), row_label) in table:
                reference = table[(label.replace(other, base, 1), row_label)]
                rows.append([label.replace(other, f"{other} - {base}", 1) + f", sigma = {row_label}"]
                            + [f"{a - b:+.2f}" for a, b in zip(values, reference)])
        return markdown_table(["gap"] + [f"r = {r:g}" for r in radii], rows) if rows else ""

    def _accuracy_figure(self, path: Path, curves: list[tuple[str, Path]], title: str) -> None:
        plt = _plt()
        grid = np.linspace(0, max(self.preset.max_radius, 0.25) + 0.5, 200)
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for label, tsv in curves:
            results = read_results(tsv)
            ax.plot(grid, [certified_accuracy(results, r) for r in grid], label=label)
        ax.set_xlabel("L2 radius (pixel / 255 units, whole 8-bit steps for the integer systems)")
        ax.set_ylabel("certified accuracy")
        ax.set_title(title)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        save_figure(fig, path, dpi=120)
        plt.close(fig)

    def run_certify_sigma(self, folder: Path) -> None:
        p = self.preset
        radii = radius_grid(p.max_radius)[1:]  # r = 0 is the clean accuracy: Tables 2/3 start at 0.25
        entries = []
        for name in ("floatrs-fp", "intrs-quant", "floatrs-quant"):
            for sigma in p.sigmas:
                entries.append((SYSTEM_LABELS[name], f"sigma = {sigma:.2f}", self.smooth(folder, "certify", name, sigma,
                                                                                      sigma)))
        csv_rows, markdown = self._accuracy_blocks(entries, radii)
        write_csv(folder / "certified_accuracy.csv", ["system", "sigma"] + [f"{r:g}" for r in radii], csv_rows)
        gap = self._gap_table(csv_rows, radii, "FloatRS-fp", "IntRS-quant")
        write_text_atomically(folder / "certified_accuracy.md",
            f"Tables 2/3: certified accuracy on {p.dataset}, train sigma = certify sigma, n = {p.n}, alpha = {p.alpha}, "
            f"{p.images} test images\n\n{markdown}\nIntRS-quant minus FloatRS-fp, per cell:\n\n{gap}")
        for name in ("floatrs-fp", "intrs-quant", "floatrs-quant"):
            self._accuracy_figure(folder / f"certified_accuracy_{name}.png",
                                  [(f"sigma = {e[1].split('= ')[1]}", e[2]) for e in entries
                                   if e[0] == SYSTEM_LABELS[name]], f"{SYSTEM_LABELS[name]} on {p.dataset}")
        self._accuracy_figure(folder / f"certified_accuracy_sigma{REFERENCE_SIGMA:g}.png",
                              [(e[0], e[2]) for e in entries if e[1] == f"sigma = {REFERENCE_SIGMA:.2f}"],
                              f"sigma = {REFERENCE_SIGMA} on {p.dataset}: the three systems")

    # ------------------------------------------------------------ Tables 4 and 5: train sigma != certify sigma

    def run_sigma_mismatch(self, folder: Path) -> None:
        p = self.preset
        radii = radius_grid(p.mismatch_max_radius)[1:]
        entries = []
        for train_sigma in p.mismatch_train_sigmas:
            for name in ("floatrs-fp", "intrs-quant"):
                for sigma in p.sigmas:
                    entries.append((f"{SYSTEM_LABELS[name]} (trained at sigma = {train_sigma:.2f})",
                                    f"sigma = {sigma:.2f}", self.smooth(folder, "certify", name, train_sigma, sigma)))
        csv_rows, markdown = self._accuracy_blocks(entries, radii)
        write_csv(folder / "certified_accuracy.csv", ["system", "certify sigma"] + [f"{r:g}" for r in radii],
                  csv_rows)
        write_text_atomically(folder / "certified_accuracy.md",
            f"Tables 4/5: base models trained at sigma in {list(p.mismatch_train_sigmas)}, certified at each sigma "
            f"(n = {p.n}, alpha = {p.alpha}, {p.images} test images)\n\n{markdown}")

    # ------------------------------------------------------------ Figure 11: alpha

    def run_alpha(self, folder: Path) -> None:
        p, sigma = self.preset, REFERENCE_SIGMA
        radii = radius_grid(p.max_radius)
        entries = [(SYSTEM_LABELS[name], f"alpha = {alpha:g}", self.smooth(folder, "certify", name, sigma, sigma,
                                                                           alpha=alpha))
                   for name in ("floatrs-fp", "intrs-quant") for alpha in p.alphas]
        csv_rows, markdown = self._accuracy_blocks(entries, radii)
        write_csv(folder / "certified_accuracy.csv", ["system", "alpha"] + [f"{r:g}" for r in radii], csv_rows)
        write_text_atomically(folder / "certified_accuracy.md",
            f"Figure 11: certified accuracy for several alpha, sigma = {sigma}, n = {p.n}\n\n{markdown}")
        self._accuracy_figure(folder / "certified_accuracy_alpha.png", [(f"{e[0]}, {e[1]}", e[2]) for e in entries],
                              f"alpha on {p.dataset}, sigma = {sigma}")

    # ------------------------------------------------------------ Figures 1 and 9: PGD L-inf on base classifiers

    def _attack_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        count = min(self.preset.attack_images, len(self.test_set))
        return self.test_set.images[:count], self.test_set.labels[:count]

    def _incremental(self, path: Path, header: list[str]) -> dict[str, list[str]]:
        """Rows already in a per-eps result file, keyed by eps (finished parts are never recomputed)."""
        if not path.exists():
            write_csv(path, header, [])
            return {}
        with open(path, newline="") as handle:
            return {row[0]: row for row in list(csv.reader(handle))[1:]}

    def _append(self, path: Path, row: list) -> None:
        """One finished row more: the file is rewritten whole, so a failure never leaves a torn row."""
        with open(path, newline="") as handle:
            rows = list(csv.reader(handle))
        write_csv(path, rows[0], rows[1:] + [row])

    def run_pgd_linf(self, folder: Path) -> None:
        p, sigma = self.preset, REFERENCE_SIGMA
        images, labels = self._attack_set()
        float_model = self.float_model(sigma).model.eval()
        integer = self.int_model(sigma, "qat")
        twin = QuantModel.from_integer_model(integer).eval()
        from . import engine

        path = folder / "accuracy.csv"
        header = ["eps", "float accuracy", "quantized accuracy (integer engine)"]
        finished = self._incremental(path, header)
        examples = {}
        for i, eps in enumerate((0.0,) + tuple(p.linf_eps)):
            generator = random_stream(self.seed, STAGE_ATTACK, i)
            clean = images.to(torch.float32) / PIXEL_MAX
            adv_float = pgd(float_model, clean, labels, eps, "linf", 7, generator=generator)
            adv_quant = pgd(lambda x: twin(x * PIXEL_MAX), clean, labels, eps, "linf", 7, generator=generator)
            pixels_float = to_pixel_grid(adv_float, images, eps, "linf")
            pixels_quant = to_pixel_grid(adv_quant, images, eps, "linf")
            examples[eps] = (pixels_float[:4], pixels_quant[:4])
            if f"{eps:g}" in finished:
                continue
            with torch.no_grad():
                acc_float = float((float_model(pixels_float.float() / PIXEL_MAX).argmax(1) == labels).float().mean())
            acc_quant = float((engine.predict(integer, pixels_quant.to(torch.int32)) == labels).float().mean())
            self._append(path, [f"{eps:g}", f"{acc_float:.4f}", f"{acc_quant:.4f}"])
        rows = list(self._incremental(path, header).values())
        write_text_atomically(folder / "accuracy.md",
            f"Figure 1: PGD L-inf (7 steps, random start) against the base classifiers trained at sigma = {sigma}; "
            f"the adversarial image is truncated to the 8-bit grid; the quantized model is attacked through its "
            f"fake-quantized twin and judged by the integer engine ({len(labels)} test images)\n\n"
            + markdown_table(header, rows))
        self._line_figure(folder / "accuracy.png", rows, ["float", "quantized (integer engine)"], "eps (L-inf)",
                          "accuracy", "PGD L-inf on the base classifiers")
        self._image_grid(folder / "adversarial_images.png", images[:4], examples)

    def _line_figure(self, path: Path, rows: list[list[str]], labels: list[str], xlabel: str, ylabel: str,
                     title: str) -> None:
        plt = _plt()
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        xs = [float(r[0]) for r in rows]
        for column, label in enumerate(labels, start=1):
            ax.plot(xs, [float(r[column]) for r in rows], marker="o", label=label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, 1)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        save_figure(fig, path, dpi=120)
        plt.close(fig)

    def _image_grid(self, path: Path, clean: torch.Tensor, examples: dict) -> None:
        plt = _plt()
        columns = list(examples)
        fig, axes = plt.subplots(2 * len(clean), len(columns), figsize=(1.6 * len(columns), 3.2 * len(clean)),
                                 squeeze=False)
        for j, eps in enumerate(columns):
            for i in range(len(clean)):
                for k, kind in enumerate(("float", "quantized")):
                    ax = axes[2 * i + k][j]
                    ax.imshow(_as_picture(examples[eps][k][i]), cmap="gray", vmin=0, vmax=PIXEL_MAX)
                    ax.set_xticks([])
                    ax.set_yticks([])
                    if i == 0 and k == 0:
                        ax.set_title(f"eps={eps:g}", fontsize=8)
                    if j == 0:
                        ax.set_ylabel(kind, fontsize=7)
        fig.tight_layout()
        save_figure(fig, path, dpi=100)
        plt.close(fig)

    # ------------------------------------------------------------ Figure 10: PGD L2 against smoothed classifiers

    def run_pgd_l2(self, folder: Path) -> None:
        p, sigma = self.preset, REFERENCE_SIGMA
        images, labels = self._attack_set()
        float_model = self.float_model(sigma).model.eval()
        twin = QuantModel.from_integer_model(self.int_model(sigma, "qat")).eval()
        path = folder / "accuracy.csv"
        header = ["eps", "FloatRS-fp accuracy", "IntRS-quant accuracy", "FloatRS-fp abstain", "IntRS-quant abstain"]
        finished = self._incremental(path, header)
        systems = {name: self.system(name, sigma, sigma).smoothed(p.batch) for name in ("floatrs-fp", "intrs-quant")}
        discrete = DiscreteGaussianNoise(sigma)
        for i, eps in enumerate(p.l2_eps):
            if f"{eps:g}" in finished:
                continue
            generator = random_stream(self.seed, STAGE_ATTACK, 100 + i)
            clean = images.to(torch.float32) / PIXEL_MAX
            gaussian = lambda x: x + sigma * torch.randn(x.shape, generator=generator)
            adv_float = pgd(float_model, clean, labels, eps, "l2", 20, generator=generator,
                            samples=p.attack_samples, noise=gaussian)
            lattice = numpy_generator(stream_seed(self.seed, STAGE_ATTACK, 200 + i))
            integer_noise = lambda x: x + torch.from_numpy(discrete.table.sample(tuple(x.shape), lattice)).float() / PIXEL_MAX
            adv_int = pgd(lambda x: twin(x * PIXEL_MAX), clean, labels, eps, "l2", 20, generator=generator,
                          samples=p.attack_samples, noise=integer_noise)
            row = [f"{eps:g}"]
            verdicts = {}
            for name, adversarial in (("floatrs-fp", adv_float), ("intrs-quant", adv_int)):
                pixels = to_pixel_grid(adversarial, images, eps, "l2")
                predictions = [systems[name].predict(pixels[j], p.predict_n, 0.001, self.seed, j).prediction
                               for j in self.progress(range(len(labels)), total=len(labels),
                                                      desc=f"PREDICT {name} eps={eps:g}", unit="img")]
                verdicts[name] = (np.mean([pr == int(l) for pr, l in zip(predictions, labels)]),
                                  np.mean([pr == -1 for pr in predictions]))
            row += [f"{verdicts['floatrs-fp'][0]:.4f}", f"{verdicts['intrs-quant'][0]:.4f}",
                    f"{verdicts['floatrs-fp'][1]:.4f}", f"{verdicts['intrs-quant'][1]:.4f}"]
            self._append(path, row)
        rows = list(self._incremental(path, header).values())
        write_text_atomically(folder / "accuracy.md",
            f"Figure 10: PGD L2 (20 steps, {p.attack_samples} noise samples per step) against the smoothed classifiers, "
            f"then PREDICT (n = {p.predict_n}, alpha = 0.001, sigma = {sigma}), {len(labels)} test images\n\n"
            + markdown_table(header, rows))
        self._line_figure(folder / "accuracy.png", rows, ["FloatRS-fp", "IntRS-quant"], "eps (L2)",
                          "PREDICT accuracy", "PGD L2 against the smoothed classifiers")

    # ------------------------------------------------------------ Figures 12 and 13: noisy images

    def run_noisy_images(self, folder: Path) -> None:
        p = self.preset
        plt = _plt()
        images = self.test_set.images[: p.noisy_images]
        fig, axes = plt.subplots(2 * len(images), len(p.sigmas) + 1, figsize=(1.8 * (len(p.sigmas) + 1),
                                                                              3.6 * len(images)), squeeze=False)
        for i, pixels in enumerate(images):
            for k, kind in enumerate(("Gaussian", "discrete Gaussian")):
                for j, sigma in enumerate((0.0,) + tuple(p.sigmas)):
                    ax = axes[2 * i + k][j]
                    if sigma == 0:
                        picture = pixels
                    elif kind == "Gaussian":
                        noise = GaussianNoise(sigma)
                        picture = noise.perturb(pixels, 1, noise.generator(self.seed + i))[0] * PIXEL_MAX
                    else:
                        noise = DiscreteGaussianNoise(sigma)
                        picture = noise.perturb(pixels, 1, noise.generator(self.seed + i))[0]
                    ax.imshow(_as_picture(picture), cmap="gray", vmin=0, vmax=PIXEL_MAX)
                    ax.set_xticks([])
                    ax.set_yticks([])
                    if i == 0 and k == 0:
                        ax.set_title("clean" if sigma == 0 else f"sigma={sigma:g}", fontsize=8)
                    if j == 0:
                        ax.set_ylabel(kind, fontsize=7)
        fig.tight_layout()
        save_figure(fig, folder / "noisy_images.png", dpi=100)
        plt.close(fig)
        write_text_atomically(folder / "noisy_images.md",
            f"Figures 12/13: test images of {p.dataset} with noise at each sigma: continuous Gaussian (the paper's "
            "figure) and the discrete Gaussian IntRS adds on the integer grid (clipped to [0, 1] for display only)\n")


def _as_picture(pixels: torch.Tensor) -> np.ndarray:
    """(C, H, W) pixel values in [0, 255] as an image matplotlib shows: 2-D grey or (H, W, 3) uint8."""
    array = pixels.detach().cpu().to(torch.float32).clamp(0, PIXEL_MAX).numpy()
    return array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0).astype(np.uint8)
