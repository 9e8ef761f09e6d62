"""ImageNet-style class folders: `<root>/<split>/<class>/*.JPEG` -> square RGB tensors in [-1, 1].

Images are fitted with the centre crop of ADM (guided-diffusion `image_datasets.center_crop_arr`),
which VAR, FlexVAR and DiT reuse: halve the image with a box filter while its short side is at
least twice the target, resize with bicubic so the short side equals the target, then crop the
centre (offsets rounded down). Class indices follow the sorted folder names, as torchvision's
ImageFolder and the reference repositories number ImageNet's synsets.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".webp")


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """ADM's centre crop of a PIL image to size x size."""
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(s // 2 for s in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(s * scale) for s in image.size), resample=Image.BICUBIC)
    w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    return image.crop((left, top, left + size, top + size))


def scan(folder: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """(sorted class names, [(image path, class index)]) of a folder of class folders."""
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist (expected <root>/<split>/<class>/*.JPEG)")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise FileNotFoundError(f"{folder} holds no class folders (expected {folder}/<class>/*.JPEG)")
    items = [
        (path, index)
        for index, name in enumerate(classes)
        for path in sorted((folder / name).iterdir())
        if path.suffix.lower() in EXTENSIONS
    ]
    if not items:
        raise FileNotFoundError(f"{folder}: the class folders hold no images ({', '.join(EXTENSIONS)})")
    return classes, items


def load_image(path: Path, size: int) -> np.ndarray:
    """uint8 (size, size, 3) after ADM's centre crop."""
    with Image.open(path) as img:
        return np.array(center_crop(img.convert("RGB"), size))  # a writable copy


class ImageFolder(Dataset):
    """(image (3, size, size) float in [-1, 1], label) pairs from class folders."""

    def __init__(self, folder: str | Path, size: int = 256):
        self.folder, self.size = Path(folder), size
        self.classes, self.items = scan(self.folder)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[i]
        arr = load_image(path, self.size)
        return torch.from_numpy(arr).permute(2, 0, 1).float().div(127.5).sub(1.0), label

    @property
    def labels(self) -> np.ndarray:
        return np.array([label for _, label in self.items], dtype=np.int64)


class FolderImages:
    """One split of an image folder, read from disk per batch."""

    def __init__(self, dataset: ImageFolder, limit: int | None = None):
        self.dataset = dataset
        self.labels = dataset.labels[:limit]

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, rows) -> torch.Tensor:
        return torch.stack([self.dataset[int(i)][0] for i in rows])

    def torch_dataset(self) -> torch.utils.data.Dataset:
        return torch.utils.data.Subset(self.dataset, range(len(self)))


@dataclass(frozen=True)
class ImageFolderConfig:
    """root: a folder holding `<split>/<class>/*.JPEG` (e.g. an ImageNet copy with train/ and val/).
    image_size: the side of the square centre crop (the tokenizer's input size, 256 for ImageNet).
    An `ImageDataset`; its classes are the sorted folder names (no human-readable names).
    """

    # Read by pydantic when the platform embeds this dataclass in a spec: unknown keys are errors.
    __pydantic_config__ = {"extra": "forbid"}

    root: str = ""
    image_size: int = 256

    name = "image_folder"
    num_classes = None  # as many as the split has class folders
    class_names = None
    channels = 3
    transform = "center_crop"

    def __post_init__(self):
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8 pixels, got {self.image_size}")

    def folder(self, split: str) -> Path:
        if not self.root:
            raise FileNotFoundError("ImageFolderConfig.root is empty: set it to a folder holding train/<class>/*.JPEG")
        return Path(self.root).expanduser() / split

    def dataset(self, split: str = "train") -> ImageFolder:
        return ImageFolder(self.folder(split), self.image_size)

    def check_available(self) -> None:
        if not self.folder("train").is_dir():
            raise FileNotFoundError(f"root {self.root} has no train/ folder of class folders")

    def split_size(self, split: str) -> int:
        return len(self.dataset(split))

    def labels(self, split: str) -> np.ndarray:
        return self.dataset(split).labels

    def identity(self, split: str) -> str:
        """Every file's relative path, label, size and modification time, hashed."""
        folder = self.folder(split)
        _, items = scan(folder)
        h = hashlib.sha256()
        for path, label in items:
            st = path.stat()
            h.update(f"{path.relative_to(folder)}:{label}:{st.st_size}:{st.st_mtime_ns}".encode())
        return f"image_folder:{folder.resolve()}:{h.hexdigest()[:16]}"

    def images(self, split: str, size: int, limit: int | None = None) -> FolderImages:
        if size != self.image_size:
            raise ValueError(f"image folder crops to {self.image_size} px but the generator makes {size} px images")
        return FolderImages(self.dataset(split), limit)

    def to_feature_input(self, images_BCHW: torch.Tensor) -> torch.Tensor:
        """Feature networks see the images as generated (Inception resizes them itself)."""
        return images_BCHW
