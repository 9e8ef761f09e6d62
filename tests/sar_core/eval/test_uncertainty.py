"""Standard errors that mean what they say: the bootstrap over generated samples predicts how much a
metric moves when the samples are drawn again, and the seed-level intervals cover the truth at the
rate they claim (seeded simulations with a known answer)."""
import math

import numpy as np
import pytest

from sar_core.eval.metrics import (GaussianStats, coverage, frechet_distance, inception_score, manifold_radii,
                                   precision_recall)
from scipy import stats as scipy_stats

from sar_core.eval.uncertainty import (difference_of_two, excludes_zero, fid_bootstrap, holm, inception_score_bootstrap,
                                       mean_ci, normal_p_value, paired_difference, paired_p_value,
                                       precision_recall_bootstrap, resample_counts, standard_error, unpaired_difference,
                                       welch_p_value)

D, K_CLASSES = 8, 5
RNG = np.random.default_rng(0)
MIX = RNG.normal(size=(D, D)) / np.sqrt(D)
HEAD = RNG.normal(size=(D, K_CLASSES))
REAL = RNG.normal(size=(1000, D)) @ MIX  # the fixed reference set
REAL_STATS, REAL_RADII = GaussianStats.from_features(REAL), manifold_radii(REAL, 3)


def draw(n: int, rng) -> np.ndarray:
    """Generated samples from the same distribution as the reference ("two draws from one distribution")."""
    return rng.normal(size=(n, D)) @ MIX


def all_metrics(x: np.ndarray) -> dict[str, float]:
    c = coverage(REAL, REAL_RADII, x, manifold_radii(x, 3))
    return {"fid": frechet_distance(GaussianStats.from_features(x), REAL_STATS), "is": inception_score(x @ HEAD, 5),
            "precision": c.precision, "recall": c.recall}


def bootstrap_ses(x: np.ndarray, seed: int) -> dict[str, float]:
    counts = resample_counts(len(x), 20, seed)
    precision, recall = precision_recall_bootstrap(coverage(REAL, REAL_RADII, x, manifold_radii(x, 3)), counts)
    return {"fid": standard_error(fid_bootstrap(x, REAL_STATS, counts)),
            "is": standard_error(inception_score_bootstrap(x @ HEAD, counts, 5)),
            "precision": standard_error(precision), "recall": standard_error(recall)}


def test_fid_of_a_resample_with_every_row_once_is_the_fid():
    x = draw(300, np.random.default_rng(1))
    assert fid_bootstrap(x, REAL_STATS, np.ones((1, 300), int))[0] == pytest.approx(
        frechet_distance(GaussianStats.from_features(x), REAL_STATS), rel=1e-5)
    c = coverage(REAL, REAL_RADII, x, manifold_radii(x, 3))
    assert (c.precision, c.recall) == precision_recall(REAL, x)
    p, r = precision_recall_bootstrap(c, np.ones((1, 300), int))
    assert (p[0], r[0]) == pytest.approx((c.precision, c.recall))


def test_bootstrap_errors_predict_the_spread_of_new_draws_shrink_with_n_and_cover_at_the_stated_rate():
    """The stated rate (sar_core/eval/uncertainty.py, README): metric ± 1.96 SE covers the mean over
    new sample draws about 95% of the time; FID near its floor is conservative."""
    rng = np.random.default_rng(2)
    ses = {}
    for n in (250, 1000):
        values = [all_metrics(draw(n, rng)) for _ in range(60)]
        truth = {k: np.mean([v[k] for v in values]) for k in values[0]}
        spread = {k: np.std([v[k] for v in values], ddof=1) for k in values[0]}
        errors = [bootstrap_ses(draw(n, rng), seed) for seed in range(30)]
        ses[n] = {k: np.mean([e[k] for e in errors]) for k in truth}
        for k in truth:
            assert 0.6 < ses[n][k] / spread[k] < 1.6, (n, k, ses[n][k], spread[k])
            covered = np.mean([abs(v[k] - truth[k]) <= 1.96 * e[k] for v, e in zip(values, errors)])
            assert covered >= 0.8, (n, k, covered)
    for k in ses[250]:
        assert 1.3 < ses[250][k] / ses[1000][k] < 3.5, k  # ~1/sqrt(N): 2 for a quadrupled N


def test_the_seed_interval_covers_the_true_mean_at_95_percent():
    rng = np.random.default_rng(3)
    covered = []
    for _ in range(2000):
        mean, half, n = mean_ci(rng.normal(2.0, 1.0, size=3))
        covered.append(abs(mean - 2.0) <= half)
    assert n == 3 and 0.935 <= np.mean(covered) <= 0.965
    assert math.isnan(mean_ci([1.0])[1]) and mean_ci([])[2] == 0


def test_a_paired_design_separates_a_small_effect_that_the_arms_alone_cannot():
    """Arms that share the seed share its luck: the per-seed differences cancel it."""
    rng = np.random.default_rng(4)
    seed_luck = rng.normal(0.0, 3.0, size=5)  # training noise shared by both arms of a seed
    tf = {s: 20.0 + seed_luck[s] + rng.normal(0, 0.1) for s in range(5)}
    sar = {s: 19.5 + seed_luck[s] + rng.normal(0, 0.1) for s in range(5)}
    (m_tf, h_tf, _), (m_sar, h_sar, _) = mean_ci(list(tf.values())), mean_ci(list(sar.values()))
    assert abs(m_sar - m_tf) < h_tf + h_sar  # the arms' intervals overlap: alone they cannot tell
    diff, half, n = paired_difference(sar, tf)
    assert n == 5 and diff == pytest.approx(-0.5, abs=0.25) and excludes_zero(diff, half)
    # pairs are matched by key: a seed one arm lacks is left out, not misaligned
    assert paired_difference({0: 1.0, 1: 2.0, 2: 4.0}, {1: 1.0, 2: 1.0})[2] == 2
    covered = []
    for _ in range(1000):
        luck = rng.normal(0, 3.0, size=3)
        a = {s: 1.0 + luck[s] + rng.normal(0, 0.5) for s in range(3)}
        b = {s: luck[s] + rng.normal(0, 0.5) for s in range(3)}
        d, h, _ = paired_difference(a, b)
        covered.append(abs(d - 1.0) <= h)
    assert 0.93 <= np.mean(covered) <= 0.97


ARM = {0: 19.0, 1: 22.1, 2: 24.9, 3: 21.0}
BASE = {0: 20.0, 1: 23.0, 2: 26.0, 3: 21.5}


def test_p_values_are_scipys_tests_on_the_intervals_bases():
    keys = list(BASE)
    assert paired_p_value(ARM, BASE) == pytest.approx(scipy_stats.ttest_rel([ARM[k] for k in keys], [BASE[k] for k in keys]).pvalue, rel=1e-9)
    a, b = [19.0, 22.1, 24.9], [20.0, 23.0, 26.0, 21.5, 30.0]
    assert welch_p_value(a, b) == pytest.approx(scipy_stats.ttest_ind(a, b, equal_var=False).pvalue, rel=1e-9)
    z = (19.0 - 20.0) / math.hypot(0.3, 0.4)
    assert normal_p_value(19.0, 0.3, 20.0, 0.4) == pytest.approx(2 * scipy_stats.norm.sf(abs(z)), rel=1e-9)
    # the p-value and the 95% interval agree on whether the difference is beyond the noise
    for (d, half, _), p in [(paired_difference(ARM, BASE), paired_p_value(ARM, BASE)),
                            (unpaired_difference(a, b), welch_p_value(a, b))]:
        assert excludes_zero(d, half) == (p < 0.05)
    d, half = difference_of_two(19.0, 0.3, 20.0, 0.4)
    assert excludes_zero(d, half) == (normal_p_value(19.0, 0.3, 20.0, 0.4) < 0.05)
    # too few values: no test; no spread at all: certain either way
    assert math.isnan(paired_p_value({0: 1.0}, {0: 2.0})) and math.isnan(welch_p_value([1.0], [2.0, 3.0]))
    assert paired_p_value({0: 2.0, 1: 3.0}, {0: 1.0, 1: 2.0}) == 0.0 and welch_p_value([1.0, 1.0], [1.0, 1.0]) == 1.0


def test_holm_multiplies_the_jth_smallest_p_by_m_minus_j_plus_1_and_never_reorders():
    # by hand, m = 4 finite p: sorted 0.01 (x4 = 0.04), 0.02 (x3 = 0.06), 0.03 (x2 = 0.06), 0.04 (x1 -> max so far 0.06)
    adjusted = holm([0.03, 0.01, math.nan, 0.04, 0.02])
    assert adjusted[:2] == pytest.approx([0.06, 0.04]) and adjusted[3:] == pytest.approx([0.06, 0.06])
    assert math.isnan(adjusted[2])  # no test in that cell: not in the family (m = 4)
    assert holm([0.5, 0.9]) == [1.0, 1.0] and holm([]) == []  # capped at 1
    rng = np.random.default_rng(5)
    for _ in range(200):
        p = rng.uniform(0, 0.2, size=rng.integers(1, 12))
        adj = np.asarray(holm(list(p)))
        order = np.argsort(p)
        assert np.all(np.diff(adj[order]) >= 0)  # monotone: a smaller p never gets a larger adjusted p
        assert np.all(adj >= p) and np.all(adj <= np.minimum(1, len(p) * p) + 1e-12)  # between raw and Bonferroni
