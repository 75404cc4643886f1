"""The discrete Gaussian: the exact oracle (CKS 2020) and the fast table sampler against the pmf."""

import bisect
import random
from fractions import Fraction

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from intrs.noise import (DiscreteGaussianNoise, RoundedGaussianNoise, discrete_gaussian_pmf, discrete_gaussian_table,
                         exact_discrete_gaussian, numpy_generator, sigma_in_pixel_steps)

SIGMAS_Q = [Fraction(1), Fraction(3), Fraction("30.6"), Fraction("63.75"), Fraction("127.5"), Fraction(255)]


def chi_square_p_value(samples: np.ndarray, sigma_q: Fraction) -> float:
    """Goodness of fit against the exact pmf, on bins of at least 20 expected draws (tails pooled)."""
    s = float(sigma_q)
    edges = np.unique(np.round(np.linspace(-4 * s, 4 * s, 41)).astype(int))
    ks = np.arange(-10 * int(s) - 20, 10 * int(s) + 21)
    pmf = discrete_gaussian_pmf(sigma_q, ks)
    which = np.searchsorted(edges, ks, side="right")
    expected = np.bincount(which, weights=pmf, minlength=len(edges) + 1) * len(samples)
    observed = np.bincount(np.searchsorted(edges, samples, side="right"), minlength=len(edges) + 1)
    keep = expected >= 20
    observed = np.append(observed[keep], observed[~keep].sum())
    expected = np.append(expected[keep], expected[~keep].sum())
    expected *= observed.sum() / expected.sum()
    return float(chisquare(observed, expected).pvalue)


@pytest.mark.parametrize("sigma_q", SIGMAS_Q, ids=str)
def test_fast_sampler_fits_the_exact_pmf(sigma_q):
    samples = discrete_gaussian_table(sigma_q).sample((400_000,), numpy_generator(11))
    assert samples.dtype == np.int32
    assert chi_square_p_value(samples, sigma_q) > 1e-4
    exact_variance = float((discrete_gaussian_pmf(sigma_q, np.arange(-4000, 4001)) * np.arange(-4000, 4001) ** 2).sum())
    standard_error = exact_variance * np.sqrt(2 / len(samples))
    assert abs(samples.var() - exact_variance) < 5 * standard_error
    assert abs(samples.mean()) < 5 * np.sqrt(exact_variance / len(samples))


@pytest.mark.parametrize("sigma_q", SIGMAS_Q, ids=str)
def test_exact_oracle_fits_the_exact_pmf(sigma_q):
    samples = np.array(exact_discrete_gaussian(sigma_q, 4000, random.Random(int(sigma_q * 100))))
    assert chi_square_p_value(samples, sigma_q) > 1e-4
    assert abs(samples.mean()) < 5 * float(sigma_q) / np.sqrt(len(samples))


def test_oracle_and_fast_sampler_agree_with_each_other():
    sigma_q = Fraction(3)
    exact = np.array(exact_discrete_gaussian(sigma_q, 5000, random.Random(1)))
    fast = discrete_gaussian_table(sigma_q).sample((5000,), numpy_generator(2))
    values = np.arange(-12, 13)
    a = np.array([(exact == v).sum() for v in values]) + 1
    b = np.array([(fast == v).sum() for v in values]) + 1
    assert chisquare(a, b * a.sum() / b.sum()).pvalue > 1e-4


def test_variance_is_below_sigma_squared_only_for_small_sigma():
    ks = np.arange(-50, 51)
    for s, below in ((Fraction(1, 2), True), (Fraction(1), False)):
        var = float((discrete_gaussian_pmf(s, ks) * ks ** 2).sum())
        assert (var < float(s) ** 2 - 1e-6) == below


def test_fast_sampler_is_reproducible_from_a_seed():
    table = discrete_gaussian_table(Fraction("63.75"))
    a = table.sample((3, 28, 28), numpy_generator(123))
    b = table.sample((3, 28, 28), numpy_generator(123))
    c = table.sample((3, 28, 28), numpy_generator(124))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_table_is_a_cdf_over_the_documented_support():
    table = discrete_gaussian_table(Fraction(255))
    thresholds = [int(h) << 64 | int(l) for h, l in zip(table.high, table.low)]
    assert thresholds == sorted(thresholds) and table.support < 2 ** 16
    assert table.values[0] == -table.support and table.values[-1] == table.support
    # The first threshold is the mass at -K: far below 2^-100 of 2^128.
    assert thresholds[0] < 2 ** 28


class _CraftedWords:
    """A generator stand-in whose raw words are given: ``random_raw(n)`` the first words (an array), and
    ``random_raw()`` the next second word (a Python int, as numpy's bit generators return it)."""

    def __init__(self, words, lows):
        self.words, self.lows = np.array(words, dtype=np.uint64), list(lows)
        self.bit_generator = self

    def random_raw(self, size=None):
        return self.lows.pop(0) if size is None else self.words[:size].copy()


@pytest.mark.parametrize("engine", ["auto", "reference"])
@pytest.mark.parametrize("law", [DiscreteGaussianNoise, RoundedGaussianNoise], ids=lambda law: law.name)
@pytest.mark.parametrize("sigma", [0.25, 0.5, 1.0])
def test_every_threshold_splits_128_bit_words_exactly(monkeypatch, engine, law, sigma):
    """The draw for U = high * 2^64 + low is the first k_j with U < T_j, compared as 128-bit integers: for
    every threshold, U = T_j - 1, T_j and T_j + 1 (the high word a tie, so the second word decides).
    Compared in float64 the second words below 2^63 would round together (issue 15)."""
    from intrs import kernels

    monkeypatch.setenv(kernels.ENGINE_ENV, engine)
    table = law(sigma).table
    thresholds = [int(h) << 64 | int(lo) for h, lo in zip(table.high[:-1], table.low[:-1])] + [2 ** 128]
    words = [(int(table.high[j]), int(table.low[j]) + d) for j in range(len(thresholds) - 1) for d in (-1, 0, 1)
             if 0 <= int(table.low[j]) + d < 2 ** 64]
    got = table.sample((len(words),), _CraftedWords([h for h, _ in words], [lo for _, lo in words]))
    want = [int(table.values[bisect.bisect_right(thresholds, h << 64 | lo)]) for h, lo in words]
    assert sum(g != w for g, w in zip(got.tolist(), want)) == 0


def test_sigma_in_pixel_steps_reads_the_decimal_literally():
    assert sigma_in_pixel_steps(0.12) == Fraction(153, 5)
    assert sigma_in_pixel_steps(0.25) == Fraction(255, 4)


def test_discrete_noise_is_added_to_integer_pixels_without_clipping():
    noise = DiscreteGaussianNoise(1.0)
    pixels = torch.full((1, 8, 8), 250, dtype=torch.uint8)
    z = noise.perturb(pixels, 500, noise.generator(0))
    assert z.dtype == torch.int32 and z.shape == (500, 1, 8, 8)
    assert int(z.max()) > 255 + 255 and int(z.min()) < 0  # the lattice is unbounded
    assert abs(float(z.float().mean()) - 250) < 3


@pytest.mark.parametrize("engine", ["auto", "reference"])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_draws_do_not_depend_on_how_many_threads_make_them(monkeypatch, threads, engine):
    """Pieces of the word stream drawn at once (PCG64 jumped ahead) give one random_raw call's draws,
    leave the generator where that call leaves it, and the pixel offsets land on every copy."""
    import intrs.noise as noise_module

    from intrs import kernels

    monkeypatch.setenv(kernels.ENGINE_ENV, engine)  # reference: numpy's search instead of the compiled one
    law, pixels = DiscreteGaussianNoise(0.5), torch.randint(0, 256, (3, 4, 5), dtype=torch.uint8)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        monkeypatch.setattr(noise_module, "PIECE_WORDS", 60)
        monkeypatch.setattr(noise_module, "CACHED_WORDS", 600)
        pieced_generator = law.generator(7)
        assert len(noise_module.word_streams(law.generator(7), 301 * 60, 60)) > 2
        pieced = law.perturb(pixels, 301, pieced_generator)
    finally:
        torch.set_num_threads(before)
    whole_generator = law.generator(7)
    words = whole_generator.bit_generator.random_raw(301 * 60)
    table = law.table
    index = np.minimum(np.searchsorted(table.high, words, side="right"), len(table.values) - 1)
    want = table.values[index].reshape(301, 3, 4, 5) + pixels.numpy().astype(np.int32)
    assert np.array_equal(pieced.numpy(), want)
    assert pieced_generator.bit_generator.random_raw(3).tolist() == whole_generator.bit_generator.random_raw(3).tolist()
