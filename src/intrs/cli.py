"""The ``intrs`` command line: flags in, library calls out.

Every command is a thin layer over the Python API. A user mistake (an
``IntrsError`` or a bad flag) becomes one line on stderr and exit status 2, never
a traceback. The flags are built from torch-free tables (``intrs.choices``) and
each command imports the library parts it calls, so help and a bad flag answer at
once instead of after importing torch and scipy (seconds).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from . import __version__
from .choices import (DATASET_NAMES, EXPERIMENTS, EXPORT_FORMATS, INTRS_NOISES, PRESET_NAMES, SCHEDULES, SYSTEM_NAMES,
                      schedule_help)
from .errors import ConfigError, IntrsError, OutputExistsError, missing_dependency
from .files import check_output

RADIUS_NOTE = ("Radii are L2 norms in [0,1] pixel units (pixel / 255), as in Cohen et al. and the paper; "
               "R = sigma * PhiInv(pA_lower), rounded down, never up.")


def _progress(iterable, **kwargs):
    """A bar on a terminal only (disable=None: none when stderr is a file or a pipe, so logs hold no bars);
    a finished bar stays, with its elapsed time."""
    from tqdm import tqdm

    return tqdm(iterable, dynamic_ncols=True, leave=True, disable=None, file=sys.stderr, **kwargs)


_DEVICE_OPTION = click.option("--device", default="cpu", show_default=True, metavar="cpu|cuda|cuda:N|auto",
                              help="Where the model runs (auto: CUDA where present). docs/gpu.md says what runs "
                                   "where; float rows differ between CPU and GPU, integer rows do not.")


def _device(spec):
    """--device as a torch device; one that is absent here is a ConfigError (one line, exit status 2)."""
    from .devices import resolve_device

    return resolve_device(spec)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="intrs")
def cli() -> None:
    """Integer-arithmetic-only certified L2 robustness for quantized neural networks (IntRS, ICCV 2021)."""


# ---------------------------------------------------------------- train


@cli.command("train")
@click.option("--dataset", type=click.Choice(DATASET_NAMES), default="fashion-mnist", show_default=True)
@click.option("--data-dir", type=click.Path(path_type=Path), help="Local copy of the data set.")
@click.option("--arch", default="resnet20", show_default=True, help="resnet20 (any resnet<6k+2>) or resnet50.")
@click.option("--width", type=int, default=16, show_default=True, help="First-stage channels of the CIFAR ResNet.")
@click.option("--sigma", type=float, required=True, help="Training noise level in [0,1] pixel units.")
@click.option("--schedule", type=click.Choice(list(SCHEDULES)), default="short", show_default=True,
              help=schedule_help())
@click.option("--epochs", type=int, help="Override the schedule's epochs.")
@click.option("--batch-size", type=int, help="Override the schedule's batch size.")
@click.option("--lr", type=float, help="Override the schedule's initial learning rate.")
@click.option("--train-subset", type=int, help="Train on the first N training images only.")
@click.option("--pretrained", type=click.Path(path_type=Path), help="torchvision-format state dict to start from.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Run folder for checkpoint and log.")
@click.option("--resume", is_flag=True, help="Continue the run in --out.")
@click.option("--force", is_flag=True, help="Start over even if --out holds a checkpoint.")
@_DEVICE_OPTION
def train_command(dataset, data_dir, arch, width, sigma, schedule, epochs, batch_size, lr, train_subset,
                  pretrained, seed, out, resume, force, device) -> None:
    """Train a base classifier with Gaussian noise augmentation (checkpoint every epoch)."""
    from .training import TrainConfig, train

    device = _device(device)
    config = TrainConfig(dataset=dataset, sigma=sigma, arch=arch, width=width, schedule=schedule, epochs=epochs,
                         batch_size=batch_size, lr=lr, train_subset=train_subset, seed=seed)
    ckpt = train(config, out, data_dir, resume=resume, force=force, pretrained=pretrained, progress=_progress,
                 device=device)
    _print_training(ckpt)


def _print_training(ckpt) -> None:
    m = ckpt.metrics
    click.echo(f"checkpoint {ckpt.path} (epoch {ckpt.epoch}): test accuracy clean {m['test_accuracy_clean']:.4f}, "
               f"under noise sigma={ckpt.sigma:g} {m['test_accuracy_noisy']:.4f} on {m['eval_images']} images")


# ---------------------------------------------------------------- quantize


@cli.command("quantize")
@click.option("--checkpoint", type=click.Path(path_type=Path), required=True, help="Float model from 'intrs train'.")
@click.option("--qat", "method", flag_value="qat", help="Quantization-aware training with discrete Gaussian noise "
              "(IntRS).")
@click.option("--ptq", "method", flag_value="ptq", help="Post-training quantization, calibrated on clean images "
              "(the FloatRS-quant baseline).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Integer model file (.npz).")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Local copy of the data set.")
@click.option("--epochs", type=int, default=1, show_default=True, help="QAT fine-tuning epochs.")
@click.option("--lr", type=float, default=0.01, show_default=True, help="QAT learning rate.")
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--train-subset", type=int, help="Fine-tune on the first N training images only.")
@click.option("--calibration-images", type=int, default=1000, show_default=True)
@click.option("--calibration-noise/--no-calibration-noise", default=None,
              help="Calibrate ranges on noisy inputs [default: yes for QAT, no for PTQ].")
@click.option("--eval-images", type=int, default=500, show_default=True, help="Test images scored at the end.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--saturate-input", is_flag=True, help="Saturate the noisy input to [0, 255] as the model's first "
              "step (what a TFLite int8 input can hold); recorded in the model file.")
@click.option("--from-state", type=click.Path(path_type=Path), help="Convert the fine-tuned float state that a "
              "--qat run saved (OUT.qat-state.pt, kept when its conversion failed) instead of fine-tuning again.")
@click.option("--force", is_flag=True, help="Overwrite an existing --out (and an earlier run's OUT.qat-state.pt).")
def quantize_command(checkpoint, method, out, data_dir, epochs, lr, batch_size, train_subset, calibration_images,
                     calibration_noise, eval_images, seed, saturate_input, from_state, force) -> None:
    """Convert a float checkpoint to an integer-only model (int8 weights, int32 biases, TFLite requantization).

    QAT on all of Fashion-MNIST takes about 15 minutes an epoch on 2 CPU cores (469 batches; the progress bar's
    time left covers all epochs). Whether every layer converts is checked before fine-tuning and as it goes, and
    the fine-tuned float state is saved beside --out after every epoch (OUT.qat-state.pt), removed once the
    integer model is written: a conversion that fails loses nothing.
    """
    from .checkpoint import load_checkpoint
    from .intmodel import save_integer_model
    from .quant import QuantizeConfig, quantize

    if method is None:
        raise click.UsageError("choose --qat (IntRS) or --ptq (FloatRS-quant)")
    check_output(out)  # before the work, not after it
    if out.exists() and not force:
        raise OutputExistsError(f"{out} already exists: pass --force to overwrite it or choose another --out")
    state_path = out.with_name(out.name + ".qat-state.pt") if method == "qat" and from_state is None else None
    if state_path is not None and state_path.exists() and not force:
        raise OutputExistsError(f"{state_path} holds the fine-tuning of an earlier run: convert it with "
                                f"--from-state {state_path}, or pass --force to fine-tune again")
    config = QuantizeConfig(method, epochs, lr, batch_size, train_subset, calibration_images, calibration_noise,
                            seed, eval_images, saturate_input).check()
    model, metrics = quantize(load_checkpoint(checkpoint), config, data_dir, progress=_progress,
                              state_path=state_path, from_state=from_state)
    save_integer_model(model, out)
    if state_path is not None:
        state_path.unlink(missing_ok=True)  # its integer model is written: nothing left to keep it for
    click.echo(f"wrote {out}: {len(model.layers)} integer layers; under discrete noise sigma={model.meta['sigma']:g} "
               f"on {metrics['eval_images']} test images: engine accuracy {metrics['engine_accuracy_noisy']:.4f}, "
               f"fake-quantized twin {metrics['twin_accuracy_noisy']:.4f}, "
               f"agreement {metrics['engine_twin_agreement']:.4f}")


# ---------------------------------------------------------------- certify / predict


def _smoothing_options(*after_n):
    """The flags certify and predict share; ``after_n``: a command's own flags, listed in the help after --n."""
    return lambda command: _with_smoothing_options(command, after_n)


def _with_smoothing_options(command, after_n):
    options = [
        click.option("--system", "systems", multiple=True, default=("floatrs-fp",), show_default=True,
                     help=f"System(s) to run on the same images: {', '.join(SYSTEM_NAMES)}; repeat the flag or "
                          "separate with commas."),
        click.option("--checkpoint", type=click.Path(path_type=Path), help="Float model (floatrs-fp)."),
        click.option("--int-model", type=click.Path(path_type=Path),
                     help="Integer model for intrs-quant ('intrs quantize --qat')."),
        click.option("--ptq-model", type=click.Path(path_type=Path),
                     help="Integer model for floatrs-quant ('intrs quantize --ptq')."),
        click.option("--noise", type=click.Choice(INTRS_NOISES), default="discrete-gaussian", show_default=True,
                     help="IntRS-quant's noise: the paper's discrete Gaussian, or the rounded Gaussian whose "
                          "certificate has a complete proof."),
        click.option("--sigma", type=float, help="Noise level in [0,1] pixel units [default: the training sigma]."),
        click.option("--dataset", type=click.Choice(DATASET_NAMES), help="[default: the model's data set]"),
        click.option("--data-dir", type=click.Path(path_type=Path), help="Local copy of the data set."),
        click.option("--split", type=click.Choice(["test", "train"]), default="test", show_default=True),
        click.option("--n", "n", type=int, help="Monte-Carlo samples of a fixed-n run [default: 100000]."),
        *after_n,
        click.option("--alpha", type=float, default=0.001, show_default=True, help="Failure probability."),
        click.option("--batch", type=int, help="Noisy samples per forward pass [default: 1000; 100 in sequential runs, "
                                               "which look at their votes after every batch]."),
        click.option("--max-n", type=int, help="Sequential run: the most samples an image may use (anytime-valid "
                                               "confidence sequence; stops early) [default: 100000]."),
        click.option("--skip", type=int, default=1, show_default=True, help="Use every SKIP-th image (Cohen)."),
        click.option("--max", "max_images", type=int, help="Stop after this many images."),
        click.option("--seed", type=int, default=0, show_default=True, help="Root seed of every image's streams."),
        click.option("--out", required=True,
                     help="Output TSV; with several systems a path containing {system}."),
        click.option("--resume", is_flag=True, help="Finish an interrupted --out (same settings)."),
        click.option("--force", is_flag=True, help="Overwrite an existing --out."),
        click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
                     help="Shard images on Ray: a local instance, or the cluster at ADDRESS (docs/ray.md). Ray's "
                          "start-up costs about 10 s; on one machine a local run is as fast (torch uses every "
                          "core), so Ray is worth it across machines, or to survive a killed worker."),
        click.option("--workers", type=int, help="Ray workers, with --ray [default: one per CPU of the cluster]; "
                                                 "more machines, not more workers on one, is what speeds a run up."),
        _DEVICE_OPTION,
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _chosen_systems(systems: tuple[str, ...]) -> list[str]:
    names = [name.strip() for entry in systems for name in entry.split(",") if name.strip()]
    for name in names:
        if name not in SYSTEM_NAMES:
            raise ConfigError(f"unknown system {name!r}: choose from {', '.join(SYSTEM_NAMES)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"system listed twice: {', '.join(names)}")
    return names


def _load_sources(names, checkpoint, int_model, ptq_model) -> dict:
    """Each system's model, loaded once: a float checkpoint or an integer model file."""
    from .checkpoint import load_checkpoint
    from .intmodel import load_integer_model

    needs = {"floatrs-fp": ("--checkpoint", checkpoint, load_checkpoint),
             "intrs-quant": ("--int-model", int_model, load_integer_model),
             "floatrs-quant": ("--ptq-model", ptq_model, load_integer_model)}
    sources = {}
    for name in names:
        flag, path, loader = needs[name]
        if path is None:
            raise ConfigError(f"{name} needs {flag}")
        sources[name] = (loader(path), path)
    return sources


def _run_smoothing(mode, systems, checkpoint, int_model, ptq_model, noise, sigma, dataset, data_dir, split, settings,
                   out, resume, force, ray_address=None, workers=None, device=None) -> None:
    from .certification import local_rows, outputs, plan
    from .data import load_dataset
    from .report import analyze
    from .results import check_result_output
    from .systems import model_facts

    device = _device(device)
    names = _chosen_systems(systems)
    settings.check(mode)
    executor = local_rows
    if workers is not None and ray_address is None:
        raise ConfigError("--workers counts Ray workers: pass --ray with it (a local run uses every core already)")
    if ray_address is not None:
        from .scaleout import RayExecutor

        if device.type != "cpu":
            raise ConfigError("--ray shards images over CPU workers: run --device cuda without --ray")
        executor = RayExecutor(None if ray_address == "local" else ray_address, workers)
    targets = outputs(names, out)
    for target in targets.values():  # every system's output before the first one's run, not after it
        check_result_output(target, force=force, resume=resume)
    sources = _load_sources(names, checkpoint, int_model, ptq_model)
    data = load_dataset(dataset or next(model_facts(source)[0] for source, _ in sources.values()), split, data_dir)
    jobs = [plan(mode, name, source, data, settings, targets[name], sigma=sigma,
                 noise=noise if name == "intrs-quant" else None, device=device, model_path=path)
            for name, (source, path) in sources.items()]
    for job in jobs:
        job.run(force=force, resume=resume, progress=_progress, executor=executor)
        click.echo(f"wrote {job.out}")
    if mode == "certify" or settings.sequential:
        click.echo(analyze([job.out for job in jobs]).to_markdown(), nl=False)


COHEN_N, FIXED_BATCH, SEQUENTIAL_BATCH, DEFAULT_TOLERANCE = 100_000, 1000, 100, 0.05


def _settings(n0, n, alpha, batch, seed, skip, max_images, sequential, max_n, radii=None,
              tolerance=None) -> CertifySettings:
    """A fixed-n run's settings (--n), or a sequential run's (--max-n, the budget, in n)."""
    from .certification import CertifySettings

    if not sequential:
        return CertifySettings(n0, COHEN_N if n is None else n, alpha, batch or FIXED_BATCH, seed, skip, max_images)
    if n is not None:
        raise ConfigError("a sequential run (--max-n, --radii, --tolerance, --sequential) takes its budget as "
                          "--max-n, not --n")
    return CertifySettings(n0, COHEN_N if max_n is None else max_n, alpha, batch or SEQUENTIAL_BATCH, seed, skip,
                           max_images, sequential=True, radii=radii, tolerance=tolerance)


def _parse_radii(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"--radii must be numbers separated by commas, e.g. 0.25,0.5,0.75; got {text!r}") from None


@cli.command("certify")
@_smoothing_options(click.option("--n0", type=int, default=100, show_default=True,
                                 help="CERTIFY's selection samples (the top class), drawn before the --n."))
@click.option("--radii", help="Sequential CERTIFY: decide each of these radii (comma-separated) and stop.")
@click.option("--tolerance", type=float, help="Sequential CERTIFY without --radii: stop once the radius is known "
                                              f"within this much [default: {DEFAULT_TOLERANCE}].")
def certify_command(systems, checkpoint, int_model, ptq_model, noise, sigma, dataset, data_dir, split, n, alpha,
                    batch, max_n, skip, max_images, seed, out, resume, force, ray_address, workers, device, n0,
                    radii, tolerance) -> None:
    """Certify test images (Cohen's CERTIFY): one TSV row per image with its certified L2 radius.

    \b
    The radius is R = sigma * PhiInv(pA_lower) in [0,1] pixel units, for every system:
      floatrs-fp     continuous Gaussian: Cohen et al.'s theorem (proven);
      floatrs-quant  Gaussian rounded to the pixel grid: Cohen's theorem for f(round(.)) (proven);
      intrs-quant    discrete Gaussian (the paper's Proposition 3.1): proven for shifts along one
                     coordinate (every radius CERTIFY returns at sigma_q = 255 sigma >= 1.5),
                     checked exactly for all integer directions with ||delta||^2 <= 25 at
                     sigma_q in {1, 2}, open for general directions (docs/certificate.md);
                     --noise rounded-gaussian gives IntRS a certificate with a complete proof.
    On the integer grid the adversary moves whole 8-bit pixel steps.

    \b
    Sequential CERTIFY (--radii or --tolerance, budget --max-n; docs/sequential.md): the same
    guarantee at alpha from an anytime-valid confidence sequence, stopping as soon as every listed
    radius is certified, refuted or out of the budget (or, with --tolerance, once the radius is known
    within it); each row says the samples it used (n) and how each radius was decided.
    """
    radii = _parse_radii(radii)
    if radii is not None and tolerance is not None:
        raise ConfigError("--radii and --tolerance are two stopping rules: choose one")
    sequential = max_n is not None or radii is not None or tolerance is not None
    if sequential and radii is None and tolerance is None:
        tolerance = DEFAULT_TOLERANCE
    settings = _settings(n0, n, alpha, batch, seed, skip, max_images, sequential, max_n, radii, tolerance)
    _run_smoothing("certify", systems, checkpoint, int_model, ptq_model, noise, sigma, dataset, data_dir, split,
                   settings, out, resume, force, ray_address, workers, device)


@cli.command("predict")
@_smoothing_options()
@click.option("--sequential", is_flag=True, help="Stop as soon as an anytime-valid test decides (budget --max-n).")
def predict_command(systems, checkpoint, int_model, ptq_model, noise, sigma, dataset, data_dir, split, n, alpha,
                    batch, max_n, skip, max_images, seed, out, resume, force, ray_address, workers, device,
                    sequential) -> None:
    """Predict with the smoothed classifier (Cohen's PREDICT): abstain unless the top class wins a binomial test.

    With --sequential (docs/sequential.md) the test is anytime-valid and stops as soon as it decides at
    level alpha, ABSTAIN at --max-n; each row says the samples it used (n).
    """
    settings = _settings(1, n, alpha, batch, seed, skip, max_images, sequential or max_n is not None, max_n)
    _run_smoothing("predict", systems, checkpoint, int_model, ptq_model, noise, sigma, dataset, data_dir, split,
                   settings, out, resume, force, ray_address, workers, device)


# ---------------------------------------------------------------- deploy


@cli.command("export")
@click.argument("model_path", metavar="MODEL", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(EXPORT_FORMATS), required=True,
              help="tflite or onnx: one model file; c: a C source tree that certifies on the device (docs/deploy.md).")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="The .tflite or .onnx file, or the folder of the C tree.")
@click.option("--saturate", is_flag=True, help="Export the variant that saturates the noisy input to [0, 255] "
              "(what an int8 TFLite input holds); it is written beside --out as .intrs.npz: certify that file.")
@click.option("--table-n", type=int, default=100_000, show_default=True,
              help="tflite/onnx: samples per certificate on the device, for the radius table written beside --out "
                   "(0: none).")
@click.option("--table-alpha", type=float, default=0.001, show_default=True)
@click.option("--system", type=click.Choice(("intrs-quant", "floatrs-quant")), default="intrs-quant",
              show_default=True, help="c: the system the device runs (its noise law).")
@click.option("--noise", type=click.Choice(INTRS_NOISES), help="c: IntRS-quant's noise [default: discrete-gaussian].")
@click.option("--sigma", type=float, help="c: noise level [default: the model's training sigma].")
@click.option("--n0", type=int, help="c: CERTIFY's selection samples [default: 100].")
@click.option("--n", type=int, help="c: CERTIFY's estimation samples, fixed n [default: 100,000].")
@click.option("--alpha", type=float, help="c: failure probability of CERTIFY and PREDICT [default: 0.001].")
@click.option("--max-n", type=int, help="c: sequential CERTIFY's budget [default: 100,000].")
@click.option("--radii", help="c: the radii sequential CERTIFY decides [default: 0.25,0.5,0.75,1.0].")
@click.option("--predict-n", type=int, help="c: PREDICT's samples, fixed n [default: 10,000].")
@click.option("--predict-max-n", type=int, help="c: sequential PREDICT's budget [default: 10,000; its tables "
              "hold 8 bytes per sample].")
@click.option("--batch", type=int, help="c: noisy copies per batch, as intrs certify --batch [default: 1000].")
@click.option("--force", is_flag=True, help="Overwrite existing files.")
def export_command(model_path, fmt, out, saturate, table_n, table_alpha, system, noise, sigma, n0, n, alpha, max_n,
                   radii, predict_n, predict_max_n, batch, force) -> None:
    """Export an integer model to TFLite (int8 builtin ops, reference-kernel semantics) or ONNX (QDQ), with
    the certificate table R[nA] beside it as a C header (FILE.radius.h); or, with --format c, as a C source
    tree that runs PREDICT and CERTIFY on the device itself, integer-only (check it with verify-export)."""
    from .intmodel import load_integer_model, with_input_saturation

    model = load_integer_model(model_path)
    if fmt == "c":
        from .c_export import export_c, settings_for

        settings = settings_for(model, system, noise, sigma, n0=n0, n=n, alpha=alpha, max_n=max_n,
                                radii=_parse_radii(radii), predict_n=predict_n, predict_max_n=predict_max_n,
                                batch=batch)
        if saturate and model.input_saturation is None:
            model = with_input_saturation(model)
        facts = export_c(model, settings, out, force=force)
        sizes = facts["constant_bytes"]
        click.echo(f"wrote {out}: {settings.system} ({settings.noise.name}, sigma={settings.noise.sigma:g}), n0={facts['n0']}, "
                   f"n={facts['n']:,}, alpha={facts['alpha']:g}, sequential max_n={facts['max_n']:,} at radii "
                   f"{', '.join(f'{r:g}' for r in facts['radii'])}, PREDICT n={facts['predict_n']:,} "
                   f"(sequential {facts['predict_max_n']:,})")
        click.echo(f"constants (flash): {sizes['other'] / 1024:,.0f} KiB on a microcontroller (portable kernels), "
                   f"{sizes['arm64'] / 1024:,.0f} KiB on aarch64, {sizes['x86'] / 1024:,.0f} KiB on x86-64; "
                   f"RAM: {facts['arena_bytes']['other'] / 1024:,.0f} KiB arena + "
                   f"{facts['buffer_bytes'] / 1024:,.1f} KiB buffers on a microcontroller")
        click.echo(f"build it with 'make -C {out}' (or 'make -C {out} cortex-m'), check it with "
                   f"'intrs verify-export {out} {model_path}'")
        return
    from .deploy import export_files

    for written in export_files(model, model_path, fmt, out, saturate=saturate, table_n=table_n,
                                table_alpha=table_alpha, force=force):
        click.echo(f"wrote {written.path}: {written.about}")


@cli.command("verify-export")
@click.argument("file", type=click.Path(path_type=Path))
@click.argument("model_path", metavar="MODEL", type=click.Path(path_type=Path))
@click.option("--inputs", "count", type=int, default=1000, show_default=True, help="Noisy test inputs to compare.")
@click.option("--images", type=int, default=3, show_default=True,
              help="A C tree: test images to certify and predict in every mode.")
@click.option("--sigma", type=float, help="Noise level [default: the model's training sigma].")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Local copy of the model's data set.")
@click.option("--seed", type=int, default=0, show_default=True)
def verify_export_command(file, model_path, count, images, sigma, data_dir, seed) -> None:
    """Run an exported file in an independent runtime and compare its int8 logits with the integer engine.

    TFLite files run under LiteRT's reference kernels (BUILTIN_REF: must match exactly, exit status 1
    otherwise) and, for information, its optimized and XNNPACK paths, which round ties differently.
    ONNX files run under onnxruntime, which requantizes in float: its agreement is reported.
    A C tree (intrs export --format c) is built with the host compiler and its example program certifies and
    predicts test images in every mode: its rows (votes, predictions, radii) must equal the Python API's for
    the same seed (exit status 1 otherwise). Ends with one line: PASS or FAIL.
    """
    if Path(file).is_dir():
        from .c_export import verify
        from .intmodel import load_integer_model

        if images < 1:
            raise ConfigError(f"--images must be at least 1, got {images}")
        report = verify(file, load_integer_model(model_path), images, seed, data_dir=data_dir)
        click.echo(report.to_markdown(), nl=False)
        if not report.identical:
            click.echo(f"FAIL: {file} does not answer as the Python API does (the differences above)")
            raise click.exceptions.Exit(1)
        click.echo(f"PASS: {file} gives the Python API's votes, predictions and radii in every mode")
        return
    from .deploy import noisy_test_inputs, verify_export
    from .intmodel import load_integer_model

    if count < 1:
        raise ConfigError(f"--inputs must be at least 1, got {count}")
    model = load_integer_model(model_path)
    saturating = Path(file).with_suffix(".intrs.npz")
    if Path(file).suffix == ".tflite" and model.input_saturation is None and saturating.is_file():
        raise ConfigError(f"{file} computes the variant that saturates its input, which 'intrs export --saturate' "
                          f"wrote beside it: verify (and certify) {saturating}, not {model_path}")
    z = noisy_test_inputs(model, count, sigma, seed, data_dir)
    report = verify_export(file, model, z, sigma if sigma is not None else model.meta.get("sigma"))
    click.echo(report.to_markdown(), nl=False)
    if report.format == "tflite" and not report.bit_exact:
        click.echo(f"FAIL: {file} does not compute the certified integers (reference-kernel mismatches)")
        raise click.exceptions.Exit(1)
    click.echo(f"PASS: {file} computes the certified integers under {report.results[0].runtime}"
               if report.bit_exact else f"PASS (for information): {file} agrees on "
               f"{report.results[0].identical_predictions:.4%} of predictions under {report.results[0].runtime}")


@cli.command("radius-table")
@click.option("--n", "n", type=int, required=True, help="Monte-Carlo samples the device draws.")
@click.option("--alpha", type=float, default=0.001, show_default=True)
@click.option("--sigma", type=float, required=True)
@click.option("--fraction-bits", type=int, default=16, show_default=True)
@click.option("--radii", help="Also the decision tables of sequential CERTIFY at these radii (comma-separated).")
@click.option("--max-n", type=int, help="Sequential CERTIFY's budget [default: --n].")
@click.option("--batch", type=int, default=SEQUENTIAL_BATCH, show_default=True,
              help="The sequential rules' batch: they look at the votes after every batch.")
@click.option("--predict-max-n", type=int, help="Also the decision table of sequential PREDICT with this budget.")
@click.option("--classes", type=int, default=10, show_default=True, help="Classes, for sequential PREDICT's table.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="C header (.h).")
@click.option("--force", is_flag=True)
def radius_table_command(n, alpha, sigma, fraction_bits, radii, max_n, batch, predict_max_n, classes, out,
                         force) -> None:
    """Write the certificate table R[nA] as a C header: a device counts votes and looks its radius up.

    With --radii (and --predict-max-n) the header also holds the sequential rules' integer decision tables
    (docs/sequential.md): per step, the vote counts at which each radius is certified or can no longer be.
    """
    from .confidence import PredictThresholds, batch_schedule, radius_tables
    from .deploy import radius_table_header
    from .noise import check_sigma
    from .smoothing import check_alpha

    if out.exists() and not force:
        raise OutputExistsError(f"{out} already exists: pass --force to overwrite it")
    alpha, sigma = check_alpha(alpha), check_sigma(sigma)
    if classes < 2:
        raise ConfigError(f"--classes must be at least 2, got {classes}")
    sequential = None
    if radii is not None:
        sequential = radius_tables(batch_schedule(n if max_n is None else max_n, batch), alpha, sigma,
                                   _parse_radii(radii))
    elif max_n is not None:
        raise ConfigError("--max-n is sequential CERTIFY's budget: give the --radii to decide")
    predict = None
    if predict_max_n is not None:
        predict = (PredictThresholds(alpha, classes), batch_schedule(predict_max_n, batch))
    import numpy as np

    from .certificate import radius_table

    table_path = out.with_suffix(".npy")
    if table_path.exists() and not force:
        raise OutputExistsError(f"{table_path} already exists: pass --force to overwrite it")
    from .files import write_atomically, write_text_atomically

    check_output(out)
    write_text_atomically(out, radius_table_header(n, alpha, sigma, fraction_bits, sequential, predict))
    table = radius_table(n, alpha, sigma, fraction_bits).astype(np.int32)
    write_atomically(table_path, lambda handle: np.save(handle, table))
    click.echo(f"wrote {table_path}: R[nA] for nA = 0..{n} as int32 (0 below the first certifying count)")
    extra = (f"; sequential CERTIFY at r = {', '.join(f'{r:g}' for r in sequential.radii)} over "
             f"{len(sequential.bounds.steps)} steps" if sequential else "")
    extra += f"; sequential PREDICT up to {predict_max_n} samples" if predict else ""
    click.echo(f"wrote {out}: {n + 1} entries, radius x 2^{fraction_bits}{extra}")


# ---------------------------------------------------------------- analyze


@cli.command("analyze")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--max-radius", type=float, help="Largest radius column [default: 1.5, or the largest radius seen].")
@click.option("--step", type=float, default=0.25, show_default=True, help="Radius step.")
@click.option("--format", "fmt", type=click.Choice(["markdown", "csv", "latex"]), default="markdown",
              show_default=True)
@click.option("--plot", type=click.Path(path_type=Path),
              help="Also draw certified accuracy against radius, one curve per CERTIFY file, into this PNG "
                   "(needs matplotlib: pip install 'intrs[report]').")
@click.option("--force", is_flag=True, help="Overwrite an existing --plot file.")
def analyze_command(files, max_radius, step, fmt, plot, force) -> None:
    """Certified accuracy at r = 0, 0.25, ... for result TSVs side by side, one row per file in the order given
    (also Cohen et al.'s own files). A PREDICT file's row gives its accuracy and abstain rate."""
    from .report import analyze, write_accuracy_plot

    table = analyze(list(files), max_radius, step)
    if plot is not None:  # before printing: a failed plot leaves one error line, not a table and an error
        write_accuracy_plot(table, plot, force=force)
    click.echo({"markdown": table.to_markdown, "csv": table.to_csv, "latex": table.to_latex}[fmt](), nl=False)
    if plot is not None:
        click.echo(f"wrote {plot}", err=True)  # stderr: stdout may be a CSV or LaTeX file


# ---------------------------------------------------------------- the paper's experiments


@cli.command("reproduce")
@click.argument("experiment", type=click.Choice(EXPERIMENTS + ("all",)))
@click.option("--preset", "preset_name", type=click.Choice(PRESET_NAMES), default="ci", show_default=True,
              help="ci: tiny, minutes; fmnist: the paper's protocol on Fashion-MNIST (500 images, sequential "
                   "CERTIFY up to n = 100,000; hours per experiment on 2 cores; each departure is written in the "
                   "output); paper-cifar10 / paper-caltech101: the paper's settings.")
@click.option("--out", type=click.Path(path_type=Path), help="Run folder [default: runs/reproduce-PRESET].")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Local copy of the preset's data set.")
@click.option("--seed", type=int, default=0, show_default=True)
@_DEVICE_OPTION
def reproduce_command(experiment, preset_name, out, data_dir, seed, device) -> None:
    """Run one of the paper's experiments (or all): data as CSV/TSV, tables as markdown, figures as PNG.

    Re-running resumes: trained models, certified images and finished attack settings are reused.
    """
    from .experiments import Reproduction, preset
    from .report import render_run, write_html_report

    device = _device(device)
    out = check_output(out or Path("runs") / f"reproduce-{preset_name}", folder=True)
    reproduction = Reproduction(preset(preset_name), out, data_dir, seed, progress=_progress, log=click.echo,
                                device=device)
    folders = reproduction.run(experiment)
    render_run(out, [folder.name for folder in folders])
    for folder in folders:
        for table in sorted(folder.glob("*.md")):
            click.echo(f"\n{table}:\n{table.read_text()}")
    click.echo(f"report: {write_html_report(out)}")


@cli.command("report")
@click.argument("run_dir", type=click.Path(path_type=Path))
def report_command(run_dir) -> None:
    """Render a reproduction's tables and figures from its data (a finished or an unfinished run) and build
    RUN_DIR/report.html with its settings."""
    from .report import render_run, write_html_report

    render_run(run_dir)
    click.echo(f"wrote {write_html_report(run_dir)}")


# ---------------------------------------------------------------- bench


@cli.command("bench")
@click.option("--inputs", default="3x32x32,1x28x28", show_default=True, help="Input shapes CxHxW, comma-separated.")
@click.option("--batches", default="100,400,1000", show_default=True, help="Batch sizes, comma-separated.")
@click.option("--samples", type=int, default=2000, show_default=True, help="Samples per measurement.")
@click.option("--repeats", type=int, default=3, show_default=True, help="Interleaved rounds (best is kept).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("bench.json"), show_default=True)
@_DEVICE_OPTION
def bench_command(inputs, batches, samples, repeats, out, device) -> None:
    """Time the certification loop (noise + forward + votes) of FloatRS-fp, IntRS and reference int8 runtimes
    (with --device cuda: FloatRS-fp and IntRS on the GPU as well)."""
    from .bench import (bench_certification, bench_noise, ceiling, describe_ceiling, float_restriction,
                        format_table, machine, write_json)

    device = _device(device)

    try:
        sizes = tuple(int(b) for b in batches.split(","))
        shapes = tuple(tuple(int(d) for d in shape.split("x")) for shape in inputs.split(","))
    except ValueError:
        raise ConfigError(f"--batches must be integers and --inputs CxHxW shapes, comma-separated; got {batches!r}, "
                          f"{inputs!r}") from None
    if min(sizes) < 1 or samples < 1 or repeats < 1 or any(len(s) != 3 or min(s) < 1 for s in shapes):
        raise ConfigError("--batches, --samples and --repeats must be positive, --inputs shapes CxHxW")
    limits = ceiling()
    results = bench_certification(shapes=shapes, batches=sizes, samples=samples, repeats=repeats, device=device,
                                  limits=limits,
                                  progress=lambda r: click.echo(f"  {r.contender} {r.input_shape} batch {r.batch}: "
                                                                f"{r.samples_per_second:,.0f} samples/s", err=True))
    noise = bench_noise()
    click.echo(format_table(results, noise), nl=False)
    where = machine(device)
    click.echo(f"measured with {where['threads']} threads, integer kernels: {where['intrs_kernels']}, "
               f"CPU: {where['cpu']}" + (f", GPU: {where['gpu']}" if "gpu" in where else "")
               + (f", PyTorch restricted by {float_restriction()}" if float_restriction() else ""))
    click.echo(describe_ceiling(limits), nl=False)
    write_json(out, results, noise, {"batches": sizes, "samples": samples, "repeats": repeats, **where,
                                     "ceiling": limits})
    click.echo(f"wrote {out}")


# ---------------------------------------------------------------- demo


@cli.command("demo")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/demo"), show_default=True)
@click.option("--data-dir", type=click.Path(path_type=Path), help="Fashion-MNIST folder.")
@click.option("--sigma", type=float, default=0.25, show_default=True)
@click.option("--images", type=int, default=50, show_default=True, help="Test images to certify (every 20th).")
@click.option("--n", "n", type=int, default=1000, show_default=True)
@click.option("--n0", type=int, default=100, show_default=True, help="Selection samples (Cohen's 100).")
@click.option("--alpha", type=float, default=0.001, show_default=True)
@click.option("--schedule", type=click.Choice(list(SCHEDULES)), default="short", show_default=True,
              help=schedule_help())
@click.option("--qat-images", type=int, default=4096, show_default=True,
              help="Training images of QAT's one epoch (all 60,000 take about 15 min on 2 cores).")
@click.option("--seed", type=int, default=0, show_default=True)
def demo_command(out, data_dir, sigma, images, n, n0, alpha, schedule, qat_images, seed) -> None:
    """What intrs is for, in about 5 minutes on 2 cores: train a noise-augmented ResNet-20 on Fashion-MNIST,
    quantize it into an integer-only model (QAT) and a PTQ one, certify the same test images with FloatRS-fp,
    IntRS-quant and FloatRS-quant, time float against integer certification, certify sequentially, and
    export the files a device runs (a .tflite checked against LiteRT's reference kernels, a C tree).

    Re-running resumes: finished models and finished images are reused.
    """
    from .demo import DemoSettings, run_demo

    if images < 1 or qat_images < 1:
        raise ConfigError(f"--images and --qat-images must be at least 1, got {images} and {qat_images}")
    check_output(out, folder=True)
    run_demo(out, DemoSettings(sigma, images, 20, n0, n, alpha, schedule, qat_images, seed), data_dir,
             progress=_progress, echo=click.echo)
    click.echo(RADIUS_NOTE)


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the CLI, turning user errors into one line and exit status 2."""
    try:
        status = cli.main(args=argv, prog_name="intrs", standalone_mode=False)
    except IntrsError as exc:
        click.echo(f"intrs: error: {exc}", err=True)
        return 2
    except ModuleNotFoundError as exc:
        missing = missing_dependency(exc)
        if missing is None:
            raise
        click.echo(f"intrs: error: {missing}", err=True)
        return 2
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("intrs: interrupted", err=True)
        return 130
    except click.ClickException as exc:
        click.echo(f"intrs: error: {exc.format_message()}", err=True)
        return 2
    return status if isinstance(status, int) else 0


if __name__ == "__main__":
    sys.exit(main())
