"""What the rest of sar_core asks of an image data set, whichever it is (Fashion-MNIST, an image
folder): its classes and channels, the size and labels of a split, its images at the model's input
size, the view a feature network scores, and an identity for cache keys.

Evaluation (real reference features, ground-truth prefixes, figure labels) and tokenizer training
and encoding go through this interface only, so a new data set is one class that implements it.
"""
from __future__ import annotations

from typing import Iterator, Protocol, Sequence

import numpy as np
import torch


class DataDamagedError(ValueError):
    """A data file that is there but cannot be read whole (truncated, corrupted): the message names
    the file and how to get a good copy."""


class SplitImages(Protocol):
    """One split of a data set at one model input size."""

    labels: np.ndarray  # (N,) int64

    def __len__(self) -> int: ...

    def batch(self, rows) -> torch.Tensor:
        """Model-input images (B, C, size, size) in [-1, 1] of the given rows (ints, array or tensor)."""

    def torch_dataset(self) -> torch.utils.data.Dataset:
        """(image, label) items of every row, for encoding token shards."""


class ImageDataset(Protocol):
    name: str
    num_classes: int | None  # None: known only from the files (an image folder's class folders)
    class_names: Sequence[str] | None  # human-readable names, None where the data has none
    channels: int
    transform: str  # how images are fitted to the model's size (part of cache keys)

    def check_available(self) -> None:
        """Raise FileNotFoundError (saying how to get the data) unless the data is on disk or will
        be fetched on first use, and DataDamagedError for a file on disk that cannot be read whole."""

    def split_size(self, split: str) -> int: ...

    def labels(self, split: str) -> np.ndarray: ...

    def identity(self, split: str) -> str:
        """A string that changes whenever the split's content does (for cache keys)."""

    def images(self, split: str, size: int, limit: int | None = None) -> SplitImages:
        """The split's images at model input size `size` (the first `limit` rows if given)."""

    def to_feature_input(self, images_BCHW: torch.Tensor) -> torch.Tensor:
        """Model-sized images -> what the data set's feature network scores."""


def model_input_batches(data: ImageDataset, split: str, rows: np.ndarray, image_size: int,
                        batch_size: int) -> Iterator[torch.Tensor]:
    """Model-input images (B, C, size, size) in [-1, 1] of the chosen rows of a split."""
    images = data.images(split, image_size)
    for i in range(0, len(rows), batch_size):
        yield images.batch(rows[i : i + batch_size])
