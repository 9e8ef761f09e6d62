"""Where sar-platform keeps files on a machine, and the environment variables that move them.

    $SAR_CACHE        local copies of remote (s3://) workspace files, under storage/
                      (default ~/.cache/sar-platform)
    $SAR_DATA_CACHE   data and what is derived from it: downloaded Fashion-MNIST, trained metric
                      classifiers, real reference features, downloaded network weights
                      (default ~/.cache/sar-platform/data)
    $SAR_DATA_ROOT    a folder that already holds the four Fashion-MNIST .gz files
    /usr/share/datasets/fashion-mnist   the Debian/Ubuntu package `dataset-fashion-mnist`

The two caches are set independently: moving the storage cache never orphans trained classifiers
or reference features.
"""
from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "SAR_CACHE"
DATA_CACHE_ENV = "SAR_DATA_CACHE"
DATA_ROOT_ENV = "SAR_DATA_ROOT"
DATA_ENV_VARS = (DATA_CACHE_ENV, DATA_ROOT_ENV)
"""The variables a Ray worker must see as the driver does (the runtime env forwards them)."""

DEFAULT_CACHE = Path.home() / ".cache" / "sar-platform"
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def cache_root() -> Path:
    """$SAR_CACHE, default ~/.cache/sar-platform."""
    return Path(os.environ.get(CACHE_ENV, DEFAULT_CACHE))


def data_cache() -> Path:
    """The project's data cache: $SAR_DATA_CACHE, default ~/.cache/sar-platform/data."""
    return Path(os.environ.get(DATA_CACHE_ENV, DEFAULT_CACHE / "data"))


def data_root() -> Path | None:
    """$SAR_DATA_ROOT when set: a folder holding the Fashion-MNIST files."""
    value = os.environ.get(DATA_ROOT_ENV)
    return Path(value) if value else None


def fashion_mnist_folders() -> list[Path]:
    """Where Fashion-MNIST is looked for when no folder is given, in order (the first one is
    also where a download goes)."""
    return [data_cache() / "fashion-mnist", DEBIAN_FASHION_MNIST]


def classifier_cache(base: Path | None = None) -> Path:
    """Trained metric classifiers, under `base` (default: the data cache)."""
    return Path(base or data_cache()) / "classifiers"


def reference_cache(base: Path | None = None) -> Path:
    """Real reference features, under `base` (default: the data cache)."""
    return Path(base or data_cache()) / "reference"


def weights_cache() -> Path:
    return data_cache() / "weights"


def storage_cache() -> Path:
    """Local copies of files and folders of remote (s3://) workspaces."""
    return cache_root() / "storage"
