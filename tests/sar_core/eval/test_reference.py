"""Real reference features (cached) and the Fashion-MNIST floor: real test vs real train."""
import numpy as np
import pytest
import torch

from sar_core.data.fashion_mnist import FashionMNISTConfig
from sar_core.eval import reference as R
from sar_core.eval.config import MetricConfig
from sar_core.eval.export import save_samples_npz
from sar_core.eval.features import extract_features
from sar_core.eval.metrics import GaussianStats


def test_split_features_are_seeded_and_cached(fmnist_classifier, data_cache_dir, monkeypatch):
    data = FashionMNISTConfig()
    a, desc = R.split_features(fmnist_classifier, data, "test", 300, seed=0, image_size=28)
    assert a.features.shape == (300, 256) and desc == "fashion_mnist/test[n=300,seed=0]"
    monkeypatch.setattr(R, "extract_features", lambda *a, **k: pytest.fail("recomputed cached features"))
    b, _ = R.split_features(fmnist_classifier, data, "test", 300, seed=0, image_size=28)
    np.testing.assert_array_equal(a.features, b.features)
    monkeypatch.undo()
    c, _ = R.split_features(fmnist_classifier, data, "test", 300, seed=1, image_size=28)
    assert not np.array_equal(a.features, c.features)


def test_padded_images_score_like_the_originals(fmnist_classifier, data_cache_dir):
    plain, _ = R.split_features(fmnist_classifier, FashionMNISTConfig(), "test", 64, 0, image_size=28)
    padded, _ = R.split_features(fmnist_classifier, FashionMNISTConfig(resize_mode="pad"), "test", 64, 0, image_size=32)
    resized, _ = R.split_features(fmnist_classifier, FashionMNISTConfig(resize_mode="resize"), "test", 64, 0, image_size=32)
    np.testing.assert_allclose(plain.features, padded.features, atol=1e-5)  # the crop undoes the padding exactly
    assert not np.allclose(plain.features, resized.features, atol=1e-3)


def test_reference_npz_with_and_without_precomputed_statistics(fmnist_classifier, data_cache_dir, tmp_path):
    images, _ = FashionMNISTConfig().load("test", limit=120)
    plain = tmp_path / "ref.npz"
    save_samples_npz(plain, images)
    metrics = MetricConfig(num_samples=100, reference=str(plain))
    ref = R.real_reference(fmnist_classifier, metrics, FashionMNISTConfig(), 28)
    assert ref.features.features.shape == (120, 256) and ref.description.startswith("npz:ref.npz[n=120,sha256=")
    direct = extract_features(fmnist_classifier, [images])
    np.testing.assert_allclose(ref.stats.mu, direct.features.mean(0), rtol=1e-5, atol=1e-6)
    with_stats = tmp_path / "ref_stats.npz"
    mu, sigma = np.arange(256.0), np.eye(256) * 2
    np.savez(with_stats, arr_0=np.load(plain)["arr_0"], mu=mu, sigma=sigma)
    ref2 = R.real_reference(fmnist_classifier, MetricConfig(num_samples=100, reference=str(with_stats)), FashionMNISTConfig(), 28)
    np.testing.assert_array_equal(ref2.stats.mu, mu)  # the file's statistics win, as in the ADM evaluator
    np.testing.assert_array_equal(ref2.stats.sigma, sigma)


def test_the_floor_is_low_and_degraded_images_score_worse(fmnist_classifier, data_cache_dir):
    n = 1000
    floor = R.real_floor(fmnist_classifier, FashionMNISTConfig(), n, image_size=28, metrics=MetricConfig(num_samples=n))
    print(f"\nFashion-MNIST floor at N={n}: " + ", ".join(f"{k}={v:.4f}" for k, v in floor.items() if isinstance(v, float)))
    assert floor["precision"] > 0.6 and floor["recall"] > 0.6 and floor["is"] > 4.0
    x, _ = FashionMNISTConfig().load("test", limit=n)
    noisy = (x + 0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    fake = extract_features(fmnist_classifier, noisy.split(500))
    real, _ = R.split_features(fmnist_classifier, FashionMNISTConfig(), "train", n, 0, image_size=28)
    worse = R.score(fake, R.RealReference("train", real, GaussianStats.from_features(real.features)), MetricConfig(num_samples=n))
    assert worse["fid"] > 3 * floor["fid"] and worse["precision"] < floor["precision"]


def test_pr_k_and_is_splits_change_the_scores(fmnist_classifier, data_cache_dir):
    fake, _ = R.split_features(fmnist_classifier, FashionMNISTConfig(), "test", 500, 0, image_size=28)
    real_feats, _ = R.split_features(fmnist_classifier, FashionMNISTConfig(), "train", 500, 0, image_size=28)
    real = R.RealReference("train", real_feats, GaussianStats.from_features(real_feats.features))
    base = R.score(fake, real, MetricConfig(num_samples=500))
    more_k = R.score(fake, real, MetricConfig(num_samples=500, pr_k=10))
    fewer_splits = R.score(fake, real, MetricConfig(num_samples=500, is_splits=1))
    assert more_k["recall"] > base["recall"] and more_k["precision"] >= base["precision"]  # bigger balls
    assert fewer_splits["is"] != base["is"] and fewer_splits["fid"] == base["fid"]


def test_num_reference_and_reference_split(fmnist_classifier, data_cache_dir):
    same_n = R.real_reference(fmnist_classifier, MetricConfig(num_samples=150, reference="test"), FashionMNISTConfig(), 28)
    more = R.real_reference(fmnist_classifier, MetricConfig(num_samples=150, num_reference=400, reference="test"),
                            FashionMNISTConfig(), 28)
    train = R.real_reference(fmnist_classifier, MetricConfig(num_samples=150, reference="train"), FashionMNISTConfig(), 28)
    assert same_n.description == "fashion_mnist/test[n=150,seed=0]" and len(same_n.features) == 150
    assert more.description == "fashion_mnist/test[n=400,seed=0]" and len(more.features) == 400
    assert train.description.startswith("fashion_mnist/train") and not np.allclose(train.stats.mu, same_n.stats.mu)
