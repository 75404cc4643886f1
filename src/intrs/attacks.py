"""Projected gradient descent (Madry et al. 2018) in L-inf and L2, on base and smoothed classifiers.

Images are floats in [0, 1]. Every step moves along the gradient's sign (L-inf) or
its normalised direction (L2), then projects back onto the eps ball around the
clean image and onto the [0, 1] box; the start is random inside the ball. A
quantized model is attacked through its fake-quantized twin (straight-through
gradients). The adversarial image is then brought onto the 8-bit grid by
truncating the perturbation toward zero, which keeps it inside its ball and box,
and judged by the model that is deployed (the integer engine for int8 models).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .data import PIXEL_MAX
from .errors import ConfigError

Logits = Callable[[torch.Tensor], torch.Tensor]
"""A differentiable classifier on images in [0, 1]: (N, C, H, W) floats -> (N, classes) logits."""


def _l2_norm(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))


def project(delta: torch.Tensor, clean: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """delta moved into the eps ball (L-inf or L2) and so that clean + delta stays in [0, 1]."""
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        delta = delta * torch.clamp(eps / _l2_norm(delta), max=1.0)
    return (clean + delta).clamp(0, 1) - clean


def pgd(logits: Logits, images: torch.Tensor, labels: torch.Tensor, eps: float, norm: str, steps: int,
        step_size: float | None = None, generator: torch.Generator | None = None, samples: int = 1,
        noise: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """PGD maximising the cross-entropy of ``logits``; returns adversarial images in [0, 1].

    ``noise`` and ``samples`` attack a smoothed classifier: each step averages the
    loss over ``samples`` noisy copies noise(x + delta) (Salman et al. 2019's
    expectation over noise), as Figure 10 of the paper attacks FloatRS and IntRS.
    """
    if norm not in ("linf", "l2"):
        raise ConfigError(f"PGD norm must be 'linf' or 'l2', got {norm!r}")
    if eps < 0 or steps < 0:
        raise ConfigError(f"PGD needs eps >= 0 and steps >= 0, got eps={eps}, steps={steps}")
    clean = images.detach().to(torch.float32)
    if eps == 0 or steps == 0:
        return clean.clone()
    step_size = step_size or 2.5 * eps / steps
    if norm == "linf":
        delta = (torch.rand(clean.shape, generator=generator) * 2 - 1) * eps
    else:
        direction = torch.randn(clean.shape, generator=generator)
        radius = torch.rand((len(clean),) + (1,) * (clean.dim() - 1), generator=generator) * eps
        delta = direction / _l2_norm(direction) * radius
    delta = project(delta, clean, eps, norm)
    for _ in range(steps):
        delta.requires_grad_(True)
        x = clean + delta
        if noise is None:
            loss = F.cross_entropy(logits(x), labels)
        else:
            loss = sum(F.cross_entropy(logits(noise(x)), labels) for _ in range(samples)) / samples
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            step = grad.sign() if norm == "linf" else grad / _l2_norm(grad)
            delta = project(delta + step_size * step, clean, eps, norm)
    return (clean + delta).detach()


def to_pixel_grid(adversarial: torch.Tensor, clean_pixels: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """uint8 pixels of adversarial images: the perturbation truncated toward zero to whole pixel steps.

    Truncation never grows any |delta_i|, so the result stays in [0, 255] and, up to
    float rounding (corrected here exactly, in integers), in the eps ball.
    """
    clean = clean_pixels.to(torch.int64)
    steps = torch.trunc(adversarial.to(torch.float64) * PIXEL_MAX - clean.to(torch.float64)).to(torch.int64)
    if norm == "linf":
        bound = int(eps * PIXEL_MAX + 1e-9)
        steps = steps.clamp(-bound, bound)
    else:
        limit = (eps * PIXEL_MAX) ** 2 + 1e-9
        for i in range(len(steps)):
            flat = steps[i].view(-1)
            while int((flat * flat).sum()) > limit:  # rare: shrink the largest step by one
                j = int(flat.abs().argmax())
                flat[j] -= int(flat[j].sign())
    return (clean + steps).clamp(0, PIXEL_MAX).to(torch.uint8)
