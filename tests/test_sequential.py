"""Sequential CERTIFY and PREDICT end to end: sound under every noise law (also when an adversary picks the
stopping time), reproducible from the seed, and the CLI and analyze around them."""

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from scipy.special import bdtrc
from scipy.stats import norm

from intrs.cli import main
from intrs.confidence import (PredictThresholds, batch_schedule, binomial_p_value, clopper_pearson_lower,
                              radius_tables)
from intrs.noise import (DiscreteGaussianNoise, GaussianNoise, RoundedGaussianNoise, discrete_gaussian_pmf,
                         rounded_gaussian_pmf)
from intrs.report import analyze
from intrs.results import read_result_table
from intrs.rng import STAGE_ESTIMATE, STAGE_PREDICT, STAGE_SELECT
from intrs.smoothing import ABSTAIN, CERTIFIED, OUT_OF_BUDGET, REFUTED, SmoothedClassifier

PIXELS = torch.full((1, 4, 4), 128, dtype=torch.uint8)
SIGMA = 0.25


class FirstCoordinateBands:
    """f(z) = the band that z's first coordinate falls in: class order[i] on [edges[i-1], edges[i]).

    Its class probabilities under each noise are closed-form (``class_probabilities``), so a certificate or
    an answer can be checked against the truth."""

    def __init__(self, edges, order):
        self.edges, self.order = torch.tensor(edges, dtype=torch.float64), torch.tensor(order)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.order[torch.bucketize(batch[:, 0, 0, 0].double(), self.edges, right=True)]


def class_probabilities(law, f: FirstCoordinateBands, classes: int) -> np.ndarray:
    """P[f(x + noise) = c]: Gaussian CDF differences on x = p / 255, or sums of the lattice pmf in pixel steps."""
    edges = f.edges.numpy()
    if isinstance(law, GaussianNoise):
        cdf = norm.cdf((edges - PIXELS[0, 0, 0].item() / 255) / law.sigma)
    else:
        support = np.arange(-2000, 2001)
        pmf = (discrete_gaussian_pmf if isinstance(law, DiscreteGaussianNoise) else rounded_gaussian_pmf)(
            Fraction(law.sigma_q), support)
        values = PIXELS[0, 0, 0].item() + support
        cdf = np.array([pmf[values < e].sum() for e in edges])
    mass = np.diff(np.concatenate([[0.0], cdf, [1.0]]))
    probabilities = np.zeros(classes)
    np.add.at(probabilities, f.order.numpy(), mass)
    return probabilities


def two_class_case(law, p_one: float) -> FirstCoordinateBands:
    """Class 1 on the upper side of an edge set so that P[class 1] is about p_one."""
    if isinstance(law, GaussianNoise):
        edge = PIXELS[0, 0, 0].item() / 255 - law.sigma * norm.ppf(p_one)
    else:
        edge = PIXELS[0, 0, 0].item() - round(float(law.sigma_q) * norm.ppf(p_one))
    return FirstCoordinateBands([edge], [0, 1])


LAWS = {"gaussian": lambda: GaussianNoise(SIGMA), "rounded-gaussian": lambda: RoundedGaussianNoise(SIGMA),
        "discrete-gaussian": lambda: DiscreteGaussianNoise(SIGMA)}


def certify_error_rates(law, alpha: float, runs: int, max_n: int = 500, n0: int = 20):
    """Over ``runs`` seeds: how often the certificate exceeds the true radius (lower bound above the true pA of
    its class), and how often an adversary who may stop at any step would see a lower bound above it."""
    f = two_class_case(law, 0.9)
    truth = class_probabilities(law, f, 2)
    sigma = law.sigma
    z = norm.ppf(truth[1])  # the true radius is sigma z; the radii bracket it
    radii = (0.8 * sigma, (z - 0.08) * sigma, (z + 0.12) * sigma)
    smoothed = SmoothedClassifier(f, law, 2, batch_size=50)
    steps = batch_schedule(max_n, 50)
    # The adversary's bar, max(pA of the selected class, 1/2), as a radius table: lower >= bar at step k iff
    # count >= certify_at[k] (entry by entry equal to the bounds: test_confidence).
    bars = {c: radius_tables(steps, alpha, sigma, (max(sigma * norm.ppf(max(truth[c], 0.5)), 1e-9),)).certify_at[:, 0]
            for c in (0, 1)}
    wrong = ever = 0
    for seed in range(runs):
        cert = smoothed.certify_sequential(PIXELS, n0, max_n, alpha, radii=radii, seed=seed, idx=3)
        wrong += cert.prediction != ABSTAIN and (cert.p_lower > truth[cert.prediction]
                                                 or cert.radius > sigma * norm.ppf(truth[cert.prediction]))
        top = int(smoothed.sample_counts(PIXELS, n0, seed, 3, STAGE_SELECT).argmax())
        path = np.array([c[top] for c in smoothed.count_steps(PIXELS, steps, seed, 3, STAGE_ESTIMATE)])
        ever += bool((path >= bars[top]).any())
    return wrong / runs, ever / runs


def predict_error_rates(law, alpha: float, runs: int, max_n: int = 4000, batch: int = 200):
    """Two nearly tied classes, P about (0.497, 0.503) (the hardest case for a test: every look is nearly a coin
    toss): how often the sequential answer is the wrong class; how often an adversary stopping at any step
    would see the rule return it; and the same for Cohen's fixed-n test applied at every step (peeking), which
    is not anytime-valid: the harness must see it fail."""
    f = two_class_case(law, 0.503)
    truth = class_probabilities(law, f, 2)
    best = int(truth.argmax())
    smoothed = SmoothedClassifier(f, law, 2, batch_size=batch)
    steps, rule = batch_schedule(max_n, batch), PredictThresholds(alpha, 2)
    wrong = ever = peeking = 0
    for seed in range(runs):
        answer, bad, bad_peek = None, False, False
        for k, counts in enumerate(smoothed.count_steps(PIXELS, steps, seed, 5, STAGE_PREDICT)):
            top = int(np.argsort(-counts, kind="stable")[0])
            n_top, n_second = int(counts[top]), int(counts[1 - top])
            decides = n_top >= rule.decide_at(n_top + n_second, final=k == len(steps) - 1)
            if decides and answer is None:
                answer = top  # the rule's own answer: it stops at its first decision
            if top != best:
                bad |= decides
                bad_peek |= peek_p_value(n_top, n_top + n_second) <= alpha
        answer = ABSTAIN if answer is None else answer
        if seed < 100:  # the library's rule is the one replayed here (same stream, same answer)
            assert smoothed.predict_sequential(PIXELS, max_n, alpha, seed=seed, idx=5).prediction == answer
        wrong += answer not in (ABSTAIN, best)
        ever += bad
        peeking += bad_peek
    return wrong / runs, ever / runs, peeking / runs, truth


def peek_p_value(n_top: int, m: int) -> float:
    """Cohen's two-sided binomial test against 1/2 (``binomial_p_value``) for n_top >= m / 2, from the C tail
    (scipy's binomtest is 30x slower): p = min(1, 2 P[Bin(m, 1/2) >= n_top])."""
    return 1.0 if 2 * n_top <= m else min(1.0, 2 * float(bdtrc(n_top - 1, m, 0.5)))


def within_alpha(rate: float, alpha: float, runs: int) -> bool:
    return rate <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / runs)


# The default run checks the paper's noise with 400 runs each (seconds); the slow ones every law at 2,000.
DEFAULT_RUNS = 400


def test_the_fast_peeking_p_value_is_cohens_binomial_test():
    for m in (1, 2, 7, 50, 333):
        for n_top in range((m + 1) // 2, m + 1):
            assert peek_p_value(n_top, m) == pytest.approx(binomial_p_value(n_top, m), rel=1e-9)


def test_sequential_certify_is_sound_under_the_discrete_gaussian_even_with_an_adversarial_stopping_time():
    alpha, runs = 0.1, DEFAULT_RUNS
    wrong, ever = certify_error_rates(DiscreteGaussianNoise(SIGMA), alpha, runs)
    print(f"discrete-gaussian certify alpha={alpha}: certificate above the true radius {wrong:.4f}, "
          f"adversarial stopping {ever:.4f} ({runs} runs)")
    assert within_alpha(wrong, alpha, runs) and within_alpha(ever, alpha, runs) and wrong <= ever


def test_sequential_predict_is_sound_even_with_an_adversarial_stopping_time_and_peeking_is_not():
    alpha, runs = 0.1, DEFAULT_RUNS
    wrong, ever, peeking, truth = predict_error_rates(DiscreteGaussianNoise(SIGMA), alpha, runs)
    print(f"discrete-gaussian predict alpha={alpha}, P={np.round(truth, 3)}: wrong answer {wrong:.4f}, adversarial "
          f"stopping {ever:.4f}, Cohen's test at every step {peeking:.4f} ({runs} runs)")
    assert within_alpha(wrong, alpha, runs) and within_alpha(ever, alpha, runs) and wrong <= ever
    assert not within_alpha(peeking, alpha, runs)  # the harness catches a rule that is not anytime-valid


# At sigma = 0.25 (63.75 pixel steps) the rounded and the discrete Gaussian differ by under 1e-4 in any
# probability, and the same random words give the same draws: their runs coincide. At sigma = 0.008 (2.04
# steps) they differ (the rounded law's variance is about sigma_q^2 + 1/12), so CERTIFY is checked there.
CERTIFY_LAWS = {"gaussian": lambda: GaussianNoise(SIGMA), "rounded-gaussian": lambda: RoundedGaussianNoise(0.008),
                "discrete-gaussian": lambda: DiscreteGaussianNoise(0.008)}


@pytest.mark.slow
@pytest.mark.parametrize("alpha", [0.05, 0.1])
@pytest.mark.parametrize("law", list(CERTIFY_LAWS))
def test_sequential_certify_is_sound_under_every_noise_law(law, alpha):
    runs = 2000
    wrong, ever = certify_error_rates(CERTIFY_LAWS[law](), alpha, runs)
    print(f"{law} sigma={CERTIFY_LAWS[law]().sigma} certify alpha={alpha}: above the true radius {wrong:.4f}, "
          f"adversarial {ever:.4f} ({runs} runs)")
    assert within_alpha(wrong, alpha, runs) and within_alpha(ever, alpha, runs) and wrong <= ever


@pytest.mark.slow
@pytest.mark.parametrize("alpha", [0.05, 0.1])
@pytest.mark.parametrize("law", list(LAWS))
def test_sequential_predict_is_sound_under_every_noise_law(law, alpha):
    runs = 2000
    wrong, ever, peeking, truth = predict_error_rates(LAWS[law](), alpha, runs)
    print(f"{law} predict alpha={alpha}, P={np.round(truth, 4)}: wrong {wrong:.4f}, adversarial {ever:.4f}, "
          f"peeking {peeking:.4f} ({runs} runs)")
    assert within_alpha(wrong, alpha, runs) and within_alpha(ever, alpha, runs) and wrong <= ever
    assert not within_alpha(peeking, alpha, runs)


def test_a_confident_input_stops_where_every_radius_is_decided():
    """All votes agree (pA = 1): r = 0.75 at sigma 0.25 needs the lower bound at Phi(3); the first step where
    nA = t reaches it is the table's, and no method does better than Clopper-Pearson's 5,114 (a valid lower
    bound after n unanimous votes is at most alpha^(1/n))."""
    smoothed = SmoothedClassifier(lambda b: torch.ones(len(b), dtype=torch.long), GaussianNoise(SIGMA), 2,
                                  batch_size=100)
    cert = smoothed.certify_sequential(PIXELS, 100, 20_000, 0.001, radii=(0.25, 0.5, 0.75))
    steps = batch_schedule(20_000, 100)
    first = next(t for k, t in enumerate(steps) if radius_tables(steps, 0.001, SIGMA, (0.75,)).certify_at[k, 0] <= t)
    assert cert.n == first == 6200 and cert.counts_top == first and cert.stop == "decided"
    assert cert.decisions == ((0.25, CERTIFIED), (0.5, CERTIFIED), (0.75, CERTIFIED)) and cert.radius >= 0.75
    assert math.ceil(math.log(0.001) / math.log(norm.cdf(3))) == 5114 < first
    settled = smoothed.certify_sequential(PIXELS, 100, 20_000, 0.001, tolerance=0.05)
    assert settled.stop == "settled" and settled.n < 20_000 and settled.radius > 0.75


def test_a_radius_at_the_true_radius_is_never_certified_and_stops_once_out_of_reach():
    """pA exactly Phi(0.5 / sigma): the radius 0.5 is never decided by a bound; the rule stops once not even every
    remaining vote could certify it, or at the budget, where the lower bound includes Clopper-Pearson at
    alpha / 2."""
    law = GaussianNoise(SIGMA)
    f = two_class_case(law, norm.cdf(0.5 / SIGMA))
    smoothed = SmoothedClassifier(f, law, 2, batch_size=200)
    steps = batch_schedule(3000, 200)
    tables = radius_tables(steps, 0.001, SIGMA, (0.5,))
    stops = set()
    for seed in range(8):
        cert = smoothed.certify_sequential(PIXELS, 50, 3000, 0.001, radii=(0.5,), seed=seed)
        assert cert.decisions[0][1] in (OUT_OF_BUDGET, REFUTED) and cert.radius < 0.5
        assert cert.p_lower < cert.counts_top / cert.n < cert.p_upper
        k = steps.index(cert.n)
        if cert.decisions[0][1] == OUT_OF_BUDGET and k < len(steps) - 1:
            assert all(cert.counts_top + steps[i] - cert.n < tables.certify_at[i, 0] for i in range(k + 1, len(steps)))
        if cert.n == 3000:
            assert cert.p_lower >= clopper_pearson_lower(cert.counts_top, 3000, 0.0005)
        stops.add(cert.stop)
    assert stops <= {"decided", "budget"}


def test_a_coin_abstains_and_predict_stops_at_once_on_agreeing_votes():
    law = DiscreteGaussianNoise(SIGMA)
    coin = SmoothedClassifier(two_class_case(law, 0.5), law, 2, batch_size=100)
    cert = coin.certify_sequential(PIXELS, 100, 5000, 0.001, radii=(0.25, 0.5))
    assert cert.prediction == ABSTAIN and cert.radius == 0 and cert.n < 5000
    assert all(how == REFUTED for _, how in cert.decisions)
    assert coin.certify_sequential(PIXELS, 100, 5000, 0.001, tolerance=0.05).stop in ("abstain", "settled")
    sure = SmoothedClassifier(lambda b: torch.full((len(b),), 7), law, 10, batch_size=100)
    answer = sure.predict_sequential(PIXELS, 1000, 0.001)
    assert answer.prediction == 7 and answer.n == 20 and answer.counts_top == 20 and answer.p_value <= 0.001
    assert coin.predict_sequential(PIXELS, 200, 0.001).prediction == ABSTAIN


def test_sequential_answers_reproduce_from_the_seed_and_each_image_has_its_own_streams():
    law = RoundedGaussianNoise(SIGMA)
    smoothed = SmoothedClassifier(two_class_case(law, 0.97), law, 2, batch_size=100)
    run = lambda idx, seed=1: smoothed.certify_sequential(PIXELS, 50, 4000, 0.01, radii=(0.25, 0.4), seed=seed,
                                                          idx=idx)
    assert run(3) == run(3) and run(3) != run(4) and run(3) != run(3, seed=2)
    predict = lambda idx: smoothed.predict_sequential(PIXELS, 500, 0.01, seed=1, idx=idx)
    assert predict(3) == predict(3)


def test_bad_sequential_parameters_are_refused():
    from intrs.errors import ConfigError
    smoothed = SmoothedClassifier(lambda b: torch.zeros(len(b), dtype=torch.long), GaussianNoise(SIGMA), 2)
    for kwargs, match in [({}, "either radii"), ({"radii": (0.25,), "tolerance": 0.1}, "either radii"),
                          ({"radii": (0.25, -1)}, "positive"), ({"radii": ("a",)}, "numbers"),
                          ({"tolerance": 0.0}, "tolerance must be")]:
        with pytest.raises(ConfigError, match=match):
            smoothed.certify_sequential(PIXELS, 10, 100, 0.01, **kwargs)
    with pytest.raises(ConfigError, match="n0"):
        smoothed.certify_sequential(PIXELS, 200, 100, 0.01, radii=(0.25,))


# ---------------------------------------------------------------- the CLI and analyze


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_certify_radii_and_sequential_predict_write_rows_that_analyze_reads(capsys, tmp_path, digits_checkpoint):
    seq, fixed, pred = tmp_path / "seq.tsv", tmp_path / "fixed.tsv", tmp_path / "pred.tsv"
    common = ["--checkpoint", digits_checkpoint, "--alpha", 0.01, "--max", 3]
    code, out, _ = run_cli(capsys, "certify", *common, "--n0", 16, "--radii", "0.25,0.1", "--max-n", 200,
                           "--out", seq)
    assert code == 0 and "| mean samples | median samples |" in out
    columns, rows = read_result_table(seq)
    assert columns[:6] == ["idx", "label", "predict", "radius", "correct", "time"]
    assert columns[-4:] == ["max_n", "pA_upper", "stop", "decisions"]
    for row in rows:
        assert 10 <= int(row["n"]) <= 200 and row["max_n"] == "200" and row["stop"] in ("decided", "budget")
        decisions = dict(part.split(":") for part in row["decisions"].split(","))
        assert list(decisions) == ["0.1", "0.25"] and set(decisions.values()) <= {CERTIFIED, REFUTED, OUT_OF_BUDGET}
        certified = [float(r) for r, how in decisions.items() if how == CERTIFIED]
        assert float(row["radius"]) >= max(certified, default=0)
        assert float(row["pA_lower"]) <= int(row["counts_top"]) / int(row["n"]) <= float(row["pA_upper"])
    again = tmp_path / "again.tsv"
    run_cli(capsys, "certify", *common, "--n0", 16, "--radii", "0.25,0.1", "--max-n", 200, "--out", again)
    strip = lambda path: [line.split("\t")[:5] + line.split("\t")[6:] for line in path.read_text().splitlines()]
    assert strip(again) == strip(seq)  # a re-run gives the same rows (the time column aside)
    run_cli(capsys, "certify", *common, "--n0", 16, "--n", 200, "--out", fixed)
    code, _, _ = run_cli(capsys, "predict", *common, "--sequential", "--max-n", 200, "--out", pred)
    columns, rows = read_result_table(pred)
    assert code == 0 and columns[-1] == "max_n" and all(1 <= int(r["n"]) <= 200 for r in rows)
    table = analyze([fixed, seq, pred])
    fixed_row, seq_row, pred_row = table.rows
    assert fixed_row["samples"] == [216] * 3 and seq_row["samples"] == [16 + int(r["n"]) for r in read_result_table(seq)[1]]
    assert pred_row["kind"] == "predict" and pred_row["samples"] == [int(r["n"]) for r in rows]
    markdown = table.to_markdown().splitlines()
    assert markdown[0].endswith("| mean samples | median samples |") and markdown[2].endswith("| 216.0 | 216.0 |")
    tolerance = tmp_path / "tol.tsv"
    code, _, _ = run_cli(capsys, "certify", *common[:-2], "--max", 1, "--n0", 16, "--max-n", 200, "--out", tolerance)
    assert code == 0 and {r["decisions"] for r in read_result_table(tolerance)[1]} == {"-"}


@pytest.mark.parametrize("args,fragment", [
    (["--n", 100, "--max-n", 200], "not --n"),
    (["--radii", "0.25", "--tolerance", 0.1], "choose one"),
    (["--radii", "0.25,x"], "--radii must be numbers"),
    (["--radii", "0.25,-0.5"], "positive"),
    (["--tolerance", -1], "tolerance"),
    (["--max-n", 10 ** 7], "at most"),
])
def test_bad_sequential_flags_are_one_line(capsys, tmp_path, digits_checkpoint, args, fragment):
    code, _, err = run_cli(capsys, "certify", "--checkpoint", digits_checkpoint, "--max", 1, *args,
                           "--out", tmp_path / "x.tsv")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("intrs: error: ") and fragment in lines[0], err
