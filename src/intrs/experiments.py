"""The paper's experiments (SPEC section 8) as resumable runs that write data: TSV, CSV, NPZ and JSON.

``Reproduction(preset, out_dir).run(name)`` runs one experiment (or ``all``):
models are trained or quantized once and reused (checkpoints), certification
rows are appended and resumed (``intrs.results``), attack results are written per
eps, so an interrupted run picks up where it stopped and never recomputes a
finished part. Every experiment writes its numbers (CSV), the pictures it made
(NPZ) and a facts.json of what ran; ``intrs.report`` renders the tables in the
paper's layout, the figures and one HTML page from those files alone.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .about import software
from .attacks import pgd, to_pixel_grid
from .certification import CertifySettings, plan
from .checkpoint import Checkpoint, load_checkpoint
from .choices import EXPERIMENTS
from .data import PIXEL_MAX, ImageSet, load_dataset
from .errors import ConfigError, OutputExistsError
from .files import check_output, write_atomically, write_text_atomically
from .intmodel import IntegerModel, load_integer_model, save_integer_model
from .noise import DiscreteGaussianNoise, GaussianNoise, numpy_generator
from .progress import Progress, no_progress
from .quant import QuantModel, QuantizeConfig, quantize
from .results import FACTS_NAME, radius_grid
from .rng import random_stream, stream_seed
from .systems import make_system
from .tables import csv_text
from .training import CHECKPOINT_NAME, TrainConfig, train

SYSTEM_LABELS = {"floatrs-fp": "FloatRS-fp", "intrs-quant": "IntRS-quant", "floatrs-quant": "FloatRS-quant"}
STAGE_ATTACK = 40  # random streams of the attacks: (seed, STAGE_ATTACK, eps index)
EXAMPLE_IMAGES = 4  # test images whose adversarial versions are kept for the figure
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
    sequential: bool = False  # CERTIFY sequentially (docs/sequential.md) at the table's radii, n the budget max_n
    reductions: tuple[str, ...] = ()


PRESETS: dict[str, Preset] = {
    "ci": Preset(
        "ci", "fashion-mnist", arch="resnet8", width=8, schedule="ci", train_epochs=2, train_subset=2048,
        images=8, skip=50, n0=16, n=100, batch=100, table1_ns=(100, 200), table1_images=8, linf_eps=(0.01, 0.03, 0.05),
        attack_images=16, predict_n=100, attack_samples=2, qat_epochs=1, qat_subset=1024, noisy_images=3,
        reductions=("a test of the pipeline, not of the method: ResNet-8 of width 8, 2 epochs on 2,048 images, "
                    "8 test images, n = 100",)),
    "fmnist": Preset(
        "fmnist", "fashion-mnist", schedule="short", images=500, skip=20, n=100_000, sequential=True,
        table1_ns=(100, 1000, 10_000), table1_images=500, attack_images=500, attack_samples=4, qat_epochs=1,
        qat_subset=20_000,
        reductions=(
            "data: Fashion-MNIST (28x28x1) instead of CIFAR-10; ResNet-20 with 1 input channel",
            "training: the 'short' schedule (3 epochs on 30,000 images, lr 0.1 / 10 after 2) instead of 90 epochs",
            "QAT: 1 epoch on 20,000 images at lr 0.01",
            "certification: sequential CERTIFY (anytime-valid, docs/sequential.md) deciding every radius of the "
            "table on 500 test images (every 20th), stopping when all are decided or at n = 100,000, instead of "
            "fixed n = 100,000 (the same guarantee at each radius; the radius column is sigma PhiInv(lower bound) "
            "at the stopping time)",
            "Table 1: n up to 10,000 (the paper: up to 100,000) on 500 test images",
            "attacks: PGD L2 averages 4 noise samples per step",
        )),
    "paper-cifar10": Preset("paper-cifar10", "cifar10"),
    "paper-caltech101": Preset("paper-caltech101", "caltech101", arch="resnet50", max_radius=2.0,
                               mismatch_max_radius=2.0, batch=200),
}


# The paper's protocol, field by field (CIFAR-10, SPEC section 8): what every reduction departs from.
PAPER_PROTOCOL = Preset("paper", "cifar10")
_NOT_PROTOCOL = {"name", "dataset", "reductions"}


def departures(chosen: Preset) -> list[str]:
    """Every setting of ``chosen`` that differs from the paper's protocol, as "field: paper -> this run"
    (with the data set first), so no reduction goes unlisted, n0 included."""
    found = [f"dataset: {PAPER_PROTOCOL.dataset} -> {chosen.dataset}"] if chosen.dataset != PAPER_PROTOCOL.dataset \
        else []
    for name, paper in asdict(PAPER_PROTOCOL).items():
        value = getattr(chosen, name)
        if name not in _NOT_PROTOCOL and value != paper and not (isinstance(paper, tuple) and tuple(value) == paper):
            found.append(f"{name}: {_setting(paper)} -> {_setting(value)}")
    return found


def _setting(value) -> str:
    if isinstance(value, tuple):
        return "(" + ", ".join(_setting(v) for v in value) + ")"
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def _sigma_tag(sigma: float) -> str:
    return f"{sigma:.2f}"


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    """A CSV (``tables.csv_text``), written atomically."""
    write_text_atomically(path, csv_text(header, rows))


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
            settings["software"] = previous.get("software", [])
        # the software of every start of the run (intrs version, commit, date), and its departures from the
        # paper's protocol, for the report; written atomically: a torn preset.json would make the folder unreadable
        settings["software"] = settings.get("software", []) + [software()]
        settings["departures"] = departures(chosen)
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

    def source(self, name: str, train_sigma: float) -> Checkpoint | IntegerModel:
        """The model system ``name`` certifies: the float model, or its QAT (IntRS) or PTQ integer model."""
        if name == "floatrs-fp":
            return self.float_model(train_sigma)
        return self.int_model(train_sigma, "qat" if name == "intrs-quant" else "ptq")

    def system(self, name: str, train_sigma: float, sigma: float):
        return make_system(name, self.source(name, train_sigma), sigma, device=self.device)

    def cell(self, folder: Path, mode: str, name: str, train_sigma: float, sigma: float, alpha: float | None = None,
             n: int | None = None, images: int | None = None,
             radii: list[float] | None = None) -> tuple[Path, CertifySettings]:
        """One certify/predict TSV's path and settings. A sequential preset's CERTIFY decides ``radii`` (the
        table's columns) with n as its budget; PREDICT and fixed-n presets take n samples."""
        p = self.preset
        alpha = p.alpha if alpha is None else alpha
        n = p.n if n is None else n
        sequential = p.sequential and mode == "certify" and radii is not None
        budget = f"maxn{n}" if sequential else f"n{n}"
        tag = f"{name}-train{_sigma_tag(train_sigma)}-sigma{_sigma_tag(sigma)}-alpha{alpha:g}-{budget}"
        settings = CertifySettings(p.n0, n, alpha, p.batch, self.seed, p.skip, images or p.images,
                                   sequential=sequential,
                                   radii=tuple(r for r in radii if r > 0) if sequential else None)
        return folder / f"{mode}-{tag}.tsv", settings

    def smooth(self, folder: Path, mode: str, name: str, train_sigma: float, sigma: float, **cell) -> Path:
        """One certify/predict TSV (resumed if interrupted); ``cell`` as ``Reproduction.cell`` takes it."""
        path, settings = self.cell(folder, mode, name, train_sigma, sigma, **cell)
        job = plan(mode, name, self.source(name, train_sigma), self.test_set, settings, path, sigma=sigma,
                   device=self.device, train_sigma=train_sigma, provenance={"preset": self.preset.name})
        return job.run(resume=path.exists(), progress=self.progress)

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

    def write_facts(self, folder: Path, **facts) -> None:
        """FOLDER/facts.json: what ran that preset.json does not say (the cells and their TSVs, the radii,
        the images an attack used); ``intrs.report`` renders the folder from it and the data files."""
        write_text_atomically(folder / FACTS_NAME, json.dumps(facts, indent=2) + "\n")

    # ------------------------------------------------------------ Table 1: PREDICT against n

    def run_table1(self, folder: Path) -> None:
        p, sigma = self.preset, REFERENCE_SIGMA
        cells = [(n, name) for n in p.table1_ns for name in ("floatrs-fp", "intrs-quant")]
        paths = [self.cell(folder, "predict", name, sigma, sigma, n=n, images=p.table1_images)[0] for n, name in cells]
        self.write_facts(folder, sigma=sigma, images=p.table1_images,
                         cells=[{"n": n, "system": SYSTEM_LABELS[name], "tsv": path.name}
                                for (n, name), path in zip(cells, paths)])
        for n, name in cells:
            self.smooth(folder, "predict", name, sigma, sigma, n=n, images=p.table1_images)

    # ------------------------------------------------------------ Tables 2-5 and Figure 11: certified accuracy

    def _certify_cells(self, folder: Path, row_name: str, cells: list[tuple[str, str, str, float, float, dict]],
                       radii: list[float], order: Callable | None = None, **facts) -> None:
        """The cells of a certified-accuracy table, each (label, row value, system, train sigma, sigma, cell
        settings) in the table's order: facts.json names each cell's TSV first (so ``intrs report`` renders
        an unfinished run's finished cells), then the TSVs are certified (sorted by ``order`` if given)."""
        self.write_facts(folder, row_name=row_name, radii=radii, **facts, cells=[
            {"label": label, "row": value,
             "tsv": self.cell(folder, "certify", name, train, sigma, radii=radii, **extra)[0].name}
            for label, value, name, train, sigma, extra in cells])
        for label, value, name, train, sigma, extra in sorted(cells, key=order) if order else cells:
            self.smooth(folder, "certify", name, train, sigma, radii=radii, **extra)

    def run_certify_sigma(self, folder: Path) -> None:
        p = self.preset
        names = ("floatrs-fp", "intrs-quant", "floatrs-quant")
        rank = {sigma: i for i, sigma in enumerate(_priority(p.sigmas))}
        cheap_first = ("intrs-quant", "floatrs-quant", "floatrs-fp")  # the integer systems run ~3x faster
        # an interrupted run has whole sigmas, the reference one first, and within a sigma the quick cells
        self._certify_cells(folder, "sigma", [(SYSTEM_LABELS[name], f"{sigma:.2f}", name, sigma, sigma, {})
                                              for name in names for sigma in p.sigmas], radius_grid(p.max_radius),
                            order=lambda cell: (rank[cell[4]], cheap_first.index(cell[2])),
                            reference_sigma=REFERENCE_SIGMA)

    def run_sigma_mismatch(self, folder: Path) -> None:
        p = self.preset
        self._certify_cells(folder, "certify sigma", [
            (f"{SYSTEM_LABELS[name]} (trained at sigma = {train_sigma:.2f})", f"{sigma:.2f}", name, train_sigma, sigma,
             {}) for train_sigma in p.mismatch_train_sigmas for name in ("floatrs-fp", "intrs-quant")
            for sigma in p.sigmas], radius_grid(p.mismatch_max_radius))

    def run_alpha(self, folder: Path) -> None:
        p, sigma = self.preset, REFERENCE_SIGMA
        self._certify_cells(folder, "alpha", [
            (SYSTEM_LABELS[name], f"{alpha:g}", name, sigma, sigma, {"alpha": alpha})
            for name in ("floatrs-fp", "intrs-quant") for alpha in p.alphas], radius_grid(p.max_radius), sigma=sigma)

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
        shown = min(EXAMPLE_IMAGES, len(labels))
        examples = {"clean": images[:shown].numpy().astype(np.uint8)}
        epsilons = (0.0,) + tuple(p.linf_eps)
        for i, eps in enumerate(epsilons):
            generator = random_stream(self.seed, STAGE_ATTACK, i)
            clean = images.to(torch.float32) / PIXEL_MAX
            adv_float = pgd(float_model, clean, labels, eps, "linf", 7, generator=generator)
            adv_quant = pgd(lambda x: twin(x * PIXEL_MAX), clean, labels, eps, "linf", 7, generator=generator)
            pixels_float = to_pixel_grid(adv_float, images, eps, "linf")
            pixels_quant = to_pixel_grid(adv_quant, images, eps, "linf")
            examples[f"float_{i}"] = pixels_float[:shown].numpy().astype(np.uint8)
            examples[f"quantized_{i}"] = pixels_quant[:shown].numpy().astype(np.uint8)
            if f"{eps:g}" in finished:
                continue
            with torch.no_grad():
                acc_float = float((float_model(pixels_float.float() / PIXEL_MAX).argmax(1) == labels).float().mean())
            acc_quant = float((engine.predict(integer, pixels_quant.to(torch.int32)) == labels).float().mean())
            self._append(path, [f"{eps:g}", f"{acc_float:.4f}", f"{acc_quant:.4f}"])
        write_atomically(folder / "adversarial_images.npz", lambda handle: np.savez_compressed(handle, **examples))
        self.write_facts(folder, sigma=sigma, images=len(labels), steps=7, epsilons=list(epsilons))

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
            integer_noise = lambda x: x + torch.from_numpy(discrete.draw(tuple(x.shape), lattice)).float() / PIXEL_MAX
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
        self.write_facts(folder, sigma=sigma, images=len(labels), steps=20, predict_alpha=0.001)

    # ------------------------------------------------------------ Figures 12 and 13: noisy images

    def run_noisy_images(self, folder: Path) -> None:
        """The pictures of Figures 12/13 as data: for each test image, clean then each sigma, continuous
        Gaussian (in pixel units) and the discrete Gaussian IntRS adds."""
        p = self.preset
        images = self.test_set.images[: p.noisy_images]
        pictures = {"gaussian": [], "discrete": []}
        for i, pixels in enumerate(images):
            gaussian, discrete = [pixels.to(torch.float32)], [pixels.to(torch.float32)]
            for sigma in p.sigmas:
                noise = GaussianNoise(sigma)
                gaussian.append(noise.perturb(pixels, 1, noise.generator(self.seed + i))[0] * PIXEL_MAX)
                lattice = DiscreteGaussianNoise(sigma)
                discrete.append(lattice.perturb(pixels, 1, lattice.generator(self.seed + i))[0].to(torch.float32))
            pictures["gaussian"].append(torch.stack(gaussian).numpy())
            pictures["discrete"].append(torch.stack(discrete).numpy())
        write_atomically(folder / "noisy_images.npz", lambda handle: np.savez_compressed(
            handle, gaussian=np.stack(pictures["gaussian"]).astype(np.float32),
            discrete=np.stack(pictures["discrete"]).astype(np.float32), sigmas=np.array(p.sigmas)))
        self.write_facts(folder, sigmas=list(p.sigmas), images=len(images))


def _priority(sigmas: tuple[float, ...]) -> list[float]:
    """The order sigmas are computed in: the reference sigma first, then the largest (the tables keep the
    paper's order; this order only decides what an interrupted run already has)."""
    return sorted(sigmas, key=lambda sigma: (sigma != REFERENCE_SIGMA, -sigma))
