"""The metric maths against independent formulations (scipy eigen-decomposition FID, prdc
precision/recall, the ADM evaluator's probability-space IS) on the same feature arrays."""

import numpy as np
import pytest
import torch
from prdc import compute_prdc
from scipy import linalg

from sar_core.eval import metrics as M


def correlated_features(n, d, seed, shift=0.0):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    return (rng.normal(size=(n, d)) @ mix + shift).astype(np.float32)


def fid_by_eigenvalues(x, y):
    """Tr sqrt(S1 S2) = sum sqrt(eig(sqrt(S1) S2 sqrt(S1))), all symmetric: no sqrtm of S1 S2."""
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x.astype(np.float64), rowvar=False), np.cov(y.astype(np.float64), rowvar=False)
    w, v = linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    tr_covmean = np.sqrt(np.clip(linalg.eigvalsh(root1 @ s2 @ root1), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def test_fid_matches_an_eigenvalue_formulation():
    x, y = correlated_features(3000, 48, 0), correlated_features(2500, 48, 1, shift=0.3)
    ours = M.frechet_distance(M.GaussianStats.from_features(x), M.GaussianStats.from_features(y))
    assert ours == pytest.approx(fid_by_eigenvalues(x, y), rel=1e-3)
    assert ours > 1.0
    same = M.frechet_distance(M.GaussianStats.from_features(x), M.GaussianStats.from_features(x))
    assert abs(same) < 1e-6


def test_fid_retries_with_eps_when_the_product_has_no_square_root():
    # diag(1, 0) @ [[0, 1], [1, 20]] = [[0, 1], [0, 0]], which has no matrix square root; with 0.1
    # added to both diagonals the product has real eigenvalues > 0, so the retried root is real
    s1, s2, eps = np.diag([1.0, 0.0]), np.array([[0.0, 1.0], [1.0, 20.0]]), 0.1
    a, b = M.GaussianStats(np.zeros(2), s1), M.GaussianStats(np.array([0.5, 0.0]), s2)
    with pytest.warns(UserWarning, match="singular covariance product; adding 0.1"):
        fid = M.frechet_distance(a, b, eps=eps)
    offset = np.eye(2) * eps
    eigenvalues = np.linalg.eigvals((s1 + offset) @ (s2 + offset))
    assert np.isreal(eigenvalues).all() and (eigenvalues.real > 0).all()
    # Tr sqrt(M) = sum sqrt(eig(M)); the traces of the covariances themselves are not offset
    assert fid == pytest.approx(0.25 + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(eigenvalues.real).sum(), rel=1e-9)


def test_fid_reports_a_retried_root_that_is_still_complex():
    # diag(1, 0) @ [[0, 1], [1, 0]] = [[0, 1], [0, 0]]; offset by 1e-6 the product has a negative eigenvalue
    a = M.GaussianStats(np.zeros(2), np.diag([1.0, 0.0]))
    b = M.GaussianStats(np.zeros(2), np.array([[0.0, 1.0], [1.0, 0.0]]))
    with pytest.warns(UserWarning, match="singular"), pytest.raises(ValueError, match="imaginary"):
        M.frechet_distance(a, b)


def test_fid_rejects_a_significantly_complex_root():
    a = M.GaussianStats(np.zeros(2), np.eye(2))
    b = M.GaussianStats(np.zeros(2), -np.eye(2))  # product -I: its root is i*I
    with pytest.raises(ValueError, match="imaginary"):
        M.frechet_distance(a, b)


def test_streaming_statistics_equal_numpy_on_the_concatenation():
    x = correlated_features(1001, 16, 3, shift=1e4)  # a large offset: naive sum-of-squares would lose digits
    acc = M.StreamingGaussian()
    for chunk in np.array_split(x, [1, 2, 300, 301, 777]):
        acc.update(chunk)
    stats = acc.stats()
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(stats.mu, x64.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.sigma, np.cov(x64, rowvar=False), rtol=1e-9, atol=1e-9)
    assert stats.count == 1001


def inception_score_in_probability_space(logits, splits):
    """The ADM evaluator's formula, on softmax probabilities."""
    p = torch.softmax(torch.as_tensor(logits, dtype=torch.float64), 1).numpy()
    scores = []
    for part in np.array_split(p, splits):
        kl = part * (np.log(part) - np.log(part.mean(0, keepdims=True)))
        scores.append(np.exp(kl.sum(1).mean()))
    return float(np.mean(scores))


def test_inception_score_matches_the_probability_space_formula():
    logits = np.random.default_rng(0).normal(scale=3.0, size=(1000, 10)).astype(np.float32)
    assert M.inception_score(logits, 10) == pytest.approx(inception_score_in_probability_space(logits, 10), rel=1e-6)


def test_inception_score_limits_and_unshuffled_splits():
    k = 10
    confident = np.eye(k)[np.arange(1000) % k] * 50.0  # sure and perfectly balanced: IS -> K
    assert M.inception_score(confident, 10) == pytest.approx(k, rel=1e-6)
    assert M.inception_score(np.zeros((100, k)), 10) == pytest.approx(1.0)
    # Splits are contiguous: sorting by class puts one class in each split, so each split's p(y) is
    # peaked and IS collapses to 1; with one split the order does not matter.
    by_class = confident[np.argsort(np.arange(1000) % k, kind="stable")]
    assert M.inception_score(by_class, 10) == pytest.approx(1.0, abs=1e-6)
    assert M.inception_score(by_class, 1) == pytest.approx(M.inception_score(confident, 1))


def test_precision_recall_match_prdc_on_the_same_features():
    real = correlated_features(700, 24, 4)
    fake = correlated_features(500, 24, 5, shift=0.35)
    ref = compute_prdc(real, fake, nearest_k=3)
    p, r = M.precision_recall(real, fake, k=3, block_size=128)
    assert p == pytest.approx(ref["precision"], rel=1e-3)
    assert r == pytest.approx(ref["recall"], rel=1e-3)
    assert 0.05 < p < 0.95 and 0.05 < r < 0.95  # a shift that leaves both informative


def test_block_size_changes_memory_not_results(monkeypatch):
    real, fake = correlated_features(300, 8, 6), correlated_features(250, 8, 7, shift=0.2)
    shapes = []
    original = M.squared_distances

    def spy(u, v):
        shapes.append((len(u), len(v)))
        return original(u, v)

    monkeypatch.setattr(M, "squared_distances", spy)
    small = M.precision_recall(real, fake, k=3, block_size=64)
    assert max(a * b for a, b in shapes) <= 64 * 64  # never a 300 x 300 or 300 x 250 matrix
    shapes.clear()
    large = M.precision_recall(real, fake, k=3, block_size=1000)
    assert max(a * b for a, b in shapes) == 300 * 300
    assert small == large


def test_radius_is_kth_neighbour_excluding_self_and_balls_are_closed():
    # 1-D points on a line; squared distances are exact small integers, so ties are exact.
    real = np.array([[0.0], [1.0], [2.0], [10.0], [12.0]], dtype=np.float32)
    radii = M.manifold_radii(real, k=1, block_size=3)
    np.testing.assert_array_equal(radii, [1.0, 1.0, 1.0, 4.0, 4.0])  # self excluded, squared distances
    fake = np.array([[3.0], [11.0], [20.0]], dtype=np.float32)
    # 3 is at squared distance 1 from 2 (radius 1): inside, because balls are closed (<=).
    # 11 is inside 10's ball (radius 4); 20 is 64 away from 12 (radius 4): outside.
    fake_radii = M.manifold_radii(fake, k=1)
    p, _ = M.manifold_coverage(real, radii, fake, fake_radii, block_size=2)
    assert p == pytest.approx(2 / 3)
    strict = compute_prdc(real, fake, nearest_k=1)["precision"]  # prdc uses <: the tie at 3 drops out
    assert strict == pytest.approx(1 / 3)


def test_duplicates_give_zero_radius_not_the_self_distance():
    x = np.array([[0.0, 0.0], [0.0, 0.0], [3.0, 4.0]], dtype=np.float32)
    np.testing.assert_allclose(M.manifold_radii(x, k=1), [0.0, 0.0, 25.0])
