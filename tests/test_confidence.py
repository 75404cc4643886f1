"""The anytime-valid confidence sequence, the sequential rules' integer decision tables and their C header."""

import math
import re
import shutil
import subprocess

import mpmath
import numpy as np
import pytest
from scipy.stats import beta, norm

from intrs.cli import main
from intrs.confidence import (FLOAT_MARGIN, MAX_TRIALS, PredictThresholds, SequentialBounds, batch_schedule,
                              confidence_sequence, excludes, log_mixture, log_mixture_exact, radius_tables)
from intrs.errors import ConfigError
from intrs.noise import GaussianNoise
from intrs.smoothing import CERTIFIED, OUT_OF_BUDGET, REFUTED, SmoothedClassifier


def test_float_log_martingale_is_within_a_hundredth_of_the_margin_of_50_digit_arithmetic():
    """The float64 decisions rest on this: |float - exact| far below FLOAT_MARGIN up to MAX_TRIALS."""
    rng = np.random.default_rng(17)
    worst = 0.0
    for _ in range(300):
        t = int(10 ** rng.uniform(0, math.log10(MAX_TRIALS)))
        s = int(rng.choice([t, t - 1, rng.integers(0, t + 1)])) if t > 1 else t
        p = float(rng.choice([rng.uniform(0.001, 0.999), 1 - 10 ** rng.uniform(-7, -1), 0.5]))
        worst = max(worst, abs(log_mixture(s, t, p) - float(log_mixture_exact(s, t, p))))
    assert worst < FLOAT_MARGIN / 100, worst


@pytest.mark.parametrize("s,t,alpha", [(100, 100, 0.001), (50, 100, 0.001), (0, 100, 0.05), (9990, 10000, 0.0005),
                                       (1, 3, 0.1), (731, 1000, 0.01)])
def test_confidence_sequence_is_the_exact_interval_widened_by_at_most_a_hair(s, t, alpha):
    """lower and upper lie outside the sequence {M_t < 1/alpha} (50-digit check), by a few float margins at most."""
    lower, upper = confidence_sequence(s, t, alpha)
    level = -mpmath.log(alpha)
    if s > 0:
        # Excluded, so at or below the exact end; and ln M there only a few float margins above the level.
        assert level <= log_mixture_exact(s, t, lower) <= level + 10 * FLOAT_MARGIN
    else:
        assert lower == 0.0
    if s < t:
        assert level <= log_mixture_exact(s, t, upper) <= level + 10 * FLOAT_MARGIN
    else:
        assert upper == 1.0
    assert lower < s / t < upper or (lower <= s / t <= upper and s in (0, t))


def test_when_every_vote_agrees_the_sequence_costs_ln2_over_clopper_pearson():
    """At S = t the point mass at 1 gives M >= p^-t / 2: lower >= (alpha / 2)^(1/t), and below Clopper-Pearson's
    alpha^(1/t) (no fixed-n bound beats that)."""
    for t in (10, 100, 6200, 100_000):
        lower, _ = confidence_sequence(t, t, 0.001)
        assert (0.0005 ** (1 / t)) * (1 - 1e-12) <= lower < 0.001 ** (1 / t)


def test_batch_schedule_doubles_to_the_batch_then_steps_by_it():
    assert batch_schedule(20_000, 100)[:7] == (10, 20, 40, 80, 100, 200, 300)
    assert batch_schedule(20_000, 100)[-1] == 20_000 and len(batch_schedule(20_000, 100)) == 204
    assert batch_schedule(250, 100) == (10, 20, 40, 80, 100, 200, 250)
    assert batch_schedule(5, 1000) == (5,) and batch_schedule(1000, 4) == tuple(range(4, 1001, 4))
    with pytest.raises(ConfigError, match="at most"):
        batch_schedule(MAX_TRIALS + 1, 100)
    with pytest.raises(ConfigError, match="max-n >= 1"):
        batch_schedule(0, 100)


def _first_crossing(paths: np.ndarray, above: np.ndarray, below: np.ndarray) -> np.ndarray:
    """Whether each path (rows: counts after each step) ever reaches a table's 'above' or falls under 'below'."""
    return ((paths >= above) | (paths < below)).any(axis=1)


def test_the_bounds_hold_at_every_step_with_total_error_alpha_even_for_an_adversarial_stopping_time():
    """4,000 Bernoulli paths per p; the adversary stops at the first step where lower > p or upper < p (if ever).

    With sigma = 1 and r = PhiInv(p), the radius tables hold exactly these decisions (certified: lower >= p;
    refuted: upper < p). A lower bound above p is a certificate above the true radius: at most alpha. The same
    harness finds the naive rule (Clopper-Pearson at alpha at every look) far above alpha: it can fail."""
    alpha, paths_per_p = 0.1, 4000
    steps = batch_schedule(2000, 50)  # 10, 20, 40, 50, 100, ..., 2000: 43 looks
    increments = np.diff((0,) + steps)
    rng = np.random.default_rng(2024)
    sd = math.sqrt(alpha * (1 - alpha) / paths_per_p)
    naive_rates = []
    for p in (0.55, 0.75, 0.9, 0.99):
        tables = radius_tables(steps, alpha, 1.0, (float(norm.ppf(p)),))
        paths = np.cumsum(rng.binomial(increments, p, size=(paths_per_p, len(steps))), axis=1)
        never = np.zeros(len(steps), dtype=np.int64)
        low = _first_crossing(paths, tables.certify_at[:, 0], never)
        high = _first_crossing(paths, np.array(steps) + 1, tables.refuted_below[:, 0])
        assert low.mean() <= alpha + 3 * sd, (p, low.mean())
        assert high.mean() <= alpha / 2 + 3 * sd, (p, high.mean())  # the upper bound's own level
        t = np.broadcast_to(np.array(steps), paths.shape)
        naive = np.nan_to_num(beta.ppf(alpha, paths, t - paths + 1), nan=0.0) > p  # nan at S = 0: bound 0
        naive_rates.append(naive.any(axis=1).mean())
        print(f"p = {p}: lower above p {low.mean():.4f}, upper below p {high.mean():.4f}, "
              f"naive Clopper-Pearson at every look {naive_rates[-1]:.4f}")
    assert max(naive_rates) > alpha + 6 * sd, naive_rates


def test_radius_tables_are_the_exact_decisions_entry_by_entry():
    """Every entry against the host's exact decision at it and next to it; the budget by brute force."""
    steps, alpha, sigma, radii = batch_schedule(1500, 100), 0.01, 0.25, (0.1, 0.25, 0.5, 2.5)  # 2.5: 10 sigma
    tables = radius_tables(steps, alpha, sigma, radii)
    for k, t in enumerate(steps):
        for j in range(len(radii)):
            c, g = int(tables.certify_at[k, j]), int(tables.refuted_below[k, j])
            assert c == t + 1 or tables.certified(k, c, j)
            assert c == 0 or not tables.certified(k, c - 1, j)
            assert g == 0 or tables.refuted(k, g - 1, j)
            assert g == t + 1 or not tables.refuted(k, g, j)
            assert g <= c
            # Out of the budget: no later step certifies even with every remaining vote for the top class.
            b = int(tables.budget_below[k, j])
            reachable = lambda s: any(tables.certified(i, s + steps[i] - t, j) for i in range(k + 1, len(steps)))
            if k < len(steps) - 1 and 0 < b <= t:
                assert not reachable(b - 1) and reachable(b)
    assert np.all(np.diff(tables.certify_at, axis=1) >= 0) and np.all(np.diff(tables.refute_below, axis=1) >= 0)
    assert np.all(tables.refute_below <= tables.certify_at)


def test_radii_whose_level_rounds_to_one_are_decided_at_once_as_not_certifiable():
    """At sigma = 0.12, radii from 1.0 (8.3 sigma) have Phi(r / sigma) = 1.0 as a double: the tables once
    crashed there (ln(1 - p) at p = 1, in the fmnist preset's Tables 4/5 cells). Such a radius is never
    certified, out of the budget from the first step, and refuted by the first vote against the top class."""
    steps = batch_schedule(100_000, 100)
    tables = radius_tables(steps, 0.001, 0.12, (0.25, 0.5, 1.0, 1.75))
    assert np.array_equal(tables.certify_at[:, 2:], np.tile(np.asarray(steps)[:, None] + 1, 2))
    assert np.array_equal(tables.refute_below[0, 2:], [steps[0] + 1] * 2)  # decided at the first step
    assert tables.refuted(0, steps[0] - 1, 3) and not tables.refuted(0, steps[0], 3)
    assert not tables.certified(len(steps) - 1, steps[-1], 3)
    assert tables.certify_at[-1, 0] <= steps[-1]  # 0.25 (2.1 sigma) stays certifiable
    with pytest.raises(ConfigError, match="sigma"):
        radius_tables(steps, 0.6, 0.12, (1.75,))


def test_radius_table_decisions_are_monotone_in_the_count():
    steps, tables = batch_schedule(400, 100), radius_tables(batch_schedule(400, 100), 0.01, 0.25, (0.25, 0.5))
    for k in (0, 3, len(steps) - 1):
        for j in (0, 1):
            certified = [tables.certified(k, s, j) for s in range(steps[k] + 1)]
            refuted = [tables.refuted(k, s, j) for s in range(steps[k] + 1)]
            assert certified == sorted(certified) and refuted == sorted(refuted, reverse=True)


def test_last_step_certifies_like_clopper_pearson_at_half_alpha():
    """The budget's last step takes the larger of the sequence and Cohen's Clopper-Pearson bound at alpha / 2."""
    steps = batch_schedule(2000, 100)
    tables = radius_tables(steps, 0.001, 0.25, (0.5,))
    p = norm.cdf(2.0)
    cp_first = next(s for s in range(2001) if s and beta.ppf(0.0005, s, 2001 - s) >= p)
    assert tables.certify_at[-1, 0] == cp_first < tables.certify_at[-2, 0] + 100
    bounds = SequentialBounds(steps, 0.001)
    assert bounds.lower(len(steps) - 1, cp_first) >= p > bounds.lower(len(steps) - 1, cp_first - 1)


def test_predict_thresholds_are_the_exact_decisions():
    rule = PredictThresholds(0.001, 10)
    for m in list(range(0, 60)) + [100, 999, 1000]:
        for final in (False, True):
            c = rule.decide_at(m, final)
            assert m // 2 < c <= m + 1
            if not final:
                assert c == m + 1 or excludes(c, m, 0.5, rule.pair_alpha / 2)
                assert c - 1 <= m // 2 or not excludes(c - 1, m, 0.5, rule.pair_alpha / 2)
            else:
                assert c <= rule.decide_at(m, False)
    # All votes for one class: 15 decide at ten classes (alpha / 9 / 2), 11 at two (alpha / 2): 2^11 / 2 > 2 / alpha.
    assert rule.decide_at(14) == 15 and rule.decide_at(15) == 15
    assert PredictThresholds(0.001, 2).decide_at(12) == 12 and PredictThresholds(0.001, 2).decide_at(11) == 12


def _c_arrays(text: str) -> dict[str, np.ndarray]:
    found = {}
    for name, body in re.findall(r"static const int32_t (\w+)\[[^=]*= \{(.*?)\};", text, re.S):
        found[name] = np.array([int(v) for v in re.findall(r"-?\d+", body)], dtype=np.int64)
    return found


def test_radius_table_header_holds_the_sequential_tables_entry_by_entry(capsys, tmp_path):
    out = tmp_path / "t.h"
    code = main(["radius-table", "--n", "1000", "--sigma", "0.25", "--radii", "0.5,0.25,0.75", "--max-n", "3000",
                 "--batch", "200", "--predict-max-n", "300", "--classes", "3", "--out", str(out)])
    assert code == 0 and "sequential CERTIFY at r = 0.25, 0.5, 0.75 over" in capsys.readouterr().out
    text = out.read_text()
    arrays = _c_arrays(text)
    steps = batch_schedule(3000, 200)
    tables = radius_tables(steps, 0.001, 0.25, (0.25, 0.5, 0.75))
    assert np.array_equal(arrays["intrs_seq_steps"], steps)
    assert np.array_equal(arrays["intrs_seq_radii"], [16384, 32768, 49152])
    assert np.array_equal(arrays["intrs_seq_certify_at"], tables.certify_at.ravel())
    assert np.array_equal(arrays["intrs_seq_refute_below"], tables.refute_below.ravel())
    decide, final = PredictThresholds(0.001, 3).tables(300)
    assert np.array_equal(arrays["intrs_predict_steps"], batch_schedule(300, 200))
    assert np.array_equal(arrays["intrs_predict_decide_at"], decide)
    assert np.array_equal(arrays["intrs_predict_decide_final_at"], final)
    assert f"#define INTRS_SEQ_STEPS {len(steps)}" in text and "#define INTRS_PREDICT_MAX_N 300" in text


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_a_device_that_only_compares_counts_with_the_header_decides_as_the_host(tmp_path):
    """The rule in C (integers only) on vote paths of varied pA, against the host's sequential CERTIFY."""
    steps, radii = batch_schedule(3000, 100), (0.25, 0.5, 0.75)
    from intrs.deploy import radius_table_header
    tables = radius_tables(steps, 0.001, 0.25, radii)
    (tmp_path / "t.h").write_text(radius_table_header(100, 0.001, 0.25, 16, tables))
    (tmp_path / "rule.c").write_text("""
#include <stdio.h>
#include "t.h"
int main(void) {  /* per path: the counts after each step on one line; prints the stop step and 'CRB.' */
    long count; int k, j;
    for (;;) {
        char state[INTRS_SEQ_RADII + 1] = {0};
        int stop = -1, decided = 0;
        for (k = 0; k < INTRS_SEQ_STEPS; k++) {
            if (scanf("%ld", &count) != 1) return 0;
            if (stop >= 0) continue;
            for (j = 0; j < INTRS_SEQ_RADII; j++) {
                if (state[j]) continue;
                if (count >= intrs_seq_certify_at[k][j]) state[j] = 'C';
                else if (count < intrs_seq_refute_below[k][j]) state[j] = 'X';
                if (state[j]) decided++;
            }
            if (decided == INTRS_SEQ_RADII) stop = k;
        }
        printf("%d %s\\n", stop, state);
    }
}
""")
    subprocess.run(["cc", "-std=c99", "-O1", "-o", str(tmp_path / "rule"), str(tmp_path / "rule.c")], check=True)
    rng = np.random.default_rng(7)
    pas = [1.0, 0.9999, 0.999, 0.995, 0.98, 0.9, 0.85, 0.6, 0.3]
    paths = [np.cumsum(rng.binomial(np.diff((0,) + steps), p)) for p in pas for _ in range(6)]
    device = subprocess.run([str(tmp_path / "rule")], input="\n".join(" ".join(map(str, p)) for p in paths),
                            capture_output=True, text=True, check=True).stdout.splitlines()
    host = SmoothedClassifier(lambda b: b, GaussianNoise(0.25), 2, batch_size=100)
    for path, line in zip(paths, device):
        counts = [np.array([t - c, c]) for t, c in zip(steps, path)]
        cert = host._decide_radii(1, iter(counts), SequentialBounds(steps, 0.001), radii)
        letters = "".join({CERTIFIED: "C", REFUTED: "X", OUT_OF_BUDGET: "X"}[how] for _, how in cert.decisions)
        assert line == f"{steps.index(cert.n)} {letters}", (path[-1], line, cert)
        certified = [r for r, how in cert.decisions if how == CERTIFIED]
        assert cert.radius >= (certified[-1] if certified else 0.0)


@pytest.mark.parametrize("alpha,classes", [(0.001, 10), (0.05, 2), (0.01, 7)])
def test_predict_tables_at_once_equal_the_rule_count_by_count(alpha, classes):
    """tables() computes the last step's test for every m at once (binom.isf, checked); decide_at is the rule."""
    rule = PredictThresholds(alpha, classes)
    decide, final = rule.tables(1500)
    assert [rule.decide_at(m) for m in range(1501)] == decide.tolist()
    assert [rule.decide_at(m, final=True) for m in range(1501)] == final.tolist()
