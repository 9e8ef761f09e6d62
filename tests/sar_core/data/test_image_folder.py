"""ImageNet-style class folders, proven on a tiny folder of generated PNGs."""
import numpy as np
import pytest
import torch
from PIL import Image

from sar_core.data.image_folder import ImageFolderConfig, center_crop


def test_class_index_follows_sorted_folder_names(folder):
    ds = ImageFolderConfig(root=str(folder), image_size=32).dataset("train")
    assert ds.classes == ["a_class", "n01", "n02"]
    assert ds.labels.tolist() == [0, 0, 1, 1, 2, 2]  # the .txt is skipped, the grey JPEG kept
    image, label = ds[5]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and label == 2
    assert -1 <= float(image.min()) and float(image.max()) <= 1
    assert ds[3][0].shape == (3, 32, 32)  # grey images become RGB


def test_center_crop_follows_adm():
    # 300x200 to 64: halve (box) while the short side >= 128 -> 150x100, bicubic to 96x64, crop x 16..80
    arr = np.zeros((200, 300, 3), dtype=np.uint8)
    arr[:, 150:] = 255  # right half white: the crop's column 32 sits at the boundary
    out = np.asarray(center_crop(Image.fromarray(arr), 64))
    assert out.shape == (64, 64, 3)
    ref = np.asarray(Image.fromarray(arr).resize((150, 100), Image.BOX).resize((96, 64), Image.BICUBIC))[:, 16:80]
    np.testing.assert_array_equal(out, ref)
    assert out[:, :20].max() == 0 and out[:, 44:].min() == 255


def test_image_size_and_errors(folder):
    assert ImageFolderConfig(root=str(folder), image_size=16).dataset()[0][0].shape == (3, 16, 16)
    with pytest.raises(FileNotFoundError, match="val"):
        ImageFolderConfig(root=str(folder)).dataset("val")
    with pytest.raises(FileNotFoundError, match="root"):
        ImageFolderConfig().dataset()
    with pytest.raises(ValueError, match="image_size"):
        ImageFolderConfig(image_size=0)
