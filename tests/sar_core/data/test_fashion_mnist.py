"""Fashion-MNIST: where the files are found, the error when they are not, the model-input transform."""
import shutil

import numpy as np
import pytest
import torch

from sar_core import paths
from sar_core.data import fashion_mnist as fm
from sar_core.data.fashion_mnist import DataNotFoundError, FashionMNISTConfig


def test_real_files_load_with_the_documented_shapes():
    images, labels = fm.load_arrays("test")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and set(np.unique(labels)) == set(range(10))
    assert np.bincount(labels).tolist() == [1000] * 10


def test_search_order_cache_before_debian(tmp_path, monkeypatch):
    monkeypatch.setenv("SAR_DATA_CACHE", str(tmp_path))
    assert fm.find_root() == paths.DEBIAN_FASHION_MNIST  # nothing in the empty cache
    shutil.copytree(paths.DEBIAN_FASHION_MNIST, tmp_path / "fashion-mnist")
    assert fm.find_root() == tmp_path / "fashion-mnist"
    assert FashionMNISTConfig(root=str(paths.DEBIAN_FASHION_MNIST)).find_root() == paths.DEBIAN_FASHION_MNIST  # an explicit root wins
    shutil.copytree(paths.DEBIAN_FASHION_MNIST, tmp_path / "elsewhere")
    monkeypatch.setenv("SAR_DATA_ROOT", str(tmp_path / "elsewhere"))
    assert fm.find_root() == tmp_path / "elsewhere"  # $SAR_DATA_ROOT before the cache
    monkeypatch.setenv("SAR_DATA_ROOT", str(tmp_path / "nowhere"))
    with pytest.raises(DataNotFoundError, match=r"\$SAR_DATA_ROOT"):
        fm.find_root()


def test_missing_data_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SAR_DATA_CACHE", str(tmp_path))
    monkeypatch.setattr(paths, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")
    with pytest.raises(DataNotFoundError) as e:
        FashionMNISTConfig().load("train")
    msg = str(e.value)
    assert "apt-get install dataset-fashion-mnist" in msg and "--download" in msg and "data.root" in msg
    with pytest.raises(DataNotFoundError, match="t10k-labels-idx1-ubyte.gz"):
        fm.find_root(tmp_path)


def test_download_flag_fetches_from_a_mirror(tmp_path, monkeypatch):
    """download=True goes to the mirrors (here a local folder standing in for one); download=False never does."""
    real = paths.DEBIAN_FASHION_MNIST
    monkeypatch.setenv("SAR_DATA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(paths, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")
    monkeypatch.setattr(fm, "MIRRORS", ("http://127.0.0.1:9/unreachable/", real.as_uri() + "/"))
    with pytest.raises(DataNotFoundError):
        FashionMNISTConfig(download=False).find_root()
    root = FashionMNISTConfig(download=True).find_root()
    assert root == tmp_path / "cache" / "fashion-mnist"
    assert (fm.load_arrays("test", root)[1] == fm.load_arrays("test", real)[1]).all()


def test_pad_and_resize_modes_and_their_inverse_view():
    images, _ = fm.load_arrays("test")
    u8 = images[:16]
    padded = FashionMNISTConfig(resize_mode="pad").to_model_input(u8, 32)
    resized = FashionMNISTConfig(resize_mode="resize").to_model_input(u8, 32)
    assert padded.shape == resized.shape == (16, 1, 32, 32)
    assert padded.min() >= -1 and padded.max() <= 1
    assert (padded[..., :2, :] == -1).all()  # the border is background
    assert not torch.equal(padded, resized)
    original = fm.to_model_input(u8)
    torch.testing.assert_close(FashionMNISTConfig(resize_mode="pad").to_feature_input(padded), original)
    back = FashionMNISTConfig(resize_mode="resize").to_feature_input(resized)
    assert back.shape == original.shape and (back - original).abs().mean() < 0.1
    with pytest.raises(ValueError, match="resize_mode"):
        FashionMNISTConfig(resize_mode="crop")
