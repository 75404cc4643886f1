"""The systems compared by the paper: each is a noise law paired with a base classifier.

A system is nothing more than that pair (SPEC section 4), so the three systems
are three small constructors, not three code paths: every one is certified by
the same ``SmoothedClassifier`` and gets its radius from the same function
(``intrs.certificate.certified_radius``).

| system        | base classifier                  | noise                                  |
|---------------|----------------------------------|----------------------------------------|
| floatrs-fp    | float32 model                    | continuous Gaussian on x = p / 255     |
| intrs-quant   | integer-only model (QAT)         | discrete Gaussian on x_q (or rounded)  |
| floatrs-quant | integer model from PTQ           | continuous Gaussian rounded to the grid |

Each constructor takes a ``device`` (``intrs.devices``): FloatRS-fp's model and noise run there; on a
GPU the integer systems run ``intrs.torch_engine`` (the same integers), on the CPU the compiled kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import engine
from .checkpoint import Checkpoint
from .choices import INTRS_NOISES, SYSTEM_NAMES  # re-exported: the names live where the CLI reads them
from .data import DatasetInfo
from .devices import is_cpu
from .errors import CheckpointError, ConfigError
from .intmodel import IntegerModel
from .noise import GaussianNoise, NoiseLaw, noise_law
from .smoothing import BaseClassifier, SmoothedClassifier, TorchClassifier


@dataclass
class System:
    name: str
    noise: NoiseLaw
    base: BaseClassifier
    num_classes: int

    def smoothed(self, batch_size: int = 1000) -> SmoothedClassifier:
        return SmoothedClassifier(self.base, self.noise, self.num_classes, batch_size)


class IntegerClassifier:
    """An integer model as a base classifier: the engine's argmax on integer noisy inputs, through the compiled
    kernels of ``instruction_set`` (default: the best this CPU has; one it lacks is refused)."""

    def __init__(self, model: IntegerModel, instruction_set: str | None = None):
        self.model, self.instruction_set = model, instruction_set

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return engine.predict(self.model, batch, self.instruction_set)


def floatrs_fp(checkpoint: Checkpoint, sigma: float, device=None) -> System:
    """FloatRS-fp: the float32 model under continuous Gaussian noise, Cohen's radius; model, noise and votes
    on ``device`` (default: the CPU)."""
    return System("floatrs-fp", GaussianNoise(sigma, device), TorchClassifier(checkpoint.model, device),
                  checkpoint.config.num_classes)


def integer_classifier(model: IntegerModel, device=None):
    """The integer model's base classifier: the compiled kernels on the CPU, ``intrs.torch_engine`` on
    another torch device (the same integers either way)."""
    if is_cpu(device):
        return IntegerClassifier(model)
    from .torch_engine import TorchIntegerClassifier

    return TorchIntegerClassifier(model, device)


def _lattice_on(device):
    return None if is_cpu(device) else device  # the CPU keeps the numpy sampler and its compiled kernel


def intrs_quant(model: IntegerModel, sigma: float, noise: str = "discrete-gaussian", device=None) -> System:
    """IntRS-quant: the integer-only model fed integer noise on the pixel grid, integer votes."""
    if noise not in INTRS_NOISES:
        raise ConfigError(f"IntRS-quant noise must be one of {', '.join(INTRS_NOISES)}, got {noise!r}")
    return System("intrs-quant", noise_law(noise, sigma, _lattice_on(device)), integer_classifier(model, device),
                  model.num_classes)


def floatrs_quant(model: IntegerModel, sigma: float, device=None) -> System:
    """FloatRS-quant (the paper's baseline, our reading of SPEC 4): a post-training-quantized model under
    continuous Gaussian noise rounded to the pixel grid, Cohen's radius (exact for that noise)."""
    return System("floatrs-quant", noise_law("rounded-gaussian", sigma, _lattice_on(device)),
                  integer_classifier(model, device), model.num_classes)


def check_integer_model_fits(model: IntegerModel, info: DatasetInfo, path=None) -> None:
    """Raise unless the integer model was made for data set ``info``."""
    dataset = model.meta.get("dataset")
    if (dataset and dataset != info.name) or tuple(model.input_shape) != info.shape \
            or model.num_classes != info.num_classes:
        raise CheckpointError(f"integer model {path or ''} was made for {dataset} {tuple(model.input_shape)} with "
                              f"{model.num_classes} classes, but the data is {info.name} {info.shape} with "
                              f"{info.num_classes} classes: pass the matching model or --dataset")


def model_facts(source: Checkpoint | IntegerModel) -> tuple[str | None, float | None]:
    """(data set, training sigma) that a float checkpoint or an integer model records."""
    if isinstance(source, IntegerModel):
        return source.meta.get("dataset"), source.meta.get("sigma")
    return source.dataset, source.sigma


def check_fits(source: Checkpoint | IntegerModel, info: DatasetInfo, path=None) -> None:
    """Raise unless the model (float or integer) was made for data set ``info``."""
    if isinstance(source, IntegerModel):
        check_integer_model_fits(source, info, path)
    else:
        source.check_fits(info)


def make_system(name: str, source: Checkpoint | IntegerModel, sigma: float, noise: str | None = None,
                device=None) -> System:
    """The system called ``name`` on ``source`` (a float checkpoint for floatrs-fp, an integer model for
    the quantized systems) with noise level ``sigma``, run on ``device`` (a torch device or None: the CPU)."""
    if name not in SYSTEM_NAMES:
        raise ConfigError(f"unknown system {name!r}: choose one of {', '.join(SYSTEM_NAMES)}")
    if name == "floatrs-fp":
        if not isinstance(source, Checkpoint):
            raise ConfigError("floatrs-fp certifies a float model: pass --checkpoint")
        if noise not in (None, "gaussian"):
            raise ConfigError(f"floatrs-fp uses continuous Gaussian noise, not {noise!r}")
        return floatrs_fp(source, sigma, device)
    if not isinstance(source, IntegerModel):
        raise ConfigError(f"{name} certifies an integer model: pass its file from 'intrs quantize'")
    if name == "intrs-quant":
        return intrs_quant(source, sigma, noise or "discrete-gaussian", device)
    if noise not in (None, "rounded-gaussian"):
        raise ConfigError(f"floatrs-quant uses continuous Gaussian noise rounded to the grid, not {noise!r}")
    return floatrs_quant(source, sigma, device)
