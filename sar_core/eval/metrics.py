"""FID, Inception Score and improved precision/recall, computed the way the standard ADM evaluator
(guided-diffusion `evaluations/evaluator.py`, used by VAR / FlexVAR / DiT) computes them.

Everything here takes features and logits from some feature network (Inception-v3 pool-3 for
ImageNet, the Fashion-MNIST classifier's penultimate layer for the embedded default), so the maths
is independent of the network:

- FID: mean and `np.cov(rowvar=False)` of each feature set; Frechet distance with
  `scipy.linalg.sqrtm(s1 @ s2)`; when that product is singular (non-finite root) the root is
  retried with eps = 1e-6 added to both diagonals; a complex root is accepted only if the imaginary
  part of its diagonal is ~0 (atol 1e-3) and then its real part is used.
- Inception Score: softmax of the logits, contiguous splits in sample order (no shuffling), the
  exp of the mean KL(p(y|x) || p(y)) per split, averaged over splits. The ADM evaluator splits 50k
  samples into 10 splits of 5,000; `splits` keeps that meaning for other sample counts.
- Precision / recall (Kynkaanniemi et al. 2019): every point's radius is the squared Euclidean
  distance to its k-th nearest neighbour in its own set, itself excluded (k = 3); a point lies on
  the other set's manifold if its squared distance to some point of that set is <= that point's
  radius. Precision = fraction of samples on the real manifold, recall = fraction of real points
  on the sample manifold.

Memory (N samples, M real points, D feature dims, block size b; measured figures in docs/benchmarks.md):
- features are held once as float32: 4 (N + M) D bytes (50k x 2048: 410 MB per set);
- `GaussianStats` is O(D^2) float64 (2048: 34 MB); streaming both sets' statistics and the sqrtm
  adds complex D x D temporaries;
- k-NN distances are computed in b x b blocks and never as an N x M or N x N matrix: the working
  set is one float32 distance block and its temporaries (comparison masks, top-k), plus O((N + M) k)
  for the running nearest neighbours. The ADM evaluator uses 10k x 10k blocks (and float16
  distances with a float32 fallback; here distances are float32 throughout);
- the Inception Score works one split at a time in float64.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from scipy import linalg


@dataclass(frozen=True)
class GaussianStats:
    """Mean (D,) and covariance (D, D) of a feature set, as the FID compares them."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int = 0  # how many feature vectors they summarise (0: unknown, e.g. read from a file)

    @classmethod
    def from_features(cls, features_ND: np.ndarray) -> "GaussianStats":
        x = np.asarray(features_ND, dtype=np.float64)
        if x.ndim != 2 or len(x) < 2:
            raise ValueError(f"need at least two feature vectors of shape (N, D), got {x.shape}")
        return cls(x.mean(axis=0), np.cov(x, rowvar=False), len(x))


class StreamingGaussian:
    """Mean and covariance accumulated batch by batch in float64 (Chan et al.'s pairwise update).

    Equals `GaussianStats.from_features` on the concatenated batches (to rounding) while holding
    only O(D^2) numbers, so reference statistics of a million images need no feature matrix.
    """

    def __init__(self):
        self.count = 0
        self.mean: np.ndarray | None = None
        self.scatter: np.ndarray | None = None  # sum of outer products of centred vectors

    def update(self, features_BD: np.ndarray | torch.Tensor) -> "StreamingGaussian":
        x = torch.as_tensor(features_BD).detach().cpu().double().numpy()
        if x.ndim != 2 or len(x) == 0:
            raise ValueError(f"expected a non-empty (B, D) batch, got shape {x.shape}")
        n_b, mean_b = len(x), x.mean(axis=0)
        centred = x - mean_b
        scatter_b = centred.T @ centred
        if self.mean is None:
            self.count, self.mean, self.scatter = n_b, mean_b, scatter_b
            return self
        n = self.count + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.scatter = self.scatter + scatter_b + np.outer(delta, delta) * (self.count * n_b / n)
        self.count = n
        return self

    def stats(self) -> GaussianStats:
        if self.count < 2:
            raise ValueError(f"a covariance needs at least two feature vectors, got {self.count}")
        return GaussianStats(self.mean.copy(), self.scatter / (self.count - 1), self.count)


def _sqrtm(m: np.ndarray) -> np.ndarray:
    """scipy.linalg.sqrtm without its accuracy chatter (the caller checks finiteness itself);
    older SciPy returns (root, error estimate) with disp=False, newer deprecates disp."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        root = linalg.sqrtm(m)
    return root[0] if isinstance(root, tuple) else root


def frechet_distance(a: GaussianStats, b: GaussianStats, eps: float = 1e-6) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)), with the ADM evaluator's safeguards."""
    mu1, mu2 = np.atleast_1d(a.mu), np.atleast_1d(b.mu)
    s1, s2 = np.atleast_2d(a.sigma), np.atleast_2d(b.sigma)
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise ValueError(f"feature statistics differ in shape: mean {mu1.shape} vs {mu2.shape}, cov {s1.shape} vs {s2.shape}")
    diff = mu1 - mu2
    covmean = _sqrtm(s1.dot(s2))
    if not np.isfinite(covmean).all():
        warnings.warn(f"FID: singular covariance product; adding {eps} to both diagonals")
        offset = np.eye(s1.shape[0]) * eps
        covmean = _sqrtm((s1 + offset).dot(s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: the matrix square root has a significant imaginary part ({np.abs(covmean.imag).max():.3g})")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def inception_score(logits_NK: np.ndarray | torch.Tensor, splits: int = 10) -> float:
    """Mean over `splits` contiguous splits of exp(E_x KL(p(y|x) || p(y))), from logits.

    Works in log space (log_softmax) so that a saturated softmax cannot produce log(0), one split
    at a time in float64 (memory: the float32 logits plus ~3 float64 copies of one split)."""
    logits = torch.as_tensor(np.asarray(logits_NK))
    n = logits.shape[0]
    if logits.ndim != 2 or n < splits or splits < 1:
        raise ValueError(f"inception_score needs (N, K) logits with N >= splits >= 1, got {tuple(logits.shape)} and splits={splits}")
    scores = []
    for i in range(splits):
        part = torch.log_softmax(logits[i * n // splits : (i + 1) * n // splits].double(), dim=1)
        log_py = torch.logsumexp(part, dim=0) - np.log(len(part))  # log of the split's mean p(y)
        kl = (part.exp() * (part - log_py)).sum(dim=1).mean()
        scores.append(float(kl.exp()))
    return float(np.mean(scores))


def squared_distances(u_BD: torch.Tensor, v_CD: torch.Tensor) -> torch.Tensor:
    """(B, C) squared Euclidean distances, ||u||^2 - 2 u.v + ||v||^2 clamped at 0 (float32)."""
    d = (u_BD * u_BD).sum(1, keepdim=True) - 2 * u_BD @ v_CD.T + (v_CD * v_CD).sum(1)[None]
    return d.clamp_min_(0)


def _as_tensor(features: np.ndarray | torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(features)
    if x.ndim != 2:
        raise ValueError(f"features must be (N, D), got {tuple(x.shape)}")
    return x.float()


def _blocks(n: int, size: int):
    return [(s, min(s + size, n)) for s in range(0, n, size)]


@torch.no_grad()
def manifold_radii(features_ND, k: int = 3, block_size: int = 5000, device: str | torch.device = "cpu") -> np.ndarray:
    """(N,) squared distance of every point to its k-th nearest neighbour, itself excluded.

    Rows and columns are visited in blocks; each row keeps a running top-k of the smallest
    distances, so memory is one block_size^2 float32 block plus (N, k)."""
    x = _as_tensor(features_ND)
    n = len(x)
    if not 1 <= k < n:
        raise ValueError(f"k-th nearest neighbour needs 1 <= k < N, got k={k}, N={n}")
    radii = torch.empty(n, dtype=torch.float32)
    for r0, r1 in _blocks(n, block_size):
        rows = x[r0:r1].to(device)
        best = torch.full((r1 - r0, k), float("inf"), device=device)
        for c0, c1 in _blocks(n, block_size):
            d = squared_distances(rows, x[c0:c1].to(device))
            if c0 < r1 and r0 < c1:  # the block holds some points' distances to themselves
                i = torch.arange(max(r0, c0), min(r1, c1), device=device)
                d[i - r0, i - c0] = float("inf")
            nearest = d.topk(min(k, c1 - c0), dim=1, largest=False).values
            best = torch.cat([best, nearest], dim=1).topk(k, dim=1, largest=False).values
        radii[r0:r1] = best[:, k - 1].cpu()
    return radii.numpy()


COVER_K = 32
"""Generated samples kept per real point that cover it (for the recall bootstrap, uncertainty.py)."""


@dataclass(frozen=True)
class Coverage:
    """Who lies in whose k-NN ball: precision and recall, and what their bootstrap needs."""

    sample_inside: np.ndarray  # (N,) bool: generated sample i lies inside some real point's ball
    real_covered_by: np.ndarray  # (M, COVER_K) int: generated samples whose ball holds real point m (-1: none)

    @property
    def precision(self) -> float:
        return float(self.sample_inside.mean())

    @property
    def recall(self) -> float:
        return float((self.real_covered_by >= 0).any(axis=1).mean())


@torch.no_grad()
def coverage(real_MD, real_radii_M, fake_ND, fake_radii_N, block_size: int = 5000,
             device: str | torch.device = "cpu") -> Coverage:
    """One blocked pass over real x fake distances: each sample inside the real manifold or not,
    and for each real point up to COVER_K samples whose balls hold it."""
    real, fake = _as_tensor(real_MD), _as_tensor(fake_ND)
    r_real = torch.as_tensor(real_radii_M, dtype=torch.float32)
    r_fake = torch.as_tensor(fake_radii_N, dtype=torch.float32)
    fake_in = torch.zeros(len(fake), dtype=torch.bool)
    cover = torch.full((len(real), COVER_K), -1, dtype=torch.long)
    for r0, r1 in _blocks(len(real), block_size):
        rb, rr = real[r0:r1].to(device), r_real[r0:r1].to(device)
        depth = torch.full((r1 - r0, COVER_K), float("-inf"), device=device)  # how far inside; -inf: not
        index = torch.full((r1 - r0, COVER_K), -1, dtype=torch.long, device=device)
        for f0, f1 in _blocks(len(fake), block_size):
            d = squared_distances(rb, fake[f0:f1].to(device))  # (real block, fake block)
            fake_in[f0:f1] |= (d <= rr[:, None]).any(dim=0).cpu()
            margin = r_fake[f0:f1].to(device)[None] - d
            margin = margin.masked_fill(margin < 0, float("-inf"))
            k = min(COVER_K, f1 - f0)
            top, idx = margin.topk(k, dim=1)
            depth, pick = torch.cat([depth, top], 1).topk(COVER_K, dim=1)
            index = torch.cat([index, idx + f0], 1).gather(1, pick)
        cover[r0:r1] = torch.where(torch.isinf(depth), -1, index).cpu()
    return Coverage(fake_in.numpy(), cover.numpy())


def manifold_coverage(
    real_MD, real_radii_M, fake_ND, fake_radii_N, block_size: int = 5000, device: str | torch.device = "cpu"
) -> tuple[float, float]:
    """(precision, recall) given both sets and their radii."""
    c = coverage(real_MD, real_radii_M, fake_ND, fake_radii_N, block_size, device)
    return c.precision, c.recall


def precision_recall(
    real_MD, fake_ND, k: int = 3, block_size: int = 5000, device: str | torch.device = "cpu"
) -> tuple[float, float]:
    """Improved precision and recall of `fake` against `real` (Kynkaanniemi et al. 2019)."""
    real_radii = manifold_radii(real_MD, k, block_size, device)
    fake_radii = manifold_radii(fake_ND, k, block_size, device)
    return manifold_coverage(real_MD, real_radii, fake_ND, fake_radii, block_size, device)
