"""Both data sets answer the one interface evaluation and tokenizer training use (`ImageDataset`)."""
import numpy as np
import pytest
import torch

from sar_core.data.dataset import model_input_batches
from sar_core.data.fashion_mnist import FashionMNISTConfig
from sar_core.data.image_folder import ImageFolderConfig


def test_fashion_mnist_through_the_interface():
    data = FashionMNISTConfig()
    assert (data.name, data.num_classes, data.channels, len(data.class_names)) == ("fashion_mnist", 10, 1, 10)
    assert data.split_size("test") == len(data.labels("test")) == 10000
    images = data.images("train", 32, limit=100)
    assert len(images) == len(images.labels) == 100
    rows = np.array([3, 1, 4])
    batch = images.batch(rows)
    assert batch.shape == (3, 1, 32, 32) and torch.equal(batch, data.load("train", 32, limit=100)[0][rows])
    x, y = images.torch_dataset()[4]
    assert torch.equal(x, batch[2]) and y == data.labels("train")[4]
    assert data.identity("train") == data.identity("test")  # one content hash of both splits


def test_an_image_folder_through_the_interface(folder):
    data = ImageFolderConfig(root=str(folder), image_size=16)
    assert (data.num_classes, data.class_names, data.channels) == (None, None, 3)
    data.check_available()
    assert data.split_size("train") == 6 and data.labels("train").tolist() == [0, 0, 1, 1, 2, 2]
    batches = list(model_input_batches(data, "train", np.arange(6), 16, batch_size=4))
    assert [b.shape for b in batches] == [(4, 3, 16, 16), (2, 3, 16, 16)]
    assert torch.equal(batches[0][1], data.dataset("train")[1][0])
    before = data.identity("train")
    (folder / "train" / "n01" / "0.png").touch()
    assert data.identity("train") != before  # a changed file changes cache keys
    with pytest.raises(ValueError, match="crops to 16 px"):
        data.images("train", 32)
    with pytest.raises(FileNotFoundError, match="no train/"):
        ImageFolderConfig(root=str(folder / "train")).check_available()
