"""Noise laws: each one a seeded batched sampler and the certified radius valid for it.

Keeping the radius with the noise (as tonyduan/rs4a does) means no system can
pair a noise with the wrong certificate. Pixels come in as uint8 (C, H, W); each
law returns a batch in the domain its base classifier takes.
"""

from __future__ import annotations

import math
import random
from fractions import Fraction
from functools import lru_cache
from typing import Protocol

import mpmath
import numpy as np
import torch
from scipy.stats import norm

from . import discrete, kernels, threads
from .certificate import CERTIFICATE_STATUS, certified_radius
from .data import PIXEL_MAX
from .discrete import PRECISION_BITS as _PRECISION_BITS, tail_support
from .errors import ConfigError
from .rng import device_stream, stream_seed


MAX_SIGMA = 100.0  # 100 times the whole pixel range: beyond it every sample is noise, and 255 sigma overflows tables


def check_sigma(sigma: float) -> float:
    """sigma must be a positive finite number (in [0, 1] pixel units), at most ``MAX_SIGMA``."""
    if not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma <= 0:
        raise ConfigError(f"sigma must be a positive number in [0,1] pixel units (e.g. 0.25), got {sigma!r}")
    if sigma > MAX_SIGMA:
        raise ConfigError(f"sigma must be a positive number in [0,1] pixel units (e.g. 0.25), at most {MAX_SIGMA:g} "
                          f"(noise {MAX_SIGMA:g} times the pixel range drowns any image), got {sigma!r}")
    return float(sigma)


class NoiseLaw(Protocol):
    """What the counting loop needs from a noise: a name, a sigma, a sampler and a radius."""

    name: str
    sigma: float

    def generator(self, seed: int, *key: int):
        """A fresh random generator for this law's sampler: the stream (seed, *key) of a 64-bit ``seed``
        (e.g. key (image index, stage)), distinct keys giving unrelated streams."""

    def perturb(self, pixels: torch.Tensor, count: int, generator) -> torch.Tensor:
        """``count`` noisy copies of one uint8 image (C, H, W), drawn from ``generator``."""

    def radius(self, p_lower: float) -> float:
        """The L2 radius (in [0, 1] units) certified by a top-class lower bound ``p_lower``."""

    @property
    def certificate_status(self) -> str:
        """What is proven about ``radius`` under this noise (``intrs.certificate.CERTIFICATE_STATUS``)."""


class GaussianNoise:
    """Continuous isotropic Gaussian N(0, sigma^2 I) on x = p / 255: Cohen's smoothing (FloatRS).

    Drawn on ``device`` (default: the CPU) from that device's stream (``intrs.rng.device_stream``): the
    same rows for the same seed on the same device; a GPU's rows differ from the CPU's (another generator,
    and float arithmetic that rounds differently).
    """

    name = "gaussian"

    def __init__(self, sigma: float, device: str | torch.device | None = None):
        self.sigma = check_sigma(sigma)
        self.device = torch.device("cpu" if device is None else device)

    def generator(self, seed: int, *key: int) -> torch.Generator:
        return device_stream(self.device, seed, *key)  # distinct (seed, *key) do not share noise (intrs.rng)

    def perturb(self, pixels: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
        x = pixels.to(device=self.device, dtype=torch.float32).div_(PIXEL_MAX)
        noise = torch.randn((count, *x.shape), generator=generator, dtype=torch.float32, device=self.device)
        return noise.mul_(self.sigma).add_(x)

    def radius(self, p_lower: float) -> float:
        return certified_radius(self.sigma, p_lower)

    @property
    def certificate_status(self) -> str:
        return CERTIFICATE_STATUS[self.name]

    def __repr__(self) -> str:
        return f"GaussianNoise(sigma={self.sigma})"


# ---------------------------------------------------------------- the discrete Gaussian (SPEC section 3)


def sigma_in_pixel_steps(sigma: float) -> Fraction:
    """sigma_q = sigma / s = 255 sigma as an exact fraction (0.12 -> 153/5, i.e. 30.6 pixel steps).

    The decimal a user typed is taken literally, so the oracle and the fast
    sampler agree on the same sigma_q.
    """
    return Fraction(str(check_sigma(sigma))) * PIXEL_MAX


def _bernoulli(p: Fraction, rng: random.Random) -> bool:
    """Bernoulli(p) for rational p in [0, 1] from uniform integers."""
    return rng.randrange(p.denominator) < p.numerator


def _bernoulli_exp_minus(gamma: Fraction, rng: random.Random) -> bool:
    """Bernoulli(exp(-gamma)) for rational gamma >= 0 (Canonne, Kamath, Steinke 2020, Algorithm 1)."""
    while gamma > 1:
        if not _bernoulli_exp_minus(Fraction(1), rng):
            return False
        gamma -= 1
    k = 1
    while _bernoulli(gamma / k, rng):
        k += 1
    return k % 2 == 1


def _discrete_laplace(t: int, rng: random.Random) -> int:
    """P[x] proportional to exp(-|x| / t) on the integers, t a positive integer (CKS 2020, Algorithm 2)."""
    while True:
        u = rng.randrange(t)
        if not _bernoulli_exp_minus(Fraction(u, t), rng):
            continue
        v = 0
        while _bernoulli_exp_minus(Fraction(1), rng):
            v += 1
        x = u + t * v
        negative = rng.randrange(2) == 1
        if negative and x == 0:
            continue
        return -x if negative else x


def exact_discrete_gaussian(sigma_q: Fraction, count: int, rng: random.Random) -> list[int]:
    """``count`` exact draws from N_Z(0, sigma_q^2) (CKS 2020, Algorithm 3).

    Integer and rational arithmetic only: a discrete Laplace proposal with
    t = floor(sigma_q) + 1, accepted with probability
    exp(-(|y| - sigma_q^2 / t)^2 / (2 sigma_q^2)). About 15,000 draws per second:
    the slow oracle the fast sampler is tested against, not for certification.
    """
    sigma_q = Fraction(sigma_q)
    if sigma_q <= 0:
        raise ConfigError(f"sigma_q must be positive, got {sigma_q}")
    t = math.floor(sigma_q) + 1
    var = sigma_q * sigma_q
    out = []
    while len(out) < count:
        y = _discrete_laplace(t, rng)
        if _bernoulli_exp_minus((abs(y) - var / t) ** 2 / (2 * var), rng):
            out.append(y)
    return out


TABLE_BITS = 128  # thresholds are 128-bit integers, compared as (high, low) 64-bit words


# Pieces of a parallel draw: at least PIECE_WORDS words (fewer cost more to hand to a thread than they save),
# at most about CACHED_WORDS (so that a piece's words are still in cache when they are looked up).
PIECE_WORDS, CACHED_WORDS = 1 << 16, 1 << 18


def word_streams(generator, size: int, align: int = 1) -> list[tuple[int, int, object]]:
    """The next ``size`` raw 64-bit words of ``generator`` as pieces (start, stop, bit generator whose next
    ``stop - start`` raw words are exactly words start..stop of one ``random_raw(size)`` call), the starts
    multiples of ``align``; the generator itself moves past all of them. Several pieces only where the bit
    generator can jump ahead (numpy's PCG64 ``advance``), for the kernels' threads."""
    bits = generator.bit_generator
    count = max(min(threads.thread_count(), size // PIECE_WORDS), size // CACHED_WORDS, 1)
    count = min(count, size // align) if hasattr(bits, "advance") else 1
    if count <= 1:
        return [(0, size, bits)]
    edges = [align * ((size // align) * k // count) for k in range(count)] + [size]
    streams = []
    for start, stop in zip(edges, edges[1:]):
        copy = type(bits)()
        copy.state = bits.state
        streams.append((start, stop, copy.advance(start)))  # advance returns the bit generator
    bits.advance(size)
    return streams


class TableSampler:
    """Inverse-CDF sampling of a symmetric integer law over a table of 128-bit integer thresholds.

    Entry j of the table is T_j = floor(2^128 * F(k_j)), F the exact CDF on the
    support [-K, K] (computed with 256-bit mpmath arithmetic). A draw is the first
    k_j with U < T_j for U uniform on [0, 2^128), compared exactly as (high, low) uint64
    words (the bound below needs that: ``_settle_tie``). Its law q differs from the exact
    pmf p by:

        TV(p, q) <= (2K + 1) * 2^-128 / 2 + P[|k| > K] < 2^-110 per coordinate

    (each q_j = (T_j - T_{j-1}) / 2^128 is within 2^-128 of p_j; the mass outside
    [-K, K] is below 2^-130 by the Gaussian tail bound; K < 2^16 for sigma_q <= 255 * 4).
    Only integer random bits are consumed: one 64-bit word per draw, and a second
    only when the first equals a threshold's high word (probability < (2K+1) 2^-64).
    """

    def __init__(self, name: str, sigma_q: Fraction, pmf_numerators: list, normalizer):
        self.name, self.sigma_q = name, sigma_q
        support = (len(pmf_numerators) - 1) // 2
        self.values = np.arange(-support, support + 1, dtype=np.int32)
        scale = mpmath.mpf(2) ** TABLE_BITS
        cumulative, thresholds = mpmath.mpf(0), []
        for weight in pmf_numerators:
            cumulative += weight
            thresholds.append(min(int(mpmath.floor(cumulative / normalizer * scale)), 2 ** TABLE_BITS - 1))
        thresholds[-1] = 2 ** TABLE_BITS  # the last entry takes every remaining U
        self.high = np.array([t >> 64 for t in thresholds[:-1]] + [2 ** 64 - 1], dtype=np.uint64)
        self.low = np.array([t & (2 ** 64 - 1) for t in thresholds[:-1]] + [2 ** 64 - 1], dtype=np.uint64)
        self.support = support

        # A guide over the top bits of the high word: where the search for a word of that bucket starts.
        self.guide_bits = min(16, max(8, math.ceil(math.log2(len(self.high))) + 2))
        starts = np.arange(2 ** self.guide_bits, dtype=np.uint64) << np.uint64(64 - self.guide_bits)
        self.guide = np.searchsorted(self.high, starts, side="left").astype(np.int32)

    def sample(self, shape: tuple[int, ...], generator: np.random.Generator,
               offsets: np.ndarray | None = None) -> np.ndarray:
        """int32 draws of the given shape, from ``generator``'s raw 64-bit words; ``offsets`` (an integer
        array of the shape's trailing dimensions, e.g. an image) is added to every draw when given. The
        same draws however many threads make them (``word_streams``)."""
        size = int(np.prod(shape))
        flat = None if offsets is None else np.ascontiguousarray(np.asarray(offsets, dtype=np.int32).ravel())
        period = 1 if flat is None else len(flat)
        draws = np.empty(size, dtype=np.int32)

        def draw(stream) -> list[tuple[int, int]]:
            start, stop, bits = stream
            words, out = bits.random_raw(stop - start), draws[start:stop]
            tie = kernels.table_draw(self.high, self.guide, self.guide_bits, self.values, words, out, flat)
            if tie is None:
                index = np.searchsorted(self.high, words, side="right")
                tie = np.searchsorted(self.high, words, side="left") < index
                out[:] = self.values[np.minimum(index, len(self.values) - 1)]
                if flat is not None:
                    out.reshape(-1, period)[:] += flat
            return [(start + int(i), int(words[i])) for i in np.flatnonzero(tie)]

        ties = [tie for found in threads.parallel_map(draw, word_streams(generator, size, period)) for tie in found]
        for i, word in ties:  # in index order, after every word of the batch: the draws do not depend on threads
            draws[i] = self._settle_tie(word, _low_word(generator)) + (0 if flat is None else int(flat[i % period]))
        return draws.reshape(shape)

    def _settle_tie(self, high: int, low: np.uint64) -> int:
        """U = high * 2^64 + low is below T_j when high < T_j's high word, or when the high words are
        equal and low < T_j's low word: the rare equal case draws the low word."""
        word = np.uint64(high)
        left, right = (int(np.searchsorted(self.high, word, side=side)) for side in ("left", "right"))
        index = left + int(np.searchsorted(self.low[left:right], np.uint64(low), side="right"))
        return int(self.values[min(index, len(self.values) - 1)])

    def sample_on(self, device: torch.device, shape: tuple[int, ...], generator: np.random.Generator,
                  offsets: torch.Tensor | None = None) -> torch.Tensor:
        """``sample`` with the table search on a torch device: the same int32 draws, on ``device``.

        The 64-bit words are ``generator``'s (the same words ``sample`` reads, drawn by the kernels'
        threads where they can jump ahead), moved to the device and searched there against the table
        (``search_on``); a tie's low word is drawn afterwards in index order, as ``sample`` draws it, and
        settled by ``_settle_tie``. So the draws equal ``sample``'s for the same generator, on any device.
        """
        size = int(np.prod(shape))
        words = np.empty(size, dtype=np.uint64)

        def fill(stream) -> None:
            start, stop, bits = stream
            words[start:stop] = bits.random_raw(stop - start)

        threads.parallel_map(fill, word_streams(generator, size))
        draws, ties = self.search_on(torch.from_numpy(words.view(np.int64)).to(device))
        for i in ties.tolist():  # rare (probability < (2K + 1) 2^-64 a draw): settled on the host
            draws[i] = self._settle_tie(int(words[i]), _low_word(generator))
        draws = draws.reshape(shape)
        return draws if offsets is None else draws.add_(offsets.to(device=device, dtype=torch.int32))

    def search_on(self, words: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The draws (int32, on the words' device) for high words given as int64 bit patterns, and the
        indices whose word equals a threshold's high word (their draw needs ``_settle_tie``).

        Torch has no unsigned 64-bit search, so words and thresholds are compared as signed integers with
        their top bit flipped (u XOR 2^63, read as int64): an order-preserving map of [0, 2^64)."""
        high, values = self._device_table(words.device)
        signed = words ^ torch.iinfo(torch.int64).min
        index = torch.searchsorted(high, signed, right=True)
        ties = torch.nonzero(torch.searchsorted(high, signed, right=False) < index).flatten()
        return values[index.clamp_(max=len(values) - 1)], ties.cpu()

    def _device_table(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        cache = self.__dict__.setdefault("_on_device", {})
        if device not in cache:
            flipped = (self.high ^ np.uint64(1 << 63)).view(np.int64)
            cache[device] = (torch.from_numpy(flipped).to(device), torch.from_numpy(self.values).to(device))
        return cache[device]


def _low_word(generator: np.random.Generator) -> np.uint64:
    # random_raw() gives a Python int: searched as is against uint64 words, one below 2^63 is promoted
    # with them to float64 and rounds onto its neighbours (issue 15). As a uint64 it compares exactly.
    return np.uint64(generator.bit_generator.random_raw())


@lru_cache(maxsize=32)
def discrete_gaussian_table(sigma_q: Fraction) -> TableSampler:
    """The table sampler of N_Z(0, sigma_q^2): P[k] proportional to exp(-k^2 / (2 sigma_q^2))."""
    with mpmath.workprec(_PRECISION_BITS):
        support = tail_support(sigma_q)
        weights = discrete.weights(sigma_q, range(-support, support + 1))
        # the normalizer sums far beyond the support, so the table's CDF is the true one
        return TableSampler("discrete-gaussian", sigma_q, weights, discrete.normalizer(sigma_q))


@lru_cache(maxsize=32)
def rounded_gaussian_table(sigma_q: Fraction) -> TableSampler:
    """The table sampler of round(eps), eps ~ N(0, sigma_q^2): P[k] = Phi((k + 1/2) / s) - Phi((k - 1/2) / s)."""
    with mpmath.workprec(_PRECISION_BITS):
        support = tail_support(sigma_q)
        s = mpmath.mpf(sigma_q.numerator) / sigma_q.denominator
        edges = [mpmath.ncdf((mpmath.mpf(k) - mpmath.mpf(1) / 2) / s) for k in range(-support, support + 2)]
        weights = [edges[i + 1] - edges[i] for i in range(2 * support + 1)]
        return TableSampler("rounded-gaussian", sigma_q, weights, mpmath.mpf(1))


def rounded_gaussian_pmf(sigma_q: Fraction, k: np.ndarray) -> np.ndarray:
    """P[round(eps) = k] for eps ~ N(0, sigma_q^2) (float64, for tests)."""
    s, k = float(sigma_q), np.asarray(k, dtype=np.float64)
    return norm.cdf((k + 0.5) / s) - norm.cdf((k - 0.5) / s)


def discrete_gaussian_pmf(sigma_q: Fraction, k: np.ndarray) -> np.ndarray:
    """The exact pmf P[k] (float64 values, for tests and plots), normalized by theta (``intrs.discrete``)."""
    return discrete.pmf(sigma_q, k)


def numpy_generator(seed: int) -> np.random.Generator:
    """The integer-noise generator for one 64-bit stream seed (PCG64)."""
    return np.random.Generator(np.random.PCG64(seed))


class LatticeNoise:
    """Integer noise on the pixel grid: x_q + k, k drawn per coordinate from a table sampler.

    Lives on the unbounded lattice (never truncated to [0, 255], SPEC section 2);
    returns int32 noisy inputs in pixel steps, drawn from integer random bits only.
    With a torch ``device`` the table is searched there (``TableSampler.sample_on``) and the
    noisy inputs come back on it: the same integers as without, for the same seed.
    """

    name = "lattice"
    _table = None

    def __init__(self, sigma: float, device: str | torch.device | None = None):
        self.sigma = check_sigma(sigma)
        self.sigma_q = sigma_in_pixel_steps(sigma)
        self.table = type(self)._table(self.sigma_q)
        self.device = None if device is None else torch.device(device)

    def generator(self, seed: int, *key: int) -> np.random.Generator:
        # A seed alone is PCG64(seed); a keyed stream goes through stream_seed, as CERTIFY's always has.
        return numpy_generator(stream_seed(seed, *key) if key else seed)

    def perturb(self, pixels: torch.Tensor, count: int, generator: np.random.Generator) -> torch.Tensor:
        if self.device is not None:
            return self.table.sample_on(self.device, (count, *pixels.shape), generator, offsets=pixels)
        return torch.from_numpy(self.table.sample((count, *pixels.shape), generator, offsets=pixels.numpy()))

    def draw(self, shape: tuple[int, ...], generator: np.random.Generator) -> np.ndarray:
        """The integer noise k alone, of any shape (int32), as ``perturb`` draws it: for the attacks and the
        noise-augmented training that add it to batches themselves, and for timing the sampler."""
        return self.table.sample(tuple(shape), generator)

    def radius(self, p_lower: float) -> float:
        return certified_radius(self.sigma, p_lower)

    @property
    def certificate_status(self) -> str:
        return CERTIFICATE_STATUS[self.name]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sigma={self.sigma}, sigma_q={self.sigma_q})"


class DiscreteGaussianNoise(LatticeNoise):
    """IntRS noise: k ~ N_Z(0, sigma_q^2), sigma_q = 255 sigma; the paper's Proposition 3.1 radius."""

    name = "discrete-gaussian"
    _table = staticmethod(discrete_gaussian_table)


class RoundedGaussianNoise(LatticeNoise):
    """k = round(eps / s), eps ~ N(0, sigma^2): continuous noise rounded to the grid (FloatRS-quant).

    Adding it to a grid input is Cohen's smoothing of f composed with rounding, so
    Cohen's radius holds exactly: the option whose certificate has a complete proof.
    """

    name = "rounded-gaussian"
    _table = staticmethod(rounded_gaussian_table)


def noise_law(name: str, sigma: float, device: str | torch.device | None = None) -> NoiseLaw:
    """The noise law called ``name`` at level ``sigma``, drawn on ``device`` (default: the CPU's own path)."""
    laws = {"gaussian": GaussianNoise, "discrete-gaussian": DiscreteGaussianNoise,
            "rounded-gaussian": RoundedGaussianNoise}
    if name not in laws:
        raise ConfigError(f"unknown noise {name!r}: choose one of {', '.join(laws)}")
    return laws[name](sigma, device)
