"""Fixtures for the evaluation tests: a fresh data cache and the Fashion-MNIST classifier.

The default classifier ships with the project (sar_core/eval/weights), so nothing is trained here;
everything else the tests cache (reference features) goes to a fresh folder per session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from sar_core.eval.fmnist_classifier import load_classifier


@pytest.fixture(scope="session")
def data_cache_dir(tmp_path_factory) -> Path:
    """SAR_DATA_CACHE for the session: an empty folder."""
    folder = tmp_path_factory.mktemp("sar-data-cache")
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
