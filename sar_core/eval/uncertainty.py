"""How uncertain the numbers are: bootstrap standard errors of FID / IS / precision / recall over the
generated samples, and t-intervals across training seeds (plain and paired).

Bootstrap (one set of generated samples, the reference fixed). Resample the N generated rows with
replacement B times, recompute the metric, report the standard deviation over the B values (not
their mean: resampling duplicates rows, which biases FID upwards a little). This measures the noise
of the *sample draw* only; seed-to-seed training noise is usually larger (`mean_ci`).
- FID: each resample's mean and covariance from the resampled rows' counts, against the fixed
  reference statistics. The trace of the matrix root uses the symmetric form
  tr((S_r^1/2 S S_r^1/2)^1/2), whose eigenvalues are those of (S S_r)^1/2 (the same number as
  `frechet_distance`'s scipy `sqrtm`, cheaper: S_r^1/2 is computed once).
- Inception Score: recomputed on each resample (same splits); its usual "± std" is the spread over
  splits, which this is not.
- Precision / recall with *fixed radii* (the k-NN radii of the full sets): precision is the mean of
  the resampled samples' "inside the real manifold" indicators (exact: the real manifold does not
  move); recall is the share of real points inside the balls of the resampled samples (a real point
  counts if any of its covering samples is drawn; up to `metrics.COVER_K` covering samples are kept per
  real point, so a point covered more often is missed by a resample with probability < e^-32).
  Recomputing the radii on a resample would count each duplicated row as its own nearest neighbour.

Across seeds: mean ± t_{0.975, n-1} · s / sqrt(n), and for paired arms (same seed, same initial
checkpoint, another objective) the same interval on the per-seed differences; arms that cannot be
paired get Welch's interval. Two single runs can only be compared on their sample-draw noise:
a - b ± 1.96 · sqrt(se_a^2 + se_b^2), which leaves out training noise.

Each difference also gets the two-sided p-value of the same test (paired t, Welch t, normal z), so
that a table of many differences can be adjusted for multiplicity (`holm`).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from scipy import stats as scipy_stats

from sar_core.eval.metrics import Coverage, GaussianStats, inception_score


def resample_counts(n: int, resamples: int, seed: int) -> np.ndarray:
    """(B, n) how often each row is drawn in each of B resamples of n rows with replacement."""
    rng = np.random.default_rng(seed)
    return np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(resamples)])


def standard_error(values: Sequence[float]) -> float:
    return float(np.std(np.asarray(values, dtype=np.float64), ddof=1))


def _symmetric_root(sigma: torch.Tensor) -> torch.Tensor:
    eigenvalues, vectors = torch.linalg.eigh(sigma)
    return (vectors * eigenvalues.clamp_min(0).sqrt()) @ vectors.T


@torch.no_grad()
def fid_bootstrap(features_ND: np.ndarray, reference: GaussianStats, counts_BN: np.ndarray) -> np.ndarray:
    """(B,) FID of each resample (rows weighted by their draw counts) against fixed `reference`."""
    x = np.asarray(features_ND, dtype=np.float64)
    n = len(x)
    centre = x.mean(axis=0)
    xc = torch.from_numpy((x - centre).astype(np.float32))
    root = _symmetric_root(torch.from_numpy(np.atleast_2d(reference.sigma).astype(np.float64)))
    mu_r, trace_r = np.atleast_1d(reference.mu), float(np.trace(reference.sigma))
    out = []
    for counts in counts_BN:
        w = torch.from_numpy(counts.astype(np.float32))
        mean_c = (w @ xc).double() / n  # the resample's mean, relative to the full set's
        sigma = ((xc.T @ (xc * w[:, None])).double() - n * torch.outer(mean_c, mean_c)) / (n - 1)
        diff = centre + mean_c.numpy() - mu_r
        eig = torch.linalg.eigvalsh(root @ sigma @ root).clamp_min(0)
        out.append(diff @ diff + float(sigma.trace()) + trace_r - 2 * float(eig.sqrt().sum()))
    return np.asarray(out)


def inception_score_bootstrap(logits_NK: np.ndarray, counts_BN: np.ndarray, splits: int) -> np.ndarray:
    rows = np.arange(len(logits_NK))
    return np.asarray([inception_score(np.asarray(logits_NK)[np.repeat(rows, c)], splits) for c in counts_BN])


def precision_recall_bootstrap(coverage: Coverage, counts_BN: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B,) precision and (B,) recall of each resample of the generated samples, radii fixed."""
    n = len(coverage.sample_inside)
    precision = counts_BN @ coverage.sample_inside.astype(np.float64) / n
    valid = coverage.real_covered_by >= 0
    safe = np.where(valid, coverage.real_covered_by, 0)
    recall = np.asarray([((counts[safe] > 0) & valid).any(axis=1).mean() for counts in counts_BN])
    return precision, recall


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, int]:
    """(mean, half-width of the t-interval, n); the half-width is nan below two values."""
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    n = len(x)
    if n == 0:
        return math.nan, math.nan, 0
    if n < 2:
        return float(x.mean()), math.nan, n
    t = scipy_stats.t.ppf(0.5 + level / 2, n - 1)
    return float(x.mean()), float(t * x.std(ddof=1) / math.sqrt(n)), n


def paired_difference(arm: dict, baseline: dict, level: float = 0.95) -> tuple[float, float, int]:
    """Mean and t-interval of arm[k] - baseline[k] over the pairing keys k both have (e.g. seeds)."""
    keys = [k for k in arm if k in baseline]
    return mean_ci([arm[k] - baseline[k] for k in keys], level)


def _welch(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """mean(a) - mean(b), its standard error and Welch's degrees of freedom (nan below two values a side)."""
    d = float(a.mean() - b.mean()) if len(a) and len(b) else math.nan
    if len(a) < 2 or len(b) < 2:
        return d, math.nan, math.nan
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    if va + vb == 0:
        return d, 0.0, math.inf
    return d, math.sqrt(va + vb), (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))


def unpaired_difference(arm: Sequence[float], baseline: Sequence[float], level: float = 0.95) -> tuple[float, float, int]:
    """mean(arm) - mean(baseline) and its Welch t-interval (arms that share no seeds or checkpoint)."""
    a, b = np.asarray(arm, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    d, se, df = _welch(a, b)
    half = se if se == 0 or math.isnan(se) else float(scipy_stats.t.ppf(0.5 + level / 2, df) * se)
    return d, half, min(len(a), len(b))


def excludes_zero(mean: float, half_width: float) -> bool:
    """Whether the interval mean ± half_width lies entirely on one side of 0."""
    return not math.isnan(half_width) and abs(mean) > half_width


def difference_of_two(a: float, se_a: float, b: float, se_b: float, z: float = 1.96) -> tuple[float, float]:
    """a - b and its approximate 95% half-width from two independent standard errors."""
    return a - b, z * math.sqrt(se_a ** 2 + se_b ** 2)


# -- p-values on the same bases as the intervals, and Holm's adjustment over a family ---------------

def t_p_value(mean: float, standard_error: float, df: float) -> float:
    """Two-sided p of `mean` under "the true value is 0", with a t of `df` degrees of freedom
    (df = inf: the normal); a zero standard error gives 0 (any nonzero mean) or 1; nan when unknown."""
    if math.isnan(mean) or math.isnan(standard_error) or math.isnan(df):
        return math.nan
    if standard_error == 0:
        return 1.0 if mean == 0 else 0.0
    return float(2 * scipy_stats.t.sf(abs(mean / standard_error), df))


def paired_p_value(arm: dict, baseline: dict) -> float:
    """p of the paired t-test of arm[k] - baseline[k] over the keys both have (`paired_difference`'s basis)."""
    d = np.asarray([arm[k] - baseline[k] for k in arm if k in baseline], dtype=np.float64)
    if len(d) < 2:
        return math.nan
    return t_p_value(float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d))), len(d) - 1)


def welch_p_value(arm: Sequence[float], baseline: Sequence[float]) -> float:
    """p of Welch's t-test of mean(arm) - mean(baseline) (`unpaired_difference`'s basis)."""
    return t_p_value(*_welch(np.asarray(arm, dtype=np.float64), np.asarray(baseline, dtype=np.float64)))


def normal_p_value(a: float, se_a: float, b: float, se_b: float) -> float:
    """p of the z-test of a - b from two independent standard errors (`difference_of_two`'s basis)."""
    return t_p_value(a - b, math.sqrt(se_a ** 2 + se_b ** 2), math.inf)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the given order: the j-th smallest of the m finite p
    becomes max over i <= j of min(1, (m - i + 1) p_(i)). A cell is significant at level a over the
    family iff its adjusted p < a (family-wise error <= a). nan stays nan and is not counted in m."""
    finite = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    m, out, running = len(finite), [math.nan] * len(p_values), 0.0
    for j, (p, i) in enumerate(finite):
        running = max(running, min(1.0, (m - j) * p))
        out[i] = running
    return out
