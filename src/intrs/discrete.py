"""The discrete Gaussian N_Z(0, s^2) on the integers (SPEC section 3), as formulas: where its mass lies, its
normalizer theta = sum_k exp(-k^2 / (2 s^2)) (one formula, one cut-off), and its pmf.

The samplers (``intrs.noise``) and the certificate's margins (``intrs.certificate``) both read these, so the
law they sample and the law they reason about are one.
"""

from __future__ import annotations

import math
from fractions import Fraction
from functools import lru_cache

import mpmath
import numpy as np

TAIL_BITS = 130  # the support [-K, K] leaves out less than 2^-130 of the mass
PRECISION_BITS = 256  # the normalizer's and the tables' working precision


def tail_support(sigma_q: Fraction) -> int:
    """K such that P[|k| > K] < 2^-TAIL_BITS for the discrete (and the rounded) Gaussian.

    sum_{|k| > K} exp(-k^2 / (2 s^2)) <= 2 exp(-K^2 / (2 s^2)) (1 + s^2 / K) and the
    normalizer is >= 1 for s >= 1/2, so K = s sqrt(2 ln 2 (TAIL_BITS + 4)) + 2 suffices.
    """
    s = float(sigma_q)
    return int(math.ceil(s * math.sqrt(2 * math.log(2) * (TAIL_BITS + 4 + math.log2(1 + s)))) + 2)


def normalizer_support(sigma_q: Fraction) -> int:
    """The one cut-off of the normalizer: |k| <= 2K, K = ``tail_support``. Each left-out weight is at most
    exp(-K^2 / (2 s^2))^4, so the sum of them is below 2^-(4 TAIL_BITS) (theta >= 1): beyond the tables'
    256-bit arithmetic, and a float64's."""
    return 2 * tail_support(sigma_q)


def weights(sigma_q: Fraction, ks) -> list[mpmath.mpf]:
    """exp(-k^2 / (2 s^2)) for each k of ``ks``, at the working precision of the caller's mpmath context."""
    sigma_q = Fraction(sigma_q)
    var2 = 2 * mpmath.mpf(sigma_q.numerator) ** 2 / mpmath.mpf(sigma_q.denominator) ** 2
    return [mpmath.exp(-mpmath.mpf(k * k) / var2) for k in ks]


@lru_cache(maxsize=64)
def normalizer(sigma_q: Fraction) -> mpmath.mpf:
    """theta = sum_{|k| <= normalizer_support} exp(-k^2 / (2 s^2)), in PRECISION_BITS."""
    with mpmath.workprec(PRECISION_BITS):
        wide = normalizer_support(sigma_q)
        return mpmath.fsum(weights(sigma_q, range(-wide, wide + 1)))


def pmf(sigma_q: Fraction, k) -> np.ndarray:
    """P[k] = exp(-k^2 / (2 s^2)) / theta in float64 (tests, plots and the float margins)."""
    s = float(sigma_q)
    return np.exp(-np.asarray(k, dtype=np.float64) ** 2 / (2 * s * s)) / float(normalizer(Fraction(sigma_q)))
