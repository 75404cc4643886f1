"""The certified radius, what is proven about it under each noise, and its integer-only table.

Every system computes its radius through :func:`certified_radius`: the paper's
Proposition 3.1 read in Cohen's form, R = sigma * PhiInv(pA_lower) (SPEC section
5). Under the continuous Gaussian (FloatRS-fp) and the rounded Gaussian
(FloatRS-quant, and IntRS with ``--noise rounded-gaussian``) this is Cohen et
al.'s theorem. Under the discrete Gaussian on the integer lattice (IntRS) the
binary certificate needs the worst-case curve at the level 1/2 only; docs/
certificate.md gives the statement and derivation, and this module gives the
exact computations the tests use to check it:

* :func:`one_coordinate_margin` - h(m) for a shift of m pixel steps along one
  coordinate, in high precision;
* :func:`proven_one_coordinate_steps` - the largest m for which h(m) < 0 is
  proven (concavity up to sigma_q, a trapezoid bound beyond);
* :func:`direction_margin` - h(delta) for any integer direction, by exact
  convolution of scaled discrete Gaussians;
* :func:`worst_case_curve` - the Neyman-Pearson worst-case curve d(p) for one
  coordinate (Lemma 3.1), to measure its shortfall against Cohen's.
"""

from __future__ import annotations

import math
from fractions import Fraction

import mpmath
import numpy as np
from scipy.stats import beta, norm

from . import discrete
from .confidence import clopper_pearson_lower
from .errors import ConfigError

MAX_TABLE_COUNT = 10 ** 7  # 40 MB of int32 entries: beyond any device's use and any run's n

CERTIFICATE_STATUS = {
    "gaussian": "Cohen et al. 2019, Theorem 1: proven.",
    "rounded-gaussian": "Cohen et al. 2019, Theorem 1 applied to f composed with rounding: proven.",
    "discrete-gaussian": (
        "the paper's Proposition 3.1 in Cohen's form. Proven for shifts along one coordinate of up to "
        "proven_one_coordinate_steps(sigma_q) pixel steps (every radius CERTIFY can return at sigma_q >= 1.5, and "
        "up to 7 steps at sigma_q = 1); checked by exact computation for all integer directions with "
        "||delta||^2 <= 25 at sigma_q in {1, 2}; open for general directions (docs/certificate.md)."),
}


def certified_radius(sigma: float, p_lower: float) -> float:
    """R = sigma * PhiInv(pA_lower), the L2 radius in [0, 1] units; 0 unless pA_lower > 1/2.

    Cohen et al. 2019, Theorem 1 (binary form, runner-up bound 1 - pA_lower), and
    the paper's Proposition 3.1 as SPEC section 5 reads it. Every system's radius
    comes from here; see CERTIFICATE_STATUS for what is proven under each noise.

    Guaranteed: the float returned never exceeds the exact sigma * PhiInv(p_lower)
    of the given doubles, and lies within a few ulps of it. ``norm.ppf`` and the
    product round to nearest, so about half of their results lie an ulp above the
    exact value; the candidate is therefore checked, Phi(R / sigma) <= p_lower in
    50-digit arithmetic, and stepped down until the check holds (rarely more than
    two ulps). With ``clopper_pearson_lower``'s guaranteed bound the radius is thus
    below the exact radius of the exact Clopper-Pearson bound; the TSV's 7-digit
    value (``results.format_radius``) rounds this down again.
    """
    if not p_lower > 0.5:
        return 0.0
    radius = float(sigma * norm.ppf(p_lower))
    with mpmath.workdps(50):
        # Doubles convert to mpf exactly; the margin of 1e-45 absorbs the 50-digit rounding of ncdf.
        limit = mpmath.mpf(p_lower) - mpmath.mpf(10) ** -45
        steps = 0
        while radius > 0 and mpmath.ncdf(mpmath.mpf(radius) / mpmath.mpf(sigma)) > limit:
            radius = max(radius - math.ulp(radius) * 2 ** steps, 0.0)  # doubling: a bounded number of checks
            steps += 1
    return radius


# ---------------------------------------------------------------- an integer-only certificate for devices


def certifying_from(n: int, alpha: float) -> int:
    """The least vote count nA whose Clopper-Pearson bound (``clopper_pearson_lower``, the API's) exceeds 1/2:
    CERTIFY returns a class exactly when nA >= it (n + 1: never). The bound grows with nA."""
    counts = np.arange(1, n + 1)
    fast = np.flatnonzero(beta.ppf(alpha, counts, n - counts + 1) > 0.5)
    k = int(counts[fast[0]]) if len(fast) else n + 1
    while k <= n and not clopper_pearson_lower(k, n, alpha) > 0.5:  # beta.ppf is within ulps: a step or two
        k += 1
    while k > 1 and clopper_pearson_lower(k - 1, n, alpha) > 0.5:
        k -= 1
    return k


def radius_table(n: int, alpha: float, sigma: float, fraction_bits: int = 16) -> np.ndarray:
    """R[nA] for nA = 0..n in fixed point (radius * 2^fraction_bits), rounded down; 0 below ``certifying_from``.

    For fixed (n, alpha, sigma) the certificate depends only on the vote count nA,
    so a device that only counts votes looks its radius up here: no float at all
    (SPEC section 5). Entry nA is exactly floor(2^fraction_bits * r), r the API's
    certificate ``certified_radius(sigma, clopper_pearson_lower(nA, n, alpha))``:
    float64 (beta.ppf, norm.ppf) gives every entry within 1e-6 of a step of the
    grid, and the entries that close to a step are computed the API's way. (An
    entry may be 0 where CERTIFY certifies a radius below 2^-fraction_bits: a
    device tells abstention by ``certifying_from``.)
    """
    if n < 1 or not 0 < alpha < 1 or not sigma > 0 or not 0 <= fraction_bits <= 32:
        raise ConfigError(f"radius table needs n >= 1, 0 < alpha < 1, sigma > 0, 0..32 fraction bits; "
                          f"got n={n}, alpha={alpha}, sigma={sigma}, bits={fraction_bits}")
    if n > MAX_TABLE_COUNT:
        raise ConfigError(f"a radius table has at most {MAX_TABLE_COUNT:,} samples (n), got {n:,}")
    counts = np.arange(n + 1)
    lower = np.where(counts > 0, beta.ppf(alpha, np.maximum(counts, 1), n - counts + 1), 0.0)
    scaled = np.where(lower > 0.5, sigma * norm.ppf(np.clip(lower, 0.5, 1.0)), 0.0) * 2.0 ** fraction_bits
    table = np.floor(scaled).astype(np.int64)
    first = certifying_from(n, alpha)
    table[:first] = 0
    # the API's radius lies within ~1e-12 relative of the float64 one (a few ulps of p, then PhiInv): only entries
    # this close to a grid step can floor differently
    near = np.flatnonzero((np.minimum(scaled - table, table + 1 - scaled) < 1e-6) & (counts >= first))
    for k in near:
        table[k] = math.floor(certified_radius(sigma, clopper_pearson_lower(int(k), n, alpha)) * 2.0 ** fraction_bits)
    return table


# ---------------------------------------------------------------- the discrete Gaussian margin h(delta)


def one_coordinate_margin(sigma_q, m: int, digits: int = 40) -> float:
    """h(m) = P[k < m] + P[k = m] / 2 - Phi(m / sigma_q) for k ~ N_Z(0, sigma_q^2), in high precision.

    The prediction survives a shift of m pixel steps along one coordinate when
    d(pA) > 1/2, which Cohen's radius guarantees iff h(m) <= 0. Computed as
    T[0, m] / theta - I[0, m] (trapezoid sum of the N(0, s^2) density over the
    integers 0..m, against its integral).
    """
    with mpmath.workdps(digits):
        s = mpmath.mpf(Fraction(sigma_q).numerator) / Fraction(sigma_q).denominator
        density = lambda x: mpmath.exp(-mpmath.mpf(x) ** 2 / (2 * s ** 2)) / (s * mpmath.sqrt(2 * mpmath.pi))
        trapezoid = mpmath.fsum(density(k) for k in range(1, m)) + (density(0) + density(m)) / 2
        integral = mpmath.ncdf(mpmath.mpf(m) / s) - mpmath.mpf(1) / 2
        # theta of the density phi_s (which sums to about 1): the weights' normalizer over s sqrt(2 pi)
        theta = discrete.normalizer(Fraction(sigma_q)) / (s * mpmath.sqrt(2 * mpmath.pi))
        return float(trapezoid / theta - integral)


def proven_one_coordinate_steps(sigma_q) -> int:
    """The largest m such that h(m') < 0 is proven for every 1 <= m' <= m (sigma_q >= 1).

    m <= sigma_q: the density is concave on [0, m], so the trapezoid sum is below
    the integral, and theta >= 1. m >= sigma_q: h = I[m, inf) - T[m, inf) / theta,
    the density is convex on [m, inf), the trapezoid excess is at least
    phi_s(m) exp(-2 (m + 1) / s^2) (2 s + 1) / (12 s^4), the Mills ratio bounds
    I[m, inf) <= phi_s(m) s^2 / m, and theta - 1 <= 2 e^{-2 pi^2 s^2} / (1 - e^{-2 pi^2 s^2}):
    h < 0 whenever m < (s^2 / 2) (-ln(12 s^5 (theta - 1) / (2 s + 1))) - 1
    (docs/certificate.md has the derivation).
    """
    s = float(sigma_q)
    if s < 1:
        raise ConfigError(f"the one-coordinate proof assumes sigma_q >= 1 (sigma >= 1/255), got {s}")
    x = 2 * math.pi ** 2 * s ** 2
    log_theta_minus_one = math.log(2) - x - math.log1p(-math.exp(-x))  # in logs: e^{-x} underflows
    log_term = math.log(12 * s ** 5 / (2 * s + 1)) + log_theta_minus_one
    bound = (s ** 2 / 2) * (-log_term) - 1
    return max(math.floor(s), math.ceil(bound) - 1)


def _scaled_pmf(sigma: float, step: int) -> tuple[np.ndarray, int]:
    """pmf of step * k for k ~ N_Z(0, sigma^2) on the grid of multiples of 1, from -step*K (``intrs.discrete``:
    the support and the normalizer the samplers use)."""
    sigma_q = Fraction(sigma)
    support = discrete.tail_support(sigma_q)
    ks = np.arange(-support, support + 1)
    out = np.zeros(2 * support * step + 1)
    out[(ks + support) * step] = discrete.pmf(sigma_q, ks)
    return out, support * step


def direction_margin(sigma_q: float, delta: tuple[int, ...]) -> float:
    """h(delta) = P[T < ||delta||^2] + P[T = ||delta||^2] / 2 - Phi(||delta|| / sigma_q), T = <k, delta>.

    T is a sum of independent scaled discrete Gaussians; its pmf is an exact
    convolution (float64, so |h| below ~1e-12 is not resolved: the tests ask for a
    margin well above that). Coordinates with delta_i = 0 do not matter.
    """
    pmf, offset = np.array([1.0]), 0
    for step in (abs(int(d)) for d in delta if d):
        part, part_offset = _scaled_pmf(sigma_q, step)
        pmf, offset = np.convolve(pmf, part), offset + part_offset
    norm2 = sum(int(d) ** 2 for d in delta)
    below = math.fsum(pmf[: offset + norm2])
    at = pmf[offset + norm2]
    return below + at / 2 - float(norm.cdf(math.sqrt(norm2) / sigma_q))


def worst_case_curve(sigma_q: float, m: int, gammas: int = 101) -> tuple[np.ndarray, np.ndarray]:
    """The Neyman-Pearson worst case for a shift of m steps along one coordinate (the paper's Lemma 3.1).

    Among all sets A with P_x(A) = p, the least P_{x + delta}(A) is reached by the
    lattice half-space {k <= t} (lowest likelihood ratio first) randomised on the
    level set {k = t + 1}. Returns (p, d(p)) over every t and randomisation gamma.
    """
    pmf, offset = _scaled_pmf(sigma_q, 1)
    cdf = np.concatenate([[0.0], np.cumsum(pmf)])
    ps, ds = [], []
    grid = np.linspace(0, 1, gammas)
    for t in range(-offset - 1, offset):
        i = t + offset  # index of k = t in pmf
        base_p = cdf[i + 1]  # P[k <= t]
        level_p = pmf[i + 1] if i + 1 < len(pmf) else 0.0
        shifted = t - m
        base_d = cdf[shifted + offset + 1] if shifted + offset + 1 >= 0 else 0.0
        j = shifted + 1 + offset
        level_d = pmf[j] if 0 <= j < len(pmf) else 0.0
        ps.append(base_p + grid * level_p)
        ds.append(base_d + grid * level_d)
    return np.concatenate(ps), np.concatenate(ds)


def curve_shortfall(sigma_q: float, m: int) -> float:
    """max_p [Phi(PhiInv(p) - m / sigma_q) - d(p)]: how far the discrete worst case falls below Cohen's."""
    p, d = worst_case_curve(sigma_q, m)
    keep = (p > 1e-12) & (p < 1 - 1e-12)
    cohen = norm.cdf(norm.ppf(p[keep]) - m / sigma_q)
    return float(np.max(cohen - d[keep]))
