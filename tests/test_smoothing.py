import numpy as np
import pytest
import torch
from scipy.stats import beta, norm

from intrs.errors import ConfigError
from intrs.certificate import certified_radius as cohen_radius
from intrs.noise import GaussianNoise
from intrs.results import format_radius
from intrs.smoothing import ABSTAIN, SmoothedClassifier, binomial_p_value, clopper_pearson_lower


class Linear:
    """f(x) = 1 if <w, x> + b >= 0 else 0, with ||w|| = 1: under N(0, sigma^2 I), pA = Phi(margin / sigma)."""

    def __init__(self, w: torch.Tensor, b: float):
        self.w, self.b = w / w.norm(), b

    def margin(self, pixels: torch.Tensor) -> float:
        return float((pixels.float().flatten() / 255) @ self.w.flatten() + self.b)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return ((batch.flatten(1) @ self.w.flatten() + self.b) >= 0).long()


def linear_case(margin: float):
    w = torch.ones(1, 4, 4)
    pixels = torch.full((1, 4, 4), 128, dtype=torch.uint8)
    f = Linear(w, 0.0)
    f.b = margin - f.margin(pixels)
    return f, pixels


def test_certify_radius_is_sigma_times_phi_inverse_of_the_lower_bound():
    f, pixels = linear_case(0.3)
    sigma, n, alpha = 0.25, 5000, 0.001
    cert = SmoothedClassifier(f, GaussianNoise(sigma), 2, batch_size=700).certify(pixels, 100, n, alpha, seed=1)
    assert cert.prediction == 1 and cert.n == n
    assert cert.p_lower == pytest.approx(beta.ppf(alpha, cert.counts_top, n - cert.counts_top + 1), rel=1e-12)
    assert cert.radius == pytest.approx(sigma * norm.ppf(cert.p_lower), rel=1e-12)
    # pA = Phi(0.3 / 0.25) = 0.885, so nA / n is near it
    assert abs(cert.counts_top / n - norm.cdf(0.3 / sigma)) < 0.02


def test_certified_radius_exceeds_the_true_radius_in_at_most_about_alpha_of_runs():
    f, pixels = linear_case(0.2)
    sigma, alpha, runs = 0.25, 0.1, 400
    true_radius = sigma * norm.ppf(norm.cdf(0.2 / sigma))  # = the margin, 0.2
    smoothed = SmoothedClassifier(f, GaussianNoise(sigma), 2, batch_size=500)
    radii = np.array([smoothed.certify(pixels, 50, 500, alpha, seed=s).radius for s in range(runs)])
    over = float(np.mean(radii > true_radius))
    assert over <= alpha + 3 * np.sqrt(alpha * (1 - alpha) / runs)
    assert np.mean(radii) > 0.6 * true_radius  # the bound is not vacuous


def test_certify_abstains_when_the_top_class_is_not_likely_enough():
    f, pixels = linear_case(0.0)  # pA = 1/2 exactly
    cert = SmoothedClassifier(f, GaussianNoise(0.5), 2).certify(pixels, 100, 2000, 0.001, seed=0)
    assert cert.prediction == ABSTAIN and cert.radius == 0.0


class Alternating:
    """Returns 0, 1, 0, 1, ... whatever the input: an exact tie."""

    def __call__(self, batch):
        return torch.arange(len(batch)) % 2


class Constant:
    def __init__(self, label):
        self.label = label

    def __call__(self, batch):
        return torch.full((len(batch),), self.label)


def test_predict_abstains_on_a_tie():
    smoothed = SmoothedClassifier(Alternating(), GaussianNoise(0.25), 3, batch_size=100)
    pred = smoothed.predict(torch.zeros(1, 2, 2, dtype=torch.uint8), 1000, 0.001)
    assert pred.prediction == ABSTAIN and pred.counts_top == pred.counts_second == 500
    assert pred.p_value == pytest.approx(1.0)


def test_predict_returns_a_clear_majority():
    smoothed = SmoothedClassifier(Constant(2), GaussianNoise(0.25), 3, batch_size=64)
    pred = smoothed.predict(torch.zeros(1, 2, 2, dtype=torch.uint8), 200, 0.001)
    assert pred.prediction == 2 and pred.counts_top == 200 and pred.counts_second == 0


def test_predict_follows_the_binomial_test_at_level_alpha():
    assert binomial_p_value(60, 100) > 0.01 and binomial_p_value(70, 100) < 0.001
    assert binomial_p_value(5, 10) == pytest.approx(1.0)


def test_every_image_has_its_own_reproducible_stream():
    f, pixels = linear_case(0.05)
    smoothed = SmoothedClassifier(f, GaussianNoise(0.5), 2, batch_size=256)
    run = [smoothed.certify(pixels, 32, 1000, 0.01, seed=9, idx=i) for i in range(4)]
    again = smoothed.certify(pixels, 32, 1000, 0.01, seed=9, idx=2)  # image 2 alone
    assert again == run[2]
    assert len({c.counts_top for c in run}) > 1  # different images, different draws
    assert smoothed.certify(pixels, 32, 1000, 0.01, seed=10, idx=2) != run[2]


def test_clopper_pearson_lower_bound():
    assert clopper_pearson_lower(0, 10, 0.05) == 0.0
    assert clopper_pearson_lower(10, 10, 0.05) == pytest.approx(0.05 ** (1 / 10))  # (1-alpha)-bound at k = n
    assert clopper_pearson_lower(50, 100, 0.001) < 0.5


def test_radius_formula_and_no_radius_at_or_below_one_half():
    assert cohen_radius(0.5, norm.cdf(1.0)) == pytest.approx(0.5)
    assert cohen_radius(0.5, 0.5) == 0.0


def test_radius_is_written_rounded_down_with_seven_digits():
    assert format_radius(0.123456789) == "0.1234567"
    assert format_radius(0.99999999) == "0.9999999"
    assert format_radius(1.23456789) == "1.234567"
    assert format_radius(0.0) == "0"
    for r in np.random.default_rng(0).uniform(0, 3, 1000):
        assert float(format_radius(r)) <= r


@pytest.mark.parametrize("kwargs,match", [
    ({"n0": 101, "n": 100}, "n0"), ({"alpha": 0.0}, "alpha"), ({"alpha": 1.5}, "alpha"),
    ({"n": 0, "n0": 1}, "n \\(Monte-Carlo samples\\)"), ({"alpha": float("nan")}, "alpha"),
])
def test_bad_certify_parameters_are_rejected(kwargs, match):
    args = {"n0": 10, "n": 100, "alpha": 0.01, **kwargs}
    smoothed = SmoothedClassifier(Constant(0), GaussianNoise(0.25), 2)
    with pytest.raises(ConfigError, match=match):
        smoothed.certify(torch.zeros(1, 2, 2, dtype=torch.uint8), **args)


@pytest.mark.parametrize("sigma", [0, -0.1, float("nan"), float("inf")])
def test_sigma_must_be_positive(sigma):
    with pytest.raises(ConfigError, match="sigma must be a positive number"):
        GaussianNoise(sigma)


def test_gaussian_noise_is_added_to_pixels_over_255():
    noise = GaussianNoise(0.5)
    batch = noise.perturb(torch.full((3, 8, 8), 51, dtype=torch.uint8), 4000, torch.Generator().manual_seed(0))
    assert batch.shape == (4000, 3, 8, 8) and batch.dtype == torch.float32
    assert float(batch.mean()) == pytest.approx(0.2, abs=0.005)
    assert float(batch.std()) == pytest.approx(0.5, abs=0.005)
