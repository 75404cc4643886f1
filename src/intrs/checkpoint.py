"""Float model checkpoints: weights plus what they were made with, checked on load.

A checkpoint is a dict of tensors and plain data written by ``torch.save`` and
read with ``weights_only=True`` (no code is unpickled). Its metadata (model
config, data set, sigma, epoch, seed, accuracy) lets every later command refuse
a checkpoint that does not fit its data instead of certifying nonsense.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .data import DatasetInfo
from .errors import CheckpointError
from .files import write_atomically
from .models import ModelConfig, build_model, read_torch_file

FORMAT = "intrs-checkpoint"
VERSION = 1


@dataclass
class Checkpoint:
    """A float base classifier and its provenance."""

    model: nn.Module
    config: ModelConfig
    dataset: str
    sigma: float
    epoch: int
    seed: int
    metrics: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)  # optimizer/scheduler state for --resume
    path: Path | None = None

    def check_fits(self, info: DatasetInfo) -> None:
        """Raise unless this model was made for data set ``info`` (name, channels, classes)."""
        if self.dataset != info.name or self.config.in_channels != info.channels \
                or self.config.num_classes != info.num_classes:
            raise CheckpointError(
                f"checkpoint {self.path} was trained on {self.dataset} ({self.config.in_channels} channels, "
                f"{self.config.num_classes} classes) but the data is {info.name} ({info.channels} channels, "
                f"{info.num_classes} classes): pass the matching --dataset or checkpoint")


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> Path:
    """Write ``ckpt`` atomically: a crash or a full disk never leaves a torn checkpoint behind."""
    path = Path(path)
    payload = {
        "format": FORMAT, "version": VERSION,
        "config": ckpt.config.to_dict(), "dataset": ckpt.dataset, "sigma": float(ckpt.sigma),
        "epoch": int(ckpt.epoch), "seed": int(ckpt.seed), "metrics": dict(ckpt.metrics),
        "state_dict": ckpt.model.state_dict(), "training": ckpt.training,
    }
    return write_atomically(path, lambda handle: torch.save(payload, handle))


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read and validate a checkpoint written by :func:`save_checkpoint`."""
    path = Path(path)
    payload = read_torch_file(path, "checkpoint", "train one with 'intrs train' or fix the path")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an intrs checkpoint (no '{FORMAT}' header)")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {payload.get('version')}, "
                              f"this intrs reads version {VERSION}")
    try:
        config = ModelConfig.from_dict(payload["config"])
        model = build_model(config)
        model.load_state_dict(payload["state_dict"])
        return Checkpoint(model.eval(), config, str(payload["dataset"]), float(payload["sigma"]),
                          int(payload["epoch"]), int(payload["seed"]), dict(payload.get("metrics", {})),
                          payload.get("training", {}), path)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint {path} is damaged ({type(exc).__name__}: {str(exc)[:200]})") from None
