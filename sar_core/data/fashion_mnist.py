"""Fashion-MNIST from its four IDX .gz files.

Where the files are looked for, in order: the `root` given; the project's data cache
($SAR_DATA_CACHE, default ~/.cache/sar-platform/data)/fashion-mnist; the Debian package's folder
/usr/share/datasets/fashion-mnist (package `dataset-fashion-mnist`); and, only when `download=True`,
the official mirror, into the cache.

Images come out as float tensors in [-1, 1] of shape (N, 1, size, size): the 28x28 originals
zero-padded (in [-1, 1] terms: background -1) when `size` > 28 and `resize_mode="pad"`, or
bilinearly resized when `resize_mode="resize"`.
"""
from __future__ import annotations

import gzip
import os
import struct
import urllib.request
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")
MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


class DataNotFoundError(FileNotFoundError):
    pass


def data_cache() -> Path:
    return Path(os.environ.get("SAR_DATA_CACHE", Path.home() / ".cache" / "sar-platform" / "data"))


def _complete(folder: Path) -> bool:
    return all((folder / f).is_file() for pair in FILES.values() for f in pair)


def find_root(root: str | Path | None = None, download: bool = False) -> Path:
    if root is not None:
        root = Path(root).expanduser()
        if _complete(root):
            return root
        missing = [f for pair in FILES.values() for f in pair if not (root / f).is_file()]
        raise DataNotFoundError(f"Fashion-MNIST root {root} lacks {missing}")
    candidates = [data_cache() / "fashion-mnist", DEBIAN_ROOT]
    for folder in candidates:
        if _complete(folder):
            return folder
    if download:
        return _download(data_cache() / "fashion-mnist")
    raise DataNotFoundError(
        "Fashion-MNIST not found (looked in " + ", ".join(map(str, candidates)) + "). Get it with one of:\n"
        "  sudo apt-get install dataset-fashion-mnist      # Debian/Ubuntu, files in /usr/share/datasets/fashion-mnist\n"
        "  sar data fashion-mnist --download               # from the official mirror into the data cache\n"
        "or point the spec's data.root (or SAR_DATA_CACHE) at a folder holding the four .gz files"
    )


def _download(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for pair in FILES.values():
        for name in pair:
            target = folder / name
            if not target.is_file():
                tmp = target.with_suffix(".part")
                urllib.request.urlretrieve(MIRROR + name, tmp)
                tmp.replace(target)
    return folder


def _read_idx(path: Path, magic: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    got, = struct.unpack(">I", data[:4])
    if got != magic:
        raise ValueError(f"{path} is not an IDX file of the expected kind (magic {got:#x}, expected {magic:#x})")
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path} is truncated: header says {dims}, found {arr.size} values")
    return arr.reshape(dims).copy()  # writable, detached from the decompressed buffer


def load_arrays(split: Literal["train", "test"], root: str | Path | None = None, download: bool = False):
    """(uint8 images (N, 28, 28), int64 labels (N,))."""
    if split not in FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = find_root(root, download)
    images = _read_idx(folder / FILES[split][0], 0x00000803)
    labels = _read_idx(folder / FILES[split][1], 0x00000801).astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f"{folder}: {len(images)} images but {len(labels)} labels in the {split} split")
    return images, labels


def to_model_input(images_u8: np.ndarray | torch.Tensor, size: int = 28, resize_mode: str = "pad") -> torch.Tensor:
    """uint8 (N, 28, 28) -> float (N, 1, size, size) in [-1, 1]."""
    x = torch.as_tensor(np.asarray(images_u8)).float().div(127.5).sub(1.0).unsqueeze(1)
    h = x.shape[-1]
    if size == h:
        return x
    if resize_mode == "pad":
        if size < h:
            raise ValueError(f"cannot pad {h}x{h} images down to {size}x{size}; use resize_mode='resize'")
        lo = (size - h) // 2
        return F.pad(x, (lo, size - h - lo, lo, size - h - lo), value=-1.0)
    if resize_mode == "resize":
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(-1, 1)
    raise ValueError(f"resize_mode must be 'pad' or 'resize', got {resize_mode!r}")


def load_tensors(split="train", root=None, size: int = 28, resize_mode: str = "pad", limit: int | None = None, download=False):
    """(images (N, 1, size, size) in [-1, 1], labels (N,)), the first `limit` examples if given."""
    images, labels = load_arrays(split, root, download)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return to_model_input(images, size, resize_mode), torch.from_numpy(labels.copy())
