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
checkpoint, another objective) the same interval on the per-seed differences.
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


def _symmetric_root(sigma: np.ndarray) -> np.ndarray:
    eigenvalues, vectors = np.linalg.eigh(sigma)
    return (vectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ vectors.T


@torch.no_grad()
def fid_bootstrap(features_ND: np.ndarray, reference: GaussianStats, counts_BN: np.ndarray) -> np.ndarray:
    """(B,) FID of each resample (rows weighted by their draw counts) against fixed `reference`."""
    x = np.asarray(features_ND, dtype=np.float64)
    n = len(x)
    centre = x.mean(axis=0)
    xc = torch.from_numpy((x - centre).astype(np.float32))
    root = _symmetric_root(np.atleast_2d(reference.sigma))
    mu_r, trace_r = np.atleast_1d(reference.mu), float(np.trace(reference.sigma))
    out = []
    for counts in counts_BN:
        w = torch.from_numpy(counts.astype(np.float32))
        mean_c = (w @ xc).double().numpy() / n  # resample mean, relative to the full set's
        scatter = (xc.T @ (xc * w[:, None])).double().numpy()
        sigma = (scatter - n * np.outer(mean_c, mean_c)) / (n - 1)
        diff = centre + mean_c - mu_r
        eig = np.linalg.eigvalsh(root @ sigma @ root)
        out.append(diff @ diff + np.trace(sigma) + trace_r - 2 * np.sqrt(np.clip(eig, 0, None)).sum())
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


def excludes_zero(mean: float, half_width: float) -> bool:
    """Whether the interval mean ± half_width lies entirely on one side of 0."""
    return not math.isnan(half_width) and abs(mean) > half_width


def difference_of_two(a: float, se_a: float, b: float, se_b: float, z: float = 1.96) -> tuple[float, float]:
    """a - b and its approximate 95% half-width from two independent standard errors."""
    return a - b, z * math.sqrt(se_a ** 2 + se_b ** 2)
