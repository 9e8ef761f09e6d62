"""Fixtures for the evaluation tests: a data cache and the trained Fashion-MNIST classifier.

The classifier is trained at most once per test session, and in fact once per checkout: its
cache entry (content-addressed by data + recipe, see sar_core.eval.fmnist_classifier) lives in
pytest's own cache folder (.pytest_cache/d/sar-data-cache), since training it takes CPU-minutes.
Everything else the tests cache goes to a fresh temporary SAR_DATA_CACHE per session, which gets a
copy of the classifier entry so that code looking the classifier up by key finds it.

Other test packages (the platform's) can reuse `classifier_cache(config, tmp_path_factory)`.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from sar_core.data.fashion_mnist import FashionMNISTConfig
from sar_core.eval.fmnist_classifier import ClassifierRecipe, classifier_path, load_classifier


def classifier_cache(config: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh data-cache folder holding the trained default classifier (trained on first use)."""
    persistent = Path(config.cache.mkdir("sar-data-cache")) if config.cache is not None else tmp_path_factory.mktemp("persistent")
    load_classifier(cache_dir=persistent, progress=False)  # trains and caches only when missing
    fresh = tmp_path_factory.mktemp("sar-data-cache")
    source = classifier_path(ClassifierRecipe(), FashionMNISTConfig(), persistent)
    target = classifier_path(ClassifierRecipe(), FashionMNISTConfig(), fresh)
    target.parent.mkdir(parents=True)
    shutil.copyfile(source, target)
    return fresh


@pytest.fixture(scope="session")
def data_cache_dir(request, tmp_path_factory) -> Path:
    """SAR_DATA_CACHE for the session, with the trained classifier in it."""
    folder = classifier_cache(request.config, tmp_path_factory)
    previous = os.environ.get("SAR_DATA_CACHE")
    os.environ["SAR_DATA_CACHE"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("SAR_DATA_CACHE", None)
    else:
        os.environ["SAR_DATA_CACHE"] = previous


@pytest.fixture(scope="session")
def fmnist_classifier(data_cache_dir):
    return load_classifier(cache_dir=data_cache_dir, train=False)
