"""Training base classifiers with Gaussian noise augmentation (Cohen et al. 2019, Section 4).

SGD with momentum 0.9 and weight decay 1e-4; the learning rate is divided by 10
every ``lr_step`` epochs (SPEC section 7). Every batch is augmented (the data
set's own augmentation), scaled to [0, 1] and perturbed with N(0, sigma^2) noise.
Each epoch draws from its own seeded stream, so a resumed run continues exactly
as an uninterrupted one would, and writes a checkpoint atomically.

On a ``device`` (a GPU) the model and its gradients live there; the batches, their
augmentation and their noise are still drawn on the CPU from the same streams and moved,
so a run draws the same images and noise on every device (only float arithmetic differs).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from .choices import SCHEDULES, Schedule  # noqa: F401  (Schedule: its home is choices)
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .data import PIXEL_MAX, ImageSet, augment, load_dataset
from .errors import CheckpointError, ConfigError, OutputExistsError
from .files import check_output, write_text_atomically
from .models import ModelConfig, build_model, load_torchvision_state_dict
from .noise import check_sigma
from .progress import Progress, no_progress
from .rng import STAGE_EVAL, STAGE_INIT, STAGE_TRAIN, check_seed, random_stream, seed_torch

CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "train_log.tsv"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; a resumed run must have the same."""

    dataset: str
    sigma: float
    arch: str = "resnet20"
    width: int = 16
    schedule: str = "short"
    epochs: int | None = None  # overrides of the schedule
    batch_size: int | None = None
    lr: float | None = None
    train_subset: int | None = None
    seed: int = 0
    eval_images: int = 1000  # test images scored after each epoch (clean and noisy)

    def resolved_schedule(self, paper_batch_size: int) -> Schedule:
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown schedule {self.schedule!r}: choose one of {', '.join(SCHEDULES)}")
        base = SCHEDULES[self.schedule]
        chosen = replace(
            base,
            epochs=self.epochs if self.epochs is not None else base.epochs,
            batch_size=self.batch_size or base.batch_size or paper_batch_size,
            lr=self.lr if self.lr is not None else base.lr,
            train_subset=self.train_subset if self.train_subset is not None else base.train_subset,
        )
        if chosen.epochs < 1 or chosen.batch_size < 1 or not (math.isfinite(chosen.lr) and chosen.lr > 0):
            raise ConfigError(f"epochs and batch size must be >= 1 and lr a number > 0, got epochs={chosen.epochs}, "
                              f"batch size={chosen.batch_size}, lr={chosen.lr}")
        if chosen.train_subset is not None and chosen.train_subset < 1:
            raise ConfigError(f"--train-subset must be at least 1 (the first N training images), "
                              f"got {chosen.train_subset}")
        return chosen


def noisy_batch(images: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """uint8 images -> x + N(0, sigma^2) with x = p / 255 (Gaussian noise augmentation)."""
    x = images.to(torch.float32).div_(PIXEL_MAX)
    return x.add_(torch.randn(x.shape, generator=generator), alpha=sigma).contiguous(memory_format=torch.channels_last)


@torch.inference_mode()
def evaluate(model: torch.nn.Module, data: ImageSet, sigma: float, seed: int, batch_size: int = 500,
             device: torch.device | None = None) -> dict:
    """Base-classifier accuracy on clean inputs and under N(0, sigma^2) noise (a fixed seeded draw), the
    model on ``device`` (default: the CPU)."""
    model.eval()
    device = torch.device("cpu") if device is None else device
    generator = random_stream(seed, STAGE_EVAL)
    clean = noisy = 0
    for start in range(0, len(data), batch_size):
        images, labels = data.images[start:start + batch_size], data.labels[start:start + batch_size]
        x = images.to(torch.float32).div_(PIXEL_MAX).contiguous(memory_format=torch.channels_last)
        labels = labels.to(device)
        clean += int((model(x.to(device)).argmax(1) == labels).sum())
        noisy += int((model(noisy_batch(images, sigma, generator).to(device)).argmax(1) == labels).sum())
    total = max(len(data), 1)
    return {"test_accuracy_clean": clean / total, "test_accuracy_noisy": noisy / total, "eval_images": len(data)}


def train(config: TrainConfig, out_dir: str | Path, data_dir: str | Path | None = None, *, resume: bool = False,
          force: bool = False, pretrained: str | Path | None = None, progress: Progress = no_progress,
          device: torch.device | None = None) -> Checkpoint:
    """Train a base classifier with Gaussian noise augmentation; checkpoint to ``out_dir`` every epoch.

    ``resume`` continues from ``out_dir/checkpoint.pt`` (same config required);
    without it an existing checkpoint is an error unless ``force`` is set. ``device``: where the model
    trains (default: the CPU); checkpoints load on any device.
    """
    device = torch.device("cpu") if device is None else torch.device(device)
    check_sigma(config.sigma)
    check_seed(config.seed)
    out_dir = check_output(out_dir, folder=True)  # before the first epoch, not after it
    ckpt_path = out_dir / CHECKPOINT_NAME
    train_set = load_dataset(config.dataset, "train", data_dir)
    info = train_set.info
    schedule = config.resolved_schedule(info.paper_batch_size)
    train_set = train_set.subset(schedule.train_subset)
    test_set = load_dataset(config.dataset, "test", data_dir).subset(config.eval_images)

    model_config = ModelConfig(config.arch, info.channels, info.num_classes, info.mean, info.std, config.width)
    seed_torch(config.seed, STAGE_INIT)  # all 64 bits: manual_seed keeps 32
    model = build_model(model_config)
    if pretrained is not None:
        load_torchvision_state_dict(model, pretrained)
    model = model.to(device=device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=schedule.lr, momentum=schedule.momentum,
                                weight_decay=schedule.weight_decay)
    start_epoch = 1
    if ckpt_path.exists() and resume:
        previous = load_checkpoint(ckpt_path)
        if previous.training.get("config") != asdict(config):
            raise CheckpointError(f"{ckpt_path} was trained with {previous.training.get('config')}, "
                                  f"not {asdict(config)}: resume with the same settings or use another --out")
        model.load_state_dict(previous.model.state_dict())
        optimizer.load_state_dict(previous.training["optimizer"])
        start_epoch = previous.epoch + 1
        if start_epoch > schedule.epochs:
            return previous
    elif ckpt_path.exists() and not force:
        raise OutputExistsError(f"{ckpt_path} already exists: pass --resume to continue it or --force to start over")
    else:
        (out_dir / LOG_NAME).unlink(missing_ok=True)

    checkpoint = None
    for epoch in range(start_epoch, schedule.epochs + 1):
        lr = schedule.lr * 0.1 ** ((epoch - 1) // schedule.lr_step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        stats = _train_epoch(model, optimizer, train_set, config.sigma, schedule.batch_size,
                             random_stream(config.seed, STAGE_TRAIN, epoch), progress, f"epoch {epoch}/{schedule.epochs}",
                             device)
        metrics = {**stats, **evaluate(model, test_set, config.sigma, config.seed, device=device), "lr": lr}
        checkpoint = Checkpoint(model, model_config, config.dataset, config.sigma, epoch, config.seed, metrics,
                                {"config": asdict(config), "optimizer": optimizer.state_dict(),
                                 "device": str(device)}, ckpt_path)
        save_checkpoint(ckpt_path, checkpoint)
        _append_log(out_dir / LOG_NAME, epoch, metrics)
    if checkpoint is None:
        return load_checkpoint(ckpt_path)
    checkpoint.model.to("cpu")  # on the CPU, as a loaded checkpoint is: callers choose their own device
    return checkpoint


def _train_epoch(model, optimizer, data: ImageSet, sigma: float, batch_size: int, generator: torch.Generator,
                 progress: Progress, desc: str, device: torch.device) -> dict:
    model.train()
    order = torch.randperm(len(data), generator=generator)
    total_loss, correct, seen = 0.0, 0, 0
    batches = range(0, len(data), batch_size)
    for start in progress(batches, total=len(batches), desc=desc, unit="batch"):
        idx = order[start:start + batch_size]
        labels = data.labels[idx].to(device)
        x = noisy_batch(augment(data.images[idx], data.info, generator), sigma, generator).to(device)
        logits = model(x)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(idx)
        correct += int((logits.argmax(1) == labels).sum())
        seen += len(idx)
    return {"train_loss": total_loss / seen, "train_accuracy_noisy": correct / seen}


def _append_log(path: Path, epoch: int, metrics: dict) -> None:
    """One tab-separated row per epoch, "\n"-terminated; the small file is rewritten atomically, so a full
    disk leaves the previous log, not a torn one."""
    row = {"epoch": epoch, **metrics}
    if "lr" in row:  # 0.1 * 0.1 is 0.010000000000000002 in binary
        row["lr"] = float(f"{row['lr']:.6g}")
    out = io.StringIO()
    writer = csv.DictWriter(out, list(row), delimiter="\t", lineterminator="\n")
    if path.exists():
        out.write(path.read_text())
    else:
        writer.writeheader()
    writer.writerow(row)
    write_text_atomically(path, out.getvalue())
