"""Noise laws: each one a seeded batched sampler and the certified radius valid for it.

Keeping the radius with the noise (as tonyduan/rs4a does) means no system can
pair a noise with the wrong certificate. Pixels come in as uint8 (C, H, W); each
law returns a batch in the domain its base classifier takes.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from scipy.stats import norm

from .errors import ConfigError

PIXEL_MAX = 255  # an 8-bit pixel p lies in {0..255}; the real image is p / 255 (SPEC section 1)


def check_sigma(sigma: float) -> float:
    """sigma must be a positive finite number (in [0, 1] pixel units)."""
    if not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma <= 0:
        raise ConfigError(f"sigma must be a positive number in [0,1] pixel units (e.g. 0.25), got {sigma!r}")
    return float(sigma)


def cohen_radius(sigma: float, p_lower: float) -> float:
    """Certified L2 radius R = sigma * PhiInv(pA_lower) (Cohen et al. 2019, Theorem 1, binary form).

    Valid when pA_lower > 1/2 bounds the top-class probability of the smoothed
    classifier from below; 0 otherwise (no certificate).
    """
    if p_lower <= 0.5:
        return 0.0
    return float(sigma * norm.ppf(p_lower))


class NoiseLaw(Protocol):
    """What the counting loop needs from a noise: a name, a sigma, a sampler and a radius."""

    name: str
    sigma: float

    def perturb(self, pixels: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
        """``count`` noisy copies of one uint8 image (C, H, W), drawn from ``generator``."""

    def radius(self, p_lower: float) -> float:
        """The L2 radius (in [0, 1] units) certified by a top-class lower bound ``p_lower``."""


class GaussianNoise:
    """Continuous isotropic Gaussian N(0, sigma^2 I) on x = p / 255: Cohen's smoothing (FloatRS)."""

    name = "gaussian"

    def __init__(self, sigma: float):
        self.sigma = check_sigma(sigma)

    def perturb(self, pixels: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
        x = pixels.to(torch.float32).div_(PIXEL_MAX)
        noise = torch.randn((count, *x.shape), generator=generator, dtype=torch.float32)
        return noise.mul_(self.sigma).add_(x)

    def radius(self, p_lower: float) -> float:
        return cohen_radius(self.sigma, p_lower)

    def __repr__(self) -> str:
        return f"GaussianNoise(sigma={self.sigma})"
