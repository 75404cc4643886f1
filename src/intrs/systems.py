"""The systems compared by the paper: each is a noise law paired with a base classifier.

A system is nothing more than that pair (SPEC section 4), so the three systems
are three small constructors, not three code paths: every one is certified by
the same ``SmoothedClassifier``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .checkpoint import Checkpoint
from .errors import ConfigError
from .noise import GaussianNoise, NoiseLaw
from .smoothing import BaseClassifier, SmoothedClassifier, TorchClassifier


@dataclass
class System:
    name: str
    noise: NoiseLaw
    base: BaseClassifier
    num_classes: int

    def smoothed(self, batch_size: int = 1000) -> SmoothedClassifier:
        return SmoothedClassifier(self.base, self.noise, self.num_classes, batch_size)


def floatrs_fp(checkpoint: Checkpoint, sigma: float) -> System:
    """FloatRS-fp: the float32 model under continuous Gaussian noise, Cohen's radius."""
    return System("floatrs-fp", GaussianNoise(sigma), TorchClassifier(checkpoint.model), checkpoint.config.num_classes)


SYSTEMS = {"floatrs-fp": floatrs_fp}


def make_system(name: str, checkpoint: Checkpoint, sigma: float) -> System:
    """The system called ``name`` built on ``checkpoint`` with noise level ``sigma``."""
    try:
        constructor = SYSTEMS[name]
    except KeyError:
        raise ConfigError(f"unknown system {name!r}: choose one of {', '.join(SYSTEMS)}") from None
    return constructor(checkpoint, sigma)
