"""The Fashion-MNIST feature network: accuracy, caching by content hash, determinism."""
import dataclasses
import gzip
import json
import shutil

import pytest
import torch

from sar_core import paths
from sar_core.data import fashion_mnist as fm
from sar_core.data.fashion_mnist import FashionMNISTConfig
from sar_core.eval import fmnist_classifier as C


def test_the_shipped_classifier_is_the_default_recipes_and_reaches_93_percent(fmnist_classifier):
    shipped = C.SHIPPED_DIR / C.classifier_path(C.ClassifierRecipe(), FashionMNISTConfig()).name
    assert shipped.is_file(), "the default recipe changed: ship the network it trains (see fmnist_classifier.py)"
    assert fmnist_classifier.info["recipe"] == json.loads(json.dumps(dataclasses.asdict(C.ClassifierRecipe())))
    x, y = FashionMNISTConfig().load("test")
    acc = C.accuracy(fmnist_classifier, x, y)
    assert acc >= 0.93
    assert fmnist_classifier.info["test_accuracy"] == pytest.approx(acc)
    print(f"\nFashion-MNIST classifier: test accuracy {acc:.4f}, trained in {fmnist_classifier.info['train_seconds']} s "
          f"on {fmnist_classifier.info['threads']} threads")


def test_features_and_logits(fmnist_classifier):
    x, _ = FashionMNISTConfig().load("test", limit=8)
    feats, logits = fmnist_classifier(x)
    assert feats.shape == (8, 256) and logits.shape == (8, 10)
    torch.testing.assert_close(logits, fmnist_classifier.head(feats))  # features are the penultimate layer
    with pytest.raises(ValueError, match="28, 28"):
        fmnist_classifier(torch.zeros(2, 1, 32, 32))
    assert fmnist_classifier.fingerprint.startswith("fmnist-classifier:")


def test_later_loads_come_from_the_cache(data_cache_dir, fmnist_classifier, monkeypatch):
    monkeypatch.setattr(C, "train_classifier", lambda *a, **k: pytest.fail("retrained a cached classifier"))
    again = C.load_classifier(cache_dir=data_cache_dir)
    assert again.fingerprint == fmnist_classifier.fingerprint


def test_the_cache_key_follows_data_and_recipe(tmp_path):
    default = C.cache_key(C.ClassifierRecipe(), FashionMNISTConfig())
    assert C.cache_key(C.ClassifierRecipe(seed=1), FashionMNISTConfig()) != default
    assert C.cache_key(C.ClassifierRecipe(train_images=1000), FashionMNISTConfig()) != default
    # The same data recompressed is the same data; one changed label is not.
    shutil.copytree(paths.DEBIAN_FASHION_MNIST, tmp_path / "copy")
    labels = tmp_path / "copy" / fm.FILES["test"][1]
    raw = gzip.decompress(labels.read_bytes())
    labels.write_bytes(gzip.compress(raw, compresslevel=1))
    assert C.cache_key(C.ClassifierRecipe(), FashionMNISTConfig(root=str(tmp_path / "copy"))) == default
    labels.write_bytes(gzip.compress(raw[:-1] + bytes([(raw[-1] + 1) % 10])))
    assert C.cache_key(C.ClassifierRecipe(), FashionMNISTConfig(root=str(tmp_path / "copy"))) != default


def test_training_is_deterministic_given_the_seed():
    tiny = dict(widths=(2, 2, 2), hidden=8, epochs=2, batch_size=512, train_images=2048)
    a, info = C.train_classifier(C.ClassifierRecipe(**tiny), progress=False)
    b, _ = C.train_classifier(C.ClassifierRecipe(**tiny), progress=False)
    c, _ = C.train_classifier(C.ClassifierRecipe(**tiny, seed=1), progress=False)
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert 0.1 < info["test_accuracy"] < 1.0
