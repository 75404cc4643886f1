"""Confidence bounds on a binomial proportion, and the integer decision tables a device stops by.

* :func:`clopper_pearson_lower` and :func:`binomial_p_value`: the fixed-n bound and test of Cohen et
  al.'s CERTIFY and PREDICT (SPEC section 5).
* :func:`confidence_sequence`: bounds on p valid at every sample count at once (anytime-valid), from the
  conjugate mixture martingale below.
* :class:`SequentialBounds`, :func:`radius_tables`, :class:`PredictThresholds`: the sequential CERTIFY and
  PREDICT rules written as integer thresholds on vote counts, one row per step of a batch schedule.

The confidence sequence (Robbins 1970; Howard, Ramdas, McAuliffe, Sekhon 2021, "Time-uniform,
nonparametric, nonasymptotic confidence sequences", Ann. Statist., the conjugate-mixture section). For
Bernoulli(p) votes with S successes in t draws and a prior pi on [0, 1],

    M_t(p0) = integral of  q^S (1 - q)^(t - S) / (p0^S (1 - p0)^(t - S))  d pi(q)

is a mixture of likelihood ratios, each a nonnegative martingale of mean 1 when p = p0, so M_t(p0) is one
too, and Ville's inequality gives P[M_t(p) >= 1/alpha for some t] <= alpha. The set
C_t = {p0 : M_t(p0) < 1/alpha} therefore holds p at every t simultaneously with probability >= 1 - alpha,
whatever rule decides when to stop (the stopping time may be chosen by an adversary who sees the votes).
Our prior is

    pi = 1/2 delta_1 + 1/2 Beta(1/2, 1/2):

the point mass at q = 1 is the likelihood ratio 1[S = t] / p0^t, the case of a confident base classifier
whose every vote agrees (at S = t it costs only ln 2 over the fixed-n Clopper-Pearson bound alpha^(1/t)); the
Jeffreys component (the Krichevsky-Trofimov mixture) covers every other p with the least worst-case regret,
about (1/2) ln t. Both terms are log-convex in p0, so C_t is an interval [lower, upper] around S / t, and
M_t depends on (t, S) only: each decision "is p0 outside C_t" is a threshold on the count S at each t. That
is what makes the device's tables exact and small. (A predictable-plug-in betting sequence, as in
Waudby-Smith and Ramdas 2023 and Voracek 2024's vvoracek/RS_conf_seq, is tighter in the middle of [0, 1] but
depends on the order of the votes, so a device could not decide from a table of counts.)

The sequential rules spend alpha twice (a union bound): alpha/2 on this sequence at every step, and alpha/2
on the fixed-n test at the last step of the budget (Clopper-Pearson for CERTIFY, the exact one-sided
binomial test for PREDICT). A run that uses its whole budget N so ends almost where Cohen's CERTIFY with n = N
ends (at alpha/2 instead of alpha), while confident inputs stop long before it.

Arithmetic: decisions are taken in float64 (``math.lgamma``) when the log-martingale is more than
``FLOAT_MARGIN`` = 1e-6 from the level, far beyond float64's error here (below 1e-8 for t <= MAX_TRIALS,
checked against 50-digit mpmath in the tests), and otherwise in 50-digit mpmath. Every bound returned lies
on the safe side of the exact one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import mpmath
import numpy as np
from scipy.stats import beta, binom, binomtest

from .errors import ConfigError

ALL_AGREE_WEIGHT = 0.5  # prior mass on q = 1
JEFFREYS = 0.5  # the Beta(1/2, 1/2) component's parameters
CS_SHARE = 0.5  # of alpha spent on the confidence sequence at every step; the rest on the last step's fixed-n test
FIRST_STEP = 10  # the batch schedule's first look, doubled until it reaches the batch size
FLOAT_MARGIN = 1e-6
MAX_TRIALS = 10 ** 6  # float64's error in ln M stays below FLOAT_MARGIN / 100 up to here
_DIGITS = 50


# ---------------------------------------------------------------- fixed n: Cohen's CERTIFY and PREDICT


def clopper_pearson_lower(successes: int, trials: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion.

    The alpha quantile of Beta(k, n - k + 1) (Cohen et al. 2019, Alg. CERTIFY,
    LowerConfBound); 0 when k = 0.

    Guaranteed: never above the exact quantile. ``beta.ppf`` lands an ulp or two
    above it in about half the cases, so its answer p is checked against the
    definition, P[Binomial(n, p) >= k] <= alpha (the tail grows with p), in
    high precision, and stepped down until the check holds.
    """
    if successes <= 0:
        return 0.0
    bound = float(beta.ppf(alpha, successes, trials - successes + 1))
    steps = 0
    while bound > 0 and not binomial_tail_at_most(successes, trials, bound, alpha):
        bound = max(bound - math.ulp(bound) * 2 ** steps, 0.0)  # doubling: a bounded number of checks
        steps += 1
    return bound


def clopper_pearson_interval(successes: int, trials: int, coverage: float = 0.95) -> tuple[float, float]:
    """Two-sided Clopper-Pearson interval for a proportion (each tail (1 - coverage) / 2): the interval a
    table states for a fraction of test images, e.g. a certified accuracy (an error bar for the reader, not
    part of any certificate, so scipy's quantiles are taken as they come)."""
    if not 0 <= successes <= trials or trials < 1:
        raise ValueError(f"need 0 <= successes <= trials and trials >= 1, got {successes} of {trials}")
    tail = (1 - coverage) / 2
    lower = float(beta.ppf(tail, successes, trials - successes + 1)) if successes > 0 else 0.0
    upper = float(beta.ppf(1 - tail, successes + 1, trials - successes)) if successes < trials else 1.0
    return lower, upper


def binomial_tail_at_most(successes: int, trials: int, p: float, alpha: float) -> bool:
    """Whether P[Binomial(trials, p) >= successes] <= alpha, from an upper bound on the tail in 50 digits.

    The tail sums C(n, j) p^j (1 - p)^(n - j) from j = k up; the term ratios
    (n - j) p / ((j + 1) (1 - p)) decrease in j, so once one is below 1 the rest
    of the sum is at most term * r / (1 - r), which is added instead of summed.
    A relative margin of 1e-35 absorbs the rounding of the 50-digit sum.
    """
    k, n = int(successes), int(trials)
    if k <= 0:
        return mpmath.mpf(alpha) >= 1
    with mpmath.workdps(_DIGITS):
        p_mp = mpmath.mpf(p)  # exact: p is a double
        q_mp = 1 - p_mp
        if q_mp == 0:
            return mpmath.mpf(alpha) >= 1
        term = mpmath.exp(mpmath.loggamma(n + 1) - mpmath.loggamma(k + 1) - mpmath.loggamma(n - k + 1)
                          + k * mpmath.log(p_mp) + (n - k) * mpmath.log(q_mp))
        total, odds = term, p_mp / q_mp
        limit = mpmath.mpf(alpha) * (1 - mpmath.mpf(10) ** -35)
        for j in range(k, n):
            ratio = (n - j) * odds / (j + 1)
            if ratio < 1 and term * ratio / (1 - ratio) <= total * mpmath.mpf(10) ** -40:
                return total + term * ratio / (1 - ratio) <= limit
            term *= ratio
            total += term
            if total > limit:
                return False
        return total <= limit


def binomial_p_value(successes: int, trials: int) -> float:
    """Two-sided exact binomial test of ``successes`` out of ``trials`` against p = 1/2."""
    if trials == 0:
        return 1.0
    return float(binomtest(successes, trials, 0.5, alternative="two-sided").pvalue)


def predict_thresholds(n: int, alpha: float) -> np.ndarray:
    """Fixed-n PREDICT as a table: entry m (0..n) is the least nA with nA >= m - nA and
    ``binomial_p_value(nA, m) <= alpha`` (m + 1: none), so that PREDICT returns its top class exactly when
    nA >= T[nA + nB]. The two-sided p-value falls as nA moves up from m / 2, so one threshold per m decides.

    Candidates come from float64 (for nA > m / 2 the test's p-value is 2 P[X >= nA], X ~ Bin(m, 1/2)); where
    that value, at the candidate or one below, lies within 1e-6 (relative) of alpha, the candidate is confirmed
    with the API's own test and moved until it agrees, so every entry is the API's decision.
    """
    if n < 0 or n > 10 ** 7:
        raise ConfigError(f"a PREDICT table takes 0..10,000,000 samples, got {n:,}")
    m = np.arange(n + 1)
    candidate = np.where(m > 0, binom.isf(alpha / 2, np.maximum(m, 1), 0.5) + 1, 1).astype(np.int64)
    candidate = np.clip(np.maximum(candidate, m // 2 + 1), 0, m + 1)
    fast = lambda k: np.where(2 * k > m, np.minimum(1.0, 2 * binom.sf(k - 1, m, 0.5)), 1.0)
    close = lambda p: np.abs(p - alpha) <= 1e-6 * alpha
    doubtful = close(fast(candidate)) | close(fast(candidate - 1)) | (m < 64)
    passes = lambda k, total: k <= total and binomial_p_value(int(k), int(total)) <= alpha
    table = candidate.copy()
    for total in np.flatnonzero(doubtful):
        k = int(candidate[total])
        while k <= total and not passes(k, total):
            k += 1
        while k - 1 >= (total + 1) // 2 and passes(k - 1, total):
            k -= 1
        table[total] = k
    return table


# ---------------------------------------------------------------- the mixture martingale and its sequence


def _log_beta(x: float, y: float) -> float:
    return math.lgamma(x) + math.lgamma(y) - math.lgamma(x + y)


_LOG_PRIOR_BETA = _log_beta(JEFFREYS, JEFFREYS)


def log_mixture(successes: int, trials: int, p: float) -> float:
    """ln M_t(p) of the module's mixture martingale after ``successes`` of ``trials`` votes, 0 < p < 1 (float64)."""
    s, f = int(successes), int(trials) - int(successes)
    spread = (math.log1p(-ALL_AGREE_WEIGHT) + _log_beta(JEFFREYS + s, JEFFREYS + f) - _LOG_PRIOR_BETA
              - s * math.log(p) - f * math.log1p(-p))
    if f:
        return spread
    agree = math.log(ALL_AGREE_WEIGHT) - s * math.log(p)
    high, low = max(spread, agree), min(spread, agree)
    return high + math.log1p(math.exp(low - high))


def log_mixture_exact(successes: int, trials: int, p) -> mpmath.mpf:
    """ln M_t(p) in 50-digit arithmetic; ``p`` a double or an mpmath number."""
    s, f = int(successes), int(trials) - int(successes)
    with mpmath.workdps(_DIGITS):
        p = mpmath.mpf(p)
        w, a = mpmath.mpf(ALL_AGREE_WEIGHT), mpmath.mpf(JEFFREYS)
        log_beta = lambda x, y: mpmath.loggamma(x) + mpmath.loggamma(y) - mpmath.loggamma(x + y)
        total = (1 - w) * mpmath.exp(log_beta(a + s, a + f) - log_beta(a, a) - s * mpmath.log(p)
                                     - f * mpmath.log(1 - p))
        if not f:
            total += w * mpmath.exp(-s * mpmath.log(p))
        return mpmath.log(total)


def _level(alpha: float) -> tuple[float, mpmath.mpf]:
    """ln(1 / alpha) in float64 and, rounded up by 1e-30 (against ties), in 50 digits."""
    with mpmath.workdps(_DIGITS):
        return -math.log(alpha), -mpmath.log(mpmath.mpf(alpha)) + mpmath.mpf(10) ** -30


def excludes(successes: int, trials: int, p: float, alpha: float, p_exact=None) -> bool:
    """Whether p lies outside the level-alpha sequence C_t, i.e. M_t(p) >= 1 / alpha.

    Decided in float64 when ln M_t(p) is more than FLOAT_MARGIN from ln(1 / alpha), else in 50 digits
    (at ``p_exact`` when given, e.g. Phi(r / sigma) in mpmath, else at the double p)."""
    level, level_exact = _level(alpha)
    value = log_mixture(successes, trials, p)
    if abs(value - level) > FLOAT_MARGIN:
        return value > level
    return log_mixture_exact(successes, trials, p if p_exact is None else p_exact) >= level_exact


def _decisive_side(successes: int, trials: int, p: float, level: float, direction: float) -> float:
    """Move p away from S / t (direction -1 down, +1 up) until float64 says M_t(p) >= e^level + margin:
    the bound is then on the safe side whatever float64's error (FLOAT_MARGIN covers it)."""
    s, f = successes, trials - successes
    slope = abs(s / p - f / (1 - p)) if 0 < p < 1 else 0.0  # |d ln M / dp| of the Beta part, about
    step = max(4 * FLOAT_MARGIN / slope if slope else 0.0, math.ulp(p), 5e-324)
    while 0 < p < 1 and log_mixture(successes, trials, p) < level + 2 * FLOAT_MARGIN:
        p += direction * step
        step *= 2
    return min(max(p, 0.0), 1.0)


def _bisect(successes: int, trials: int, lo: float, hi: float, level: float, excluded_at_lo: bool) -> tuple:
    """Shrink [lo, hi] around the end of C_t where ln M_t crosses ``level``, to a relative width of 1e-11 in p
    and in 1 - p (the widening by ``_decisive_side`` that follows is larger)."""
    while hi - lo > 1e-11 * min(lo if lo > 0 else hi, 1 - hi if hi < 1 else 1 - lo):
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        if (log_mixture(successes, trials, mid) >= level) == excluded_at_lo:
            lo = mid
        else:
            hi = mid
    return lo, hi


def sequence_lower(successes: int, trials: int, alpha: float) -> float:
    """The lower end of the level-alpha sequence at (t, S): never above the exact end; 0 when S = 0."""
    s, t = int(successes), int(trials)
    if s <= 0 or t <= 0:
        return 0.0
    level = -math.log(alpha)
    lo, _ = _bisect(s, t, 0.0, s / t, level, True)  # M >= 1/alpha at lo (ln M -> inf as p0 -> 0), below at hi
    return _decisive_side(s, t, lo, level, -1.0) if lo > 0 else 0.0


def sequence_upper(successes: int, trials: int, alpha: float) -> float:
    """The upper end of the level-alpha sequence at (t, S): never below the exact end; 1 when S = t."""
    s, t = int(successes), int(trials)
    if s >= t or t <= 0:
        return 1.0
    level = -math.log(alpha)
    _, hi = _bisect(s, t, s / t, 1.0, level, False)
    return _decisive_side(s, t, hi, level, 1.0) if hi < 1 else 1.0


def confidence_sequence(successes: int, trials: int, alpha: float) -> tuple[float, float]:
    """The level-alpha confidence sequence at (t, S): [lower, upper] with P[p outside it at some t] <= alpha.

    The interval {p0 : M_t(p0) < 1 / alpha} of the module's mixture martingale (Robbins 1970; Howard et al.
    2021), found by bisection on each side of S / t (ln M_t is convex in p0 and at most 0 at S / t) and
    widened until float64 decides each end with margin: lower is never above the exact lower end, upper
    never below the exact upper end. lower = 0 when S = 0, upper = 1 when S = t.
    """
    return sequence_lower(successes, trials, alpha), sequence_upper(successes, trials, alpha)


# ---------------------------------------------------------------- the batch schedule and the sequential bounds


def batch_schedule(max_n: int, batch: int, first: int = FIRST_STEP) -> tuple[int, ...]:
    """The sample counts t_1 < t_2 < ... < t_K = max_n at which a sequential rule looks at its votes.

    ``first`` (at most ``batch``), doubling while below ``batch``, then every ``batch`` samples, and max_n
    last: 10, 20, 40, 80, 100, 200, ... for batch 100. The sequence is valid at every t, so the schedule
    costs nothing in validity; it only sets how often the rule looks (and the forward passes' batch sizes).
    """
    max_n, batch = int(max_n), int(batch)
    if max_n < 1 or batch < 1:
        raise ConfigError(f"a sequential run needs --max-n >= 1 and a batch >= 1, got {max_n} and {batch}")
    if max_n > MAX_TRIALS:
        raise ConfigError(f"--max-n is at most {MAX_TRIALS:,} (the sequence's float64 bounds are checked up to "
                          f"there), got {max_n:,}")
    steps, t = [], min(first, batch)
    while t < batch and t < max_n:
        steps.append(t)
        t *= 2
    t = batch
    while t < max_n:
        steps.append(t)
        t += batch
    steps.append(max_n)
    return tuple(sorted(set(steps)))


@dataclass(frozen=True)
class SequentialBounds:
    """Bounds on a proportion valid at every step of ``steps`` at once, with total error alpha.

    At every step: the confidence sequence at level alpha * CS_SHARE. At the last step (the budget N) the
    lower bound is also the fixed-n Clopper-Pearson bound at level alpha * (1 - CS_SHARE), and the larger of
    the two is used. A union bound over the two: P[lower > p at some step] <= alpha. The upper bound is the
    sequence's alone (its own error, at most alpha * CS_SHARE, only affects when a rule stops).
    """

    steps: tuple[int, ...]
    alpha: float

    @property
    def sequence_alpha(self) -> float:
        return self.alpha * CS_SHARE

    @property
    def final_alpha(self) -> float:
        return self.alpha * (1 - CS_SHARE)

    @property
    def budget(self) -> int:
        return self.steps[-1]

    def lower(self, step: int, successes: int, at_least: float = 0.0) -> float:
        """The lower bound after step ``step`` (an index into ``steps``) with ``successes`` top-class votes,
        or ``at_least`` where it is larger (the exact Clopper-Pearson check is skipped where it cannot win)."""
        lower = max(at_least, sequence_lower(successes, self.steps[step], self.sequence_alpha))
        if step == len(self.steps) - 1 and successes > 0:
            fast = float(beta.ppf(self.final_alpha, successes, self.budget - successes + 1))
            if fast >= lower * (1 - 1e-9):
                lower = max(lower, clopper_pearson_lower(successes, self.budget, self.final_alpha))
        return lower

    def lower_float(self, step: int, successes: int) -> float:
        """``lower`` for stopping rules only: the last step's Clopper-Pearson bound unchecked (beta.ppf)."""
        lower = sequence_lower(successes, self.steps[step], self.sequence_alpha)
        if step == len(self.steps) - 1 and successes > 0:
            lower = max(lower, float(beta.ppf(self.final_alpha, successes, self.budget - successes + 1)))
        return lower

    def upper(self, step: int, successes: int) -> float:
        return sequence_upper(successes, self.steps[step], self.sequence_alpha)


def check_radii(radii) -> tuple[float, ...]:
    """Radii to decide: finite, > 0, returned sorted without repeats."""
    try:
        values = sorted({float(r) for r in radii})
    except (TypeError, ValueError):
        raise ConfigError(f"radii must be numbers, got {radii!r}") from None
    if not values or not all(math.isfinite(r) and r > 0 for r in values):
        raise ConfigError(f"radii must be positive numbers in [0,1] pixel units (e.g. 0.25,0.5,0.75), got {radii!r}")
    return tuple(values)


def _first_true(lo: int, hi: int, predicate) -> int:
    """The least x in [lo, hi] with predicate(x), for a predicate false then true on it; hi + 1 if none."""
    while lo <= hi:
        mid = (lo + hi) // 2
        if predicate(mid):
            hi = mid - 1
        else:
            lo = mid + 1
    return lo


def _threshold(lo: int, hi: int, fast, exact) -> int:
    """``_first_true`` by the fast predicate, then corrected by the exact one at the boundary."""
    found = _first_true(lo, hi, fast)
    while found <= hi and not exact(found):
        found += 1
    while found - 1 >= lo and exact(found - 1):
        found -= 1
    return found


@dataclass(frozen=True)
class RadiusTables:
    """Sequential CERTIFY at listed radii as integer thresholds on nA, the top class's votes (K steps x R radii).

    After step k (t_k = steps[k] estimation samples), radius r_j is

    * certified once nA >= certify_at[k, j] (t_k + 1: not at this step): sigma PhiInv(lower) >= r_j, i.e.
      Phi(r_j / sigma) lies below the sequence (or, at the last step, below the Clopper-Pearson bound);
    * refuted once nA < refuted_below[k, j]: sigma PhiInv(upper) < r_j, i.e. Phi(r_j / sigma) lies above it;
    * out of the budget once nA < budget_below[k, j]: not certifiable at any later step even if every
      remaining vote went to the top class (budget_below[k] = t_k + min over later steps j of
      certify_at[j] - t_j; at the last step, certify_at itself).

    A radius once decided stays decided; the rule stops when all are. ``refute_below`` (the larger of the last
    two, never above certify_at) is the single "can no longer be certified" table a device needs. Every
    entry comes from :meth:`certified` / :meth:`refuted`, the exact decisions, so host and device agree.
    """

    bounds: SequentialBounds
    sigma: float
    radii: tuple[float, ...]
    certify_at: np.ndarray
    refuted_below: np.ndarray
    budget_below: np.ndarray

    @property
    def refute_below(self) -> np.ndarray:
        return np.minimum(np.maximum(self.refuted_below, self.budget_below), self.certify_at)

    def _levels(self, j: int):
        """Phi(r_j / sigma) as a double and in 50 digits; where the double rounds to 1 (r_j / sigma above about
        8.3), the largest double below 1 stands in for both: see :func:`_beyond_doubles`."""
        with mpmath.workdps(_DIGITS):
            exact = mpmath.ncdf(mpmath.mpf(self.radii[j]) / mpmath.mpf(self.sigma))
            if float(exact) == 1.0:
                return _BELOW_ONE, mpmath.mpf(_BELOW_ONE)
            return float(exact), exact

    def _beyond(self, j: int) -> bool:
        return _beyond_doubles(self.radii[j], self.sigma)

    def certified(self, step: int, successes: int, j: int) -> bool:
        """Whether radius j is certified after ``step`` with ``successes`` votes (the exact decision)."""
        return not self._beyond(j) and _certified(self.bounds, step, successes, *self._levels(j))

    def refuted(self, step: int, successes: int, j: int) -> bool:
        """Whether the sequence's upper bound rules radius j out (pA < Phi(r_j / sigma)) after ``step``."""
        return _refuted(self.bounds, step, successes, *self._levels(j))


_BELOW_ONE = math.nextafter(1.0, 0.0)  # 1 - 2^-53


def _beyond_doubles(radius: float, sigma: float) -> bool:
    """Whether Phi(radius / sigma) rounds to 1 as a double, i.e. 1 - Phi > 2^-54 fails: then no schedule of fewer
    than 2^52 samples certifies the radius at alpha <= 1/2 (radius_tables refuses others), so it is decided as
    never certified, and refuted against 1 - 2^-53 < Phi (refuting that refutes the radius; the mixture's
    ln(1 - p) has no double at p = 1). Why never (Cohen et al. 2019's certificate needs the lower bound above
    Phi(r / sigma)): the sequence's test needs s > t p > t - 1/4, so s = t, every vote for the top class, and
    then M_t(p) = (1 - w) B(a + t, a) / B(a, a) p^-t + w p^-t <= p^-t <= exp(t (1 - p) / p) < e^(1/4) < 1 / alpha;
    the last step's Clopper-Pearson end is at most alpha^(1/t) = e^-x with x = ln(1 / alpha) / t > 2^-53, and
    1 - e^-x >= min(x / 2, 1 - 1/e) > 2^-54, so it lies below p too."""
    with mpmath.workdps(_DIGITS):
        return float(mpmath.ncdf(mpmath.mpf(radius) / mpmath.mpf(sigma))) == 1.0


def _certified(bounds: SequentialBounds, step: int, s: int, p: float, p_exact) -> bool:
    t = bounds.steps[step]
    if s > t * p and excludes(s, t, p, bounds.sequence_alpha, p_exact):
        return True
    if step == len(bounds.steps) - 1 and s > 0:
        fast = float(beta.ppf(bounds.final_alpha, s, t - s + 1))
        if abs(fast - p) > 1e-9:  # beta.ppf's relative error is ~1e-15
            return fast > p
        # Clopper-Pearson's exact lower end is >= p iff P[Bin(t, p) >= s] <= alpha; tested at a double >= p.
        p_up = float(p_exact) if mpmath.mpf(float(p_exact)) >= p_exact else math.nextafter(float(p_exact), 1.0)
        return binomial_tail_at_most(s, t, p_up, bounds.final_alpha)
    return False


def _refuted(bounds: SequentialBounds, step: int, s: int, p: float, p_exact) -> bool:
    t = bounds.steps[step]
    return s < t * p and excludes(s, t, p, bounds.sequence_alpha, p_exact)


@lru_cache(maxsize=16)
def radius_tables(steps: tuple[int, ...], alpha: float, sigma: float, radii: tuple[float, ...]) -> RadiusTables:
    """The decision tables of sequential CERTIFY for (schedule, alpha, sigma, radii); see RadiusTables."""
    if not 0 < alpha < 1 or not sigma > 0:
        raise ConfigError(f"decision tables need 0 < alpha < 1 and sigma > 0, got alpha={alpha}, sigma={sigma}")
    radii = check_radii(radii)
    bounds = SequentialBounds(tuple(int(t) for t in steps), float(alpha))
    beyond = [_beyond_doubles(r, sigma) for r in radii]
    if any(beyond) and (alpha > 0.5 or bounds.steps[-1] >= 2 ** 52):
        raise ConfigError(f"radius {radii[beyond.index(True)]} is {radii[beyond.index(True)] / sigma:.1f} sigma: "
                          "deciding it needs alpha <= 0.5 and fewer than 2^52 samples; lower the radius or raise sigma")
    shape = (len(bounds.steps), len(radii))
    certify_at, refuted_below, budget_below = (np.zeros(shape, dtype=np.int64) for _ in range(3))
    tables = RadiusTables(bounds, float(sigma), radii, certify_at, refuted_below, budget_below)
    last = len(bounds.steps) - 1
    for j in range(len(radii)):
        p, p_exact = tables._levels(j)
        level = -math.log(bounds.sequence_alpha)
        for k, t in enumerate(bounds.steps):
            centre = math.floor(t * p)
            fast_cert = lambda s: s > t * p and log_mixture(s, t, p) >= level
            if k == last:
                fast_cert = lambda s, plain=fast_cert: plain(s) or (
                    s > 0 and float(beta.ppf(bounds.final_alpha, s, t - s + 1)) >= p)
            certify_at[k, j] = t + 1 if beyond[j] else _threshold(min(centre + 1, t), t, fast_cert,
                                                                  lambda s: _certified(bounds, k, s, p, p_exact))
            # Refuted for s below the threshold: the last s (counting down from S / t) that is refuted, plus one.
            fast_ref = lambda u: (centre - u) < t * p and log_mixture(centre - u, t, p) >= level
            exact_ref = lambda u: _refuted(bounds, k, centre - u, p, p_exact)
            first_refuted = _threshold(0, centre, fast_ref, exact_ref)
            refuted_below[k, j] = centre - first_refuted + 1 if first_refuted <= centre else 0
        steps_arr = np.asarray(bounds.steps)
        slack = certify_at[:, j] - steps_arr  # certifiable at step i iff nA >= t_i + slack_i
        for k in range(len(bounds.steps)):
            budget_below[k, j] = certify_at[k, j] if k == last else steps_arr[k] + slack[k + 1:].min()
    for table in (certify_at, refuted_below, budget_below):
        table.setflags(write=False)
    return tables


# ---------------------------------------------------------------- sequential PREDICT


@dataclass(frozen=True)
class PredictThresholds:
    """Sequential PREDICT as a threshold on the top class's votes nA given m = nA + nB (nB: the runner-up's).

    The top class A is returned once nA >= decide_at(m): the sequence for theta = pA / (pA + pB), run on the
    votes for A or B only, lies above 1/2. Its level is alpha / (K - 1) * CS_SHARE at every step and, at the
    last step, also the exact one-sided binomial test of nA out of m against 1/2 at alpha / (K - 1) *
    (1 - CS_SHARE). Why it holds, for K classes and g(x) = c*: a wrong answer A != c* has
    n_{c*} <= nB, and the bound for A against c* is at least the one against B (fewer opposing votes), so it
    needs the sequence of the pair (A, c*), whose votes are i.i.d. Bernoulli(theta <= 1/2) in their own order
    (the other classes' votes do not touch it), to exclude its theta at some m. That has probability at most
    alpha / (K - 1) for each of the K - 1 classes A, so at most alpha in all. The union over A is there because
    A is picked from the same votes (Cohen's fixed-n PREDICT picks it the same way).
    """

    alpha: float
    classes: int

    @property
    def pair_alpha(self) -> float:
        return self.alpha / max(self.classes - 1, 1)

    def decide_at(self, pair_votes: int, final: bool = False) -> int:
        """The least nA that decides for m = ``pair_votes`` (m + 1: none); ``final`` at the budget's last step."""
        return _predict_threshold(self.pair_alpha, int(pair_votes), bool(final))

    def p_value(self, n_top: int, n_second: int, final: bool = False) -> float:
        """An anytime-valid p-value of the rule at these counts (float64, for the record: decisions are by
        ``decide_at``); the rule decides where it is at most alpha."""
        m = n_top + n_second
        if n_top <= m / 2:
            return 1.0
        values = [math.exp(-log_mixture(n_top, m, 0.5)) / CS_SHARE]
        if final:
            values.append(float(binom.sf(n_top - 1, m, 0.5)) / (1 - CS_SHARE))
        return min(1.0, max(self.classes - 1, 1) * min(values))

    def tables(self, max_n: int) -> tuple[np.ndarray, np.ndarray]:
        """decide_at for m = 0..max_n, at the steps before the last and at the last step (the last step's
        test for every m at once: ``_test_thresholds``)."""
        decide = np.array([self.decide_at(m) for m in range(int(max_n) + 1)], dtype=np.int64)
        return decide, np.minimum(decide, _test_thresholds(self.pair_alpha, int(max_n)))


def _test_passes(s: int, m: int, test_alpha: float) -> bool:
    """The last step's exact one-sided test: P[Bin(m, 1/2) >= s] <= test_alpha (float64 unless within 1e-9)."""
    fast = float(binom.sf(s - 1, m, 0.5))
    if abs(fast - test_alpha) > 1e-9 * test_alpha:
        return fast <= test_alpha
    return binomial_tail_at_most(s, m, 0.5, test_alpha)


@lru_cache(maxsize=1 << 20)
def _predict_threshold(pair_alpha: float, m: int, final: bool) -> int:
    if m == 0:
        return 1
    cs_alpha, test_alpha = pair_alpha * CS_SHARE, pair_alpha * (1 - CS_SHARE)
    lo = m // 2 + 1  # nA > m / 2
    if final:
        return min(_predict_threshold(pair_alpha, m, False),
                   _threshold(lo, m, lambda s: float(binom.sf(s - 1, m, 0.5)) <= test_alpha,
                              lambda s: _test_passes(s, m, test_alpha)))
    level = -math.log(cs_alpha)
    return _threshold(lo, m, lambda s: log_mixture(s, m, 0.5) >= level, lambda s: excludes(s, m, 0.5, cs_alpha))


def _test_thresholds(pair_alpha: float, max_n: int) -> np.ndarray:
    """For m = 0..max_n at once, the least nA in (m / 2, m] passing the last step's test (m + 1: none), as
    ``_predict_threshold``'s final part gives it m by m: candidates from binom.isf, confirmed by the float64 tail
    at the candidate and one below where both lie more than 1e-9 from the level, the rest m by m."""
    test_alpha = pair_alpha * (1 - CS_SHARE)
    m = np.arange(max_n + 1)
    lo = m // 2 + 1
    k = np.maximum(binom.isf(test_alpha, np.maximum(m, 1), 0.5) + 1, lo)
    k = np.where(m == 0, 1, np.minimum(np.nan_to_num(k, nan=0, posinf=0), m + 1)).astype(np.int64)
    at, below = binom.sf(k - 1, m, 0.5), binom.sf(k - 2, m, 0.5)
    clear = lambda tail: np.abs(tail - test_alpha) > 1e-9 * test_alpha
    passes_at = (k > m) | (clear(at) & (at <= test_alpha))
    fails_below = (k - 1 < lo) | (clear(below) & (below > test_alpha))
    # k = m + 1 claims that nA = m fails: that is the check one below
    passes_at = np.where(k > m, True, passes_at)
    table = k.copy()
    for i in np.flatnonzero(~(passes_at & fails_below) & (m > 0)):
        total = int(m[i])
        table[i] = _threshold(total // 2 + 1, total, lambda s: float(binom.sf(s - 1, total, 0.5)) <= test_alpha,
                              lambda s: _test_passes(s, total, test_alpha))
    return table
