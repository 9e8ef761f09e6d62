"""Fashion-MNIST from its four IDX .gz files: the embedded default data set.

Where the files are looked for, in order:
1. the `root` given (FashionMNISTConfig.root / the spec's data.root): a folder with the four files;
2. $SAR_DATA_ROOT, when set (the same folder `platform/setup.sh` was pointed at);
3. the project's data cache: $SAR_DATA_CACHE/fashion-mnist (default ~/.cache/sar-platform/data);
4. the Debian/Ubuntu package's folder /usr/share/datasets/fashion-mnist (`dataset-fashion-mnist`);
(the folders and variables are defined in `sar_core.paths`)
5. only when `download=True` (and online): the official mirrors, into the data cache.
A miss raises `DataNotFoundError` saying exactly how to get the files.

The model-input transform (documented, invertible): the 28x28 uint8 originals become float
tensors in [-1, 1] of shape (N, 1, size, size), where `size` is the tokenizer's image size:
- resize_mode="pad" (default): zero-pad evenly (background -1 in [-1, 1] terms); `from_model_input`
  crops the centre back out exactly;
- resize_mode="resize": bilinear resize (align_corners=False); the inverse is an antialiased
  bilinear resize back to 28x28.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import struct
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from sar_core import paths
from sar_core.data.dataset import DataDamagedError

FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
SPLIT_SIZES = {"train": 60000, "test": 10000}
SIDE = 28
# The official locations named in the zalandoresearch/fashion-mnist README, tried in order.
MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
ResizeMode = Literal["pad", "resize"]

HOW_TO_GET = (
    "Get Fashion-MNIST with one of:\n"
    "  sudo apt-get install dataset-fashion-mnist   # Debian/Ubuntu: files land in /usr/share/datasets/fashion-mnist\n"
    "  sar data fashion-mnist --download            # from the official mirror into the data cache (needs internet)\n"
    "  set data.download: true in the job spec      # the same, on first use\n"
    "or put the four files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz,\n"
    "t10k-labels-idx1-ubyte.gz) in a folder and point data.root or $SAR_DATA_ROOT at it."
)


class DataNotFoundError(FileNotFoundError):
    pass


def _missing(folder: Path) -> list[str]:
    return [f for pair in FILES.values() for f in pair if not (folder / f).is_file()]


def find_root(root: str | Path | None = None, download: bool = False) -> Path:
    """The folder holding the four files (see the module docstring for the search order)."""
    given = "root"
    if root is None and paths.data_root() is not None:
        root, given = paths.data_root(), f"root ${paths.DATA_ROOT_ENV} ="
    if root is not None:
        root = Path(root).expanduser()
        missing = _missing(root)
        if not missing:
            return root
        if download:
            return _download(root)
        raise DataNotFoundError(f"Fashion-MNIST {given} {root} lacks {missing}.\n{HOW_TO_GET}")
    candidates = paths.fashion_mnist_folders()
    for folder in candidates:
        if not _missing(folder):
            return folder
    if download:
        return _download(candidates[0])
    raise DataNotFoundError(f"Fashion-MNIST not found (looked in {', '.join(map(str, candidates))}).\n{HOW_TO_GET}")


def _download(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in _missing(folder):
        target, errors = folder / name, []
        for mirror in MIRRORS:
            tmp = target.with_suffix(".part")
            try:
                urllib.request.urlretrieve(mirror + name, tmp)
                _read_idx(tmp, _MAGIC[name])  # a truncated or foreign file must not get the real name
                tmp.replace(target)
                break
            except (urllib.error.URLError, OSError, ValueError) as e:
                errors.append(f"{mirror}{name}: {e}")
                tmp.unlink(missing_ok=True)
        else:
            raise DataNotFoundError(f"could not download {name}:\n  " + "\n  ".join(errors) + f"\n{HOW_TO_GET}")
    return folder


_MAGIC = {name: (0x00000803 if "images" in name else 0x00000801) for pair in FILES.values() for name in pair}


def _read_idx(path: Path, magic: int) -> np.ndarray:
    stat = path.stat()
    return _read_idx_version(path, magic, stat.st_mtime_ns, stat.st_size).copy()


@functools.lru_cache(maxsize=8)
def _read_idx_version(path: Path, magic: int, mtime_ns: int, size: int) -> np.ndarray:
    """One version of an IDX file (checks and training read the same files: decompressed once)."""
    def damaged(why: str) -> DataDamagedError:
        return DataDamagedError(f"{path} is damaged: {why}. Replace it with a good copy "
                                f"(the four files of one download or package).\n{HOW_TO_GET}")

    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise damaged(f"{type(e).__name__}: {e}") from None
    got, = struct.unpack(">I", data[:4].ljust(4, b"\0"))
    if got != magic:
        raise damaged(f"not an IDX file of the expected kind (magic {got:#x}, expected {magic:#x})")
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim].ljust(4 * ndim, b"\0"))
    arr = np.frombuffer(data, dtype=np.uint8, offset=min(len(data), 4 + 4 * ndim))
    if arr.size != int(np.prod(dims)):
        raise damaged(f"truncated: its header says {dims}, it holds {arr.size} values")
    return arr.reshape(dims)


def load_arrays(split: Literal["train", "test"], root: str | Path | None = None, download: bool = False):
    """(uint8 images (N, 28, 28), int64 labels (N,))."""
    if split not in FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = find_root(root, download)
    images = _read_idx(folder / FILES[split][0], _MAGIC[FILES[split][0]])
    labels = _read_idx(folder / FILES[split][1], _MAGIC[FILES[split][1]]).astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f"{folder}: {len(images)} images but {len(labels)} labels in the {split} split")
    return images, labels


def to_model_input(images_u8: np.ndarray | torch.Tensor, size: int = SIDE, resize_mode: str = "pad") -> torch.Tensor:
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


def from_model_input(images_BCHW: torch.Tensor, resize_mode: str = "pad") -> torch.Tensor:
    """The inverse view: model-sized images (N, 1, size, size) -> (N, 1, 28, 28), as the
    Fashion-MNIST classifier sees them. Exact for "pad" (centre crop); for "resize" an antialiased
    bilinear resize, applied alike to generated and real images."""
    size = images_BCHW.shape[-1]
    if size == SIDE:
        return images_BCHW
    if resize_mode == "pad":
        if size < SIDE:
            raise ValueError(f"{size}x{size} images cannot hold padded 28x28 originals")
        lo = (size - SIDE) // 2
        return images_BCHW[..., lo : lo + SIDE, lo : lo + SIDE]
    if resize_mode == "resize":
        return F.interpolate(images_BCHW.float(), size=(SIDE, SIDE), mode="bilinear", align_corners=False, antialias=True)
    raise ValueError(f"resize_mode must be 'pad' or 'resize', got {resize_mode!r}")


def load_tensors(split="train", root=None, size: int = SIDE, resize_mode: str = "pad", limit: int | None = None, download=False):
    """(images (N, 1, size, size) in [-1, 1], labels (N,)), the first `limit` examples if given."""
    images, labels = load_arrays(split, root, download)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return to_model_input(images, size, resize_mode), torch.from_numpy(labels.copy())


class ArrayImages:
    """One split held in memory as uint8 arrays, converted to model input per batch."""

    def __init__(self, images_u8: np.ndarray, labels: np.ndarray, size: int, resize_mode: str):
        self.images_u8, self.labels, self.size, self.resize_mode = images_u8, labels, size, resize_mode

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, rows) -> torch.Tensor:
        return to_model_input(self.images_u8[np.asarray(rows)], self.size, self.resize_mode)

    def torch_dataset(self) -> torch.utils.data.Dataset:
        return torch.utils.data.TensorDataset(to_model_input(self.images_u8, self.size, self.resize_mode),
                                              torch.from_numpy(self.labels.astype(np.int64)))


@dataclass(frozen=True)
class FashionMNISTConfig:
    """Where Fashion-MNIST comes from and how its images are fitted to the tokenizer's input size
    (an `ImageDataset`).

    root: a folder with the four .gz files; None searches the data cache, then the Debian folder.
    resize_mode: "pad" (centre the 28x28 image, background -1) or "resize" (bilinear).
    download: fetch from the official mirrors into the data cache when the files are found nowhere.
    """

    # Read by pydantic when the platform embeds this dataclass in a spec: unknown keys are errors.
    __pydantic_config__ = {"extra": "forbid"}

    root: str | None = None
    resize_mode: ResizeMode = "pad"
    download: bool = False

    name = "fashion_mnist"
    num_classes = len(CLASSES)
    class_names = CLASSES
    channels = 1

    def __post_init__(self):
        if self.resize_mode not in ("pad", "resize"):
            raise ValueError(f"resize_mode must be 'pad' or 'resize', got {self.resize_mode!r}")

    @property
    def transform(self) -> str:
        return self.resize_mode

    def find_root(self) -> Path:
        return find_root(self.root, self.download)

    def check_available(self) -> None:
        if self.download:  # a miss is fetched on first use
            return
        for split in FILES:  # every file read whole: a damaged one is named before anything starts
            self.arrays(split)

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        return load_arrays(split, self.root, self.download)

    def split_size(self, split: str) -> int:
        return len(self.labels(split))

    def labels(self, split: str) -> np.ndarray:
        return self.arrays(split)[1]

    def content_hash(self) -> str:
        """Hash of the decompressed images and labels of both splits (independent of how the .gz
        files were packed)."""
        h = hashlib.sha256()
        for split in ("train", "test"):
            for arr in self.arrays(split):
                h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()

    def identity(self, split: str) -> str:
        return f"fashion_mnist:{self.content_hash()}"

    def images(self, split: str, size: int, limit: int | None = None) -> ArrayImages:
        images, labels = self.arrays(split)
        return ArrayImages(images[:limit], labels[:limit], size, self.resize_mode)

    def load(self, split: str, size: int = SIDE, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(images (N, 1, size, size) in [-1, 1], labels (N,)) for a model of input size `size`."""
        return load_tensors(split, self.root, size, self.resize_mode, limit, self.download)

    def to_model_input(self, images_u8: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
        return to_model_input(images_u8, size, self.resize_mode)

    def to_feature_input(self, images_BCHW: torch.Tensor) -> torch.Tensor:
        """Model-sized images -> the 28x28 view the Fashion-MNIST classifier was trained on."""
        return from_model_input(images_BCHW, self.resize_mode)
