"""Randomized smoothing: the counting loop, CERTIFY and PREDICT (Cohen et al. 2019).

A smoothed classifier g(x) = argmax_c P[f(x + noise) = c] is estimated by
Monte-Carlo: draw noisy copies of x, run the base classifier f on them, count
the votes. ``SmoothedClassifier`` pairs any base classifier (a callable from a
batch to labels) with any noise law (``intrs.noise``); it knows nothing of where
either comes from.

Randomness: every image gets its own stream per stage, derived from
(seed, idx, stage), so any image re-runs alone, in any order, on any worker, with
the same counts (for the same batch size).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Callable, Iterator

import numpy as np
import torch

from .confidence import (PredictThresholds, SequentialBounds, batch_schedule, binomial_p_value, check_radii,
                         clopper_pearson_lower, radius_tables)
from .errors import ConfigError
from .noise import NoiseLaw
from .rng import STAGE_ESTIMATE, STAGE_PREDICT, STAGE_SELECT

ABSTAIN = -1

BaseClassifier = Callable[[torch.Tensor], torch.Tensor]
"""A base classifier f: a batch of noisy inputs -> int64 labels, one per input."""


def check_alpha(alpha: float) -> float:
    if not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or not 0 < alpha < 1:
        raise ConfigError(f"alpha must lie strictly between 0 and 1 (e.g. 0.001), got {alpha!r}")
    return float(alpha)


def check_sample_sizes(n: int, n0: int | None = None, batch_size: int | None = None) -> None:
    if int(n) < 1:
        raise ConfigError(f"n (Monte-Carlo samples) must be at least 1, got {n}")
    if n0 is not None and not 1 <= int(n0) <= int(n):
        raise ConfigError(f"n0 (selection samples) must lie in 1..n = {n}, got {n0}")
    if batch_size is not None and int(batch_size) < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")


@dataclass(frozen=True)
class Certificate:
    """CERTIFY's answer: the class (ABSTAIN = -1), its L2 radius, and the evidence behind them."""

    prediction: int
    radius: float  # never above the exact sigma * PhiInv(p_lower) (certified_radius)
    counts_top: int  # nA: votes for the selected class among the n estimation samples
    n: int
    p_lower: float  # never above the exact Clopper-Pearson bound (clopper_pearson_lower)

    @property
    def abstained(self) -> bool:
        return self.prediction == ABSTAIN


@dataclass(frozen=True)
class Prediction:
    """PREDICT's answer: the class (ABSTAIN = -1), the two largest vote counts and the test's p-value."""

    prediction: int
    counts_top: int
    counts_second: int
    n: int
    p_value: float

    @property
    def abstained(self) -> bool:
        return self.prediction == ABSTAIN


CERTIFIED, REFUTED, OUT_OF_BUDGET = "certified", "refuted", "budget"
"""How sequential CERTIFY decided a listed radius: certified; refuted (the upper bound is below it: pA <
Phi(r / sigma) with the same confidence); or out of the budget (not certifiable within max_n samples)."""


@dataclass(frozen=True)
class SequentialCertificate(Certificate):
    """Sequential CERTIFY's answer: a ``Certificate`` (n = the estimation samples it used) and how it stopped.

    ``stop``: "decided" (every listed radius decided), "settled" (the radius known within the tolerance),
    "abstain" (the upper bound is at most 1/2) or "budget" (max_n reached). ``decisions``: (radius, how it
    was decided) for each listed radius, empty in tolerance mode.
    """

    p_upper: float  # the sequence's upper bound at the stop (never below the exact one)
    max_n: int
    stop: str
    decisions: tuple[tuple[float, str], ...] = ()


@dataclass(frozen=True)
class SequentialPrediction(Prediction):
    """Sequential PREDICT's answer: a ``Prediction`` (n = the samples it used; p_value anytime-valid) and its budget."""

    max_n: int


def _radius_estimate(sigma: float, p: float) -> float:
    """sigma PhiInv(p) in float64, for stopping rules only (certificates go through the noise law's radius)."""
    if p <= 0.5:
        return 0.0
    return math.inf if p >= 1 else sigma * NormalDist().inv_cdf(p)


class SmoothedClassifier:
    """A base classifier smoothed by a noise law (Cohen et al. 2019, Section 3)."""

    def __init__(self, base: BaseClassifier, noise: NoiseLaw, num_classes: int, batch_size: int = 1000):
        check_sample_sizes(1, batch_size=batch_size)
        self.base, self.noise, self.num_classes, self.batch_size = base, noise, int(num_classes), int(batch_size)

    def sample_counts(self, pixels: torch.Tensor, num: int, seed: int, *key: int) -> np.ndarray:
        """Votes of the base classifier on ``num`` noisy copies of ``pixels``, drawn in batches
        from the noise law's generator for the stream (seed, *key)."""
        generator = self.noise.generator(seed, *key)
        counts = np.zeros(self.num_classes, dtype=np.int64)
        remaining = int(num)
        while remaining > 0:
            size = min(self.batch_size, remaining)
            counts += votes(self.base(self.noise.perturb(pixels, size, generator)), self.num_classes)
            remaining -= size
        return counts

    def certify(self, pixels: torch.Tensor, n0: int, n: int, alpha: float, seed: int = 0, idx: int = 0) -> Certificate:
        """Cohen et al. 2019, Alg. CERTIFY.

        With probability at least 1 - alpha over the sampling, if the answer is a
        class cA with radius R, the smoothed classifier g predicts cA at every
        input within L2 distance R of x (R from ``self.noise.radius``). Selection
        (n0 samples) and estimation (n samples) use independent streams.
        """
        check_sample_sizes(n, n0)
        alpha = check_alpha(alpha)
        selection = self.sample_counts(pixels, n0, seed, idx, STAGE_SELECT)
        top = int(selection.argmax())
        estimation = self.sample_counts(pixels, n, seed, idx, STAGE_ESTIMATE)
        counts_top = int(estimation[top])
        p_lower = clopper_pearson_lower(counts_top, n, alpha)
        if p_lower <= 0.5:
            return Certificate(ABSTAIN, 0.0, counts_top, n, p_lower)
        return Certificate(top, self.noise.radius(p_lower), counts_top, n, p_lower)

    def predict(self, pixels: torch.Tensor, n: int, alpha: float, seed: int = 0, idx: int = 0) -> Prediction:
        """Cohen et al. 2019, Alg. PREDICT (the paper's Algorithm 2).

        Returns the top class when the two-sided binomial test of nA out of
        nA + nB against p = 1/2 has p-value <= alpha, else ABSTAIN: with
        probability at least 1 - alpha the answer, when not ABSTAIN, is g(x).
        """
        check_sample_sizes(n)
        alpha = check_alpha(alpha)
        counts = self.sample_counts(pixels, n, seed, idx, STAGE_PREDICT)
        # A stable sort keeps the lower class index first among equal counts.
        order = np.argsort(-counts, kind="stable")
        top, second = int(order[0]), int(order[1]) if len(order) > 1 else int(order[0])
        n_top, n_second = int(counts[top]), int(counts[second]) if len(order) > 1 else 0
        p_value = binomial_p_value(n_top, n_top + n_second)
        prediction = top if p_value <= alpha else ABSTAIN
        return Prediction(prediction, n_top, n_second, int(n), p_value)


    def count_steps(self, pixels: torch.Tensor, steps: tuple[int, ...], seed: int, *key: int) -> Iterator[np.ndarray]:
        """The cumulative votes after each step of a batch schedule (t_1 < t_2 < ...), from one stream (seed, *key).

        The counting loop of the sequential rules: each step draws t_k - t_{k-1} noisy copies (at most
        ``batch_size`` per forward pass) and yields the running counts; a consumer stops whenever it likes.
        """
        generator = self.noise.generator(seed, *key)
        counts = np.zeros(self.num_classes, dtype=np.int64)
        drawn = 0
        for t in steps:
            while drawn < t:
                size = min(self.batch_size, t - drawn)
                counts += votes(self.base(self.noise.perturb(pixels, size, generator)), self.num_classes)
                drawn += size
            yield counts.copy()

    def certify_sequential(self, pixels: torch.Tensor, n0: int, max_n: int, alpha: float, radii=None,
                           tolerance: float | None = None, seed: int = 0, idx: int = 0) -> SequentialCertificate:
        """Cohen et al. 2019, Alg. CERTIFY, with an anytime-valid estimation stage that stops early.

        Selection as Cohen's: n0 samples from the stream (seed, idx, STAGE_SELECT), cA their most frequent
        class. Estimation draws from the independent stream (seed, idx, STAGE_ESTIMATE) in the steps of
        ``batch_schedule(max_n, batch_size)`` and bounds pA = P[f(x + noise) = cA] with
        ``SequentialBounds`` (the mixture confidence sequence at alpha / 2 at every step, Clopper-Pearson at
        alpha / 2 at max_n): with probability at least 1 - alpha the lower bound stays below pA at every
        step, so whatever the rule stops on, the answer is Cohen's guarantee with that lower bound: if it is a
        class cA with radius R, the smoothed classifier predicts cA within L2 distance R of x.

        With ``radii``: stop once each listed radius is decided (``RadiusTables``: certified, refuted, or
        out of the budget), or at max_n. Without: stop once the radius is known within ``tolerance``
        (sigma PhiInv(upper) - R <= tolerance, or max_n could raise R by at most that much), or once
        upper <= 1/2 (ABSTAIN), or at max_n. R = sigma PhiInv(L) from ``self.noise.radius``, L the largest
        lower bound of the steps drawn (the sequence holds at all of them at once), ABSTAIN unless L > 1/2;
        R is never below a listed radius the rule certified.
        """
        check_sample_sizes(max_n, n0)
        alpha = check_alpha(alpha)
        if (radii is None) == (tolerance is None):
            raise ConfigError("sequential CERTIFY needs either radii to decide or a tolerance on the radius")
        if tolerance is not None and not (math.isfinite(tolerance) and tolerance > 0):
            raise ConfigError(f"the radius tolerance must be a number > 0 (e.g. 0.05), got {tolerance!r}")
        bounds = SequentialBounds(batch_schedule(max_n, self.batch_size), alpha)
        selection = self.sample_counts(pixels, n0, seed, idx, STAGE_SELECT)
        top = int(selection.argmax())
        steps = self.count_steps(pixels, bounds.steps, seed, idx, STAGE_ESTIMATE)
        if radii is not None:
            return self._decide_radii(top, steps, bounds, check_radii(radii))
        return self._settle_radius(top, steps, bounds, float(tolerance))

    def _decide_radii(self, top: int, steps: Iterator[np.ndarray], bounds: SequentialBounds,
                      radii: tuple[float, ...]) -> SequentialCertificate:
        tables = radius_tables(bounds.steps, bounds.alpha, self.noise.sigma, radii)
        status: list[str | None] = [None] * len(radii)
        best = 0.0
        last = len(bounds.steps) - 1
        for k, counts in enumerate(steps):
            count, t = int(counts[top]), bounds.steps[k]
            if count / t > best:  # the lower bound lies below count / t: only then can it raise best
                best = bounds.lower(k, count, at_least=best)
            for j in range(len(radii)):
                if status[j] is None:
                    if count >= tables.certify_at[k, j]:
                        status[j] = CERTIFIED
                    elif count < tables.refuted_below[k, j]:
                        status[j] = REFUTED
                    elif count < tables.budget_below[k, j]:
                        status[j] = OUT_OF_BUDGET
            if all(status):
                break
        certified = [r for r, how in zip(radii, status) if how == CERTIFIED]
        stop = "budget" if k == last else "decided"
        return self._sequential_answer(top, count, k, bounds, best, certified[-1] if certified else 0.0, stop,
                                       tuple(zip(radii, status)))

    def _settle_radius(self, top: int, steps: Iterator[np.ndarray], bounds: SequentialBounds,
                       tolerance: float) -> SequentialCertificate:
        sigma, best, upper, last = self.noise.sigma, 0.0, 1.0, len(bounds.steps) - 1
        stop = "budget"
        for k, counts in enumerate(steps):
            count, t = int(counts[top]), bounds.steps[k]
            if count / t > best:
                best = bounds.lower(k, count, at_least=best)
            upper = min(upper, bounds.upper(k, count))  # the running intersection is valid too
            if k == last:
                break
            radius = _radius_estimate(sigma, best)
            if upper <= 0.5:
                stop = "abstain"
                break
            reachable = bounds.lower_float(last, count + bounds.budget - t)  # every remaining vote for cA
            if min(_radius_estimate(sigma, upper), _radius_estimate(sigma, reachable)) - radius <= tolerance:
                stop = "settled"
                break
        return self._sequential_answer(top, count, k, bounds, best, 0.0, stop, (), upper)

    def _sequential_answer(self, top, count, k, bounds, best, certified_radius_floor, stop, decisions,
                           upper=None) -> SequentialCertificate:
        upper = bounds.upper(k, count) if upper is None else upper
        n, max_n = bounds.steps[k], bounds.budget
        if not best > 0.5:
            return SequentialCertificate(ABSTAIN, 0.0, count, n, best, upper, max_n, stop, decisions)
        # certified_radius_floor: a listed radius the exact test certified, itself a valid certificate.
        radius = max(self.noise.radius(best), certified_radius_floor)
        return SequentialCertificate(top, radius, count, n, best, upper, max_n, stop, decisions)

    def predict_sequential(self, pixels: torch.Tensor, max_n: int, alpha: float, seed: int = 0,
                           idx: int = 0) -> SequentialPrediction:
        """Cohen et al. 2019, Alg. PREDICT (the paper's Algorithm 2) with an anytime-valid test that stops early.

        Draws from the stream (seed, idx, STAGE_PREDICT) in the steps of ``batch_schedule(max_n,
        batch_size)``; after each step, with nA, nB the two largest counts (ties to the lower class index),
        returns the top class once nA >= ``PredictThresholds.decide_at(nA + nB)``, ABSTAIN at max_n. With
        probability at least 1 - alpha the answer, when not ABSTAIN, is g(x), whenever it stops
        (``PredictThresholds`` gives the argument: a sequence on the votes of each pair, a union over the
        K - 1 classes that could be returned wrongly).
        """
        check_sample_sizes(max_n)
        alpha = check_alpha(alpha)
        steps = batch_schedule(max_n, self.batch_size)
        rule = PredictThresholds(alpha, self.num_classes)
        last = len(steps) - 1
        for k, counts in enumerate(self.count_steps(pixels, steps, seed, idx, STAGE_PREDICT)):
            order = np.argsort(-counts, kind="stable")  # a stable sort keeps the lower class index first
            top = int(order[0])
            n_top, n_second = int(counts[top]), int(counts[order[1]]) if len(order) > 1 else 0
            if n_top >= rule.decide_at(n_top + n_second, final=k == last):
                break
        else:
            top = ABSTAIN
        p_value = rule.p_value(n_top, n_second, final=k == last)
        return SequentialPrediction(top, n_top, n_second, steps[k], p_value, steps[-1])

def votes(labels, num_classes: int) -> np.ndarray:
    """How many of ``labels`` fall on each class 0..num_classes - 1, counted where the labels are (a GPU's
    labels on the GPU: only the counts cross to the host)."""
    if isinstance(labels, torch.Tensor) and labels.device.type != "cpu":
        return torch.bincount(labels.flatten(), minlength=num_classes)[:num_classes].cpu().numpy()
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)[:num_classes]


class TorchClassifier:
    """A float PyTorch model as a base classifier: argmax of its logits, in eval mode, no gradients,
    on ``device`` (default: where the model is; a batch elsewhere is moved there)."""

    device = None  # None: the batch stays where it is

    def __init__(self, model: torch.nn.Module, device: str | torch.device | None = None):
        if device is not None:
            self.device = torch.device(device)
            model = model.to(self.device)
        # channels-last convolutions measured ~10% faster on this project's CPUs.
        self.model = model.eval().to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.device is not None:
            batch = batch.to(self.device)
        if batch.dim() == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return self.model(batch).argmax(dim=1)
