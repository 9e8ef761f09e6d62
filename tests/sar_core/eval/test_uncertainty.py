"""Standard errors that mean what they say: the bootstrap over generated samples predicts how much a
metric moves when the samples are drawn again, and the seed-level intervals cover the truth at the
rate they claim (seeded simulations with a known answer)."""
import math

import numpy as np
import pytest

from sar_core.eval.metrics import (GaussianStats, coverage, frechet_distance, inception_score, manifold_radii,
                                   precision_recall)
from sar_core.eval.uncertainty import (excludes_zero, fid_bootstrap, inception_score_bootstrap, mean_ci,
                                       paired_difference, precision_recall_bootstrap, resample_counts, standard_error)

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
