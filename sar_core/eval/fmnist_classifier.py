"""The Fashion-MNIST feature network: a small CNN the project trains once and caches.

Inception-v3 features mean little on 28x28 grey clothing, so (as the FID authors and TF-GAN's
MNIST metrics advise) the metrics use a classifier trained on the data itself: penultimate
features (256-d) for FID and precision/recall, logits for the Inception Score. Numbers are
comparable only under the same classifier; its fingerprint is recorded with every metric.

Training is deterministic given the recipe's seed (on the same machine and thread count: CPU
convolution kernels may sum in a thread-dependent order) and takes 5-8 CPU-minutes on 2 cores.
The trained weights are cached in the data cache under a content hash of (the decompressed
training and test files, the recipe, the architecture version), so every later call loads them.

The default recipe's network for the official Fashion-MNIST files ships with the project
(`weights/`, 1.6 MB, made by `load_classifier()` on 2 CPU threads; its `info` metadata holds the
recipe and the test accuracy): metrics are then comparable across machines, as with the published
Inception weights, and nobody waits for it. Other data or recipes are trained on first use.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from sar_core import paths
from sar_core.data.fashion_mnist import FashionMNISTConfig
from sar_core.eval.features import FeatureNetwork
from sar_core.progress import progress_bar

ARCHITECTURE_VERSION = "1"  # bump when FMNISTClassifier changes: old cache entries stop matching


@dataclass(frozen=True)
class ClassifierRecipe:
    widths: tuple[int, ...] = (32, 64, 128)  # conv widths at 28, 14 and 7 pixels
    hidden: int = 256  # penultimate (feature) width
    epochs: int = 8
    batch_size: int = 256
    lr: float = 4e-3  # peak of a one-cycle schedule, AdamW
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    dropout: float = 0.3
    flip: bool = True  # horizontal-flip augmentation
    seed: int = 0
    train_images: int = 0  # train on the first N training images only (0: all 60,000), for quick checks

    def __post_init__(self):
        object.__setattr__(self, "widths", tuple(self.widths))
        if len(self.widths) != 3 or min(self.widths) < 1:
            raise ValueError(f"widths must be three positive conv widths, got {self.widths}")
        if self.train_images < 0:
            raise ValueError(f"train_images must be >= 0 (0: the whole split), got {self.train_images}")


def conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


class FMNISTClassifier(FeatureNetwork):
    """(B, 1, 28, 28) in [-1, 1] -> (penultimate features (B, hidden), logits (B, 10))."""

    name = "fmnist-classifier"
    num_classes = 10

    def __init__(self, widths=(32, 64, 128), hidden: int = 256, dropout: float = 0.3):
        super().__init__()
        c1, c2, c3 = widths
        self.conv = nn.Sequential(
            *conv_bn_relu(1, c1), nn.MaxPool2d(2),  # 28 -> 14
            *conv_bn_relu(c1, c2), nn.MaxPool2d(2),  # 14 -> 7
            *conv_bn_relu(c2, c3), nn.MaxPool2d(2),  # 7 -> 3
        )
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(c3 * 9, hidden), nn.BatchNorm1d(hidden), nn.ReLU())
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, 10)
        self.feature_dim = hidden
        self.to(memory_format=torch.channels_last)  # oneDNN's fast layout on CPU

    def forward(self, images_BCHW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if images_BCHW.shape[1:] != (1, 28, 28):
            raise ValueError(f"the Fashion-MNIST classifier takes (B, 1, 28, 28) images, got {tuple(images_BCHW.shape)}")
        feats = self.embed(self.conv(images_BCHW.contiguous(memory_format=torch.channels_last)))
        return feats, self.head(self.dropout(feats))


def check_classifier_data(data) -> None:
    """The classifier is trained on, and only means something for, Fashion-MNIST."""
    if not isinstance(data, FashionMNISTConfig):
        raise ValueError("feature_network 'fmnist_classifier' scores Fashion-MNIST only; use 'inception' for image folders")


def cache_key(recipe: ClassifierRecipe, data: FashionMNISTConfig) -> str:
    text = json.dumps({"data": data.content_hash(), "recipe": dataclasses.asdict(recipe), "arch": ARCHITECTURE_VERSION}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@torch.no_grad()
def accuracy(model: FMNISTClassifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 2000) -> float:
    model.eval()
    correct = sum(
        int((model(images[i : i + batch_size])[1].argmax(1) == labels[i : i + batch_size]).sum())
        for i in range(0, len(images), batch_size)
    )
    return correct / len(images)


def train_classifier(recipe: ClassifierRecipe = ClassifierRecipe(), data: FashionMNISTConfig = FashionMNISTConfig(),
                     progress: bool = True) -> tuple[FMNISTClassifier, dict]:
    """Train on the training split; returns the model and {test_accuracy, train_seconds, ...}."""
    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    x_train, y_train = data.load("train", limit=recipe.train_images or None)
    x_test, y_test = data.load("test")
    model = FMNISTClassifier(recipe.widths, recipe.hidden, recipe.dropout)
    steps_per_epoch = max(1, len(x_train) // recipe.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=recipe.epochs * steps_per_epoch, pct_start=0.25)
    start = time.perf_counter()
    bar = progress_bar(total=recipe.epochs * steps_per_epoch, desc="training the Fashion-MNIST classifier", disable=not progress)
    for _ in range(recipe.epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=gen)
        for step in range(steps_per_epoch):
            idx = order[step * recipe.batch_size : (step + 1) * recipe.batch_size]
            x = x_train[idx]
            if recipe.flip:
                flip = torch.rand(len(idx), generator=gen) < 0.5
                x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            loss = F.cross_entropy(model(x)[1], y_train[idx], label_smoothing=recipe.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update()
    bar.close()
    seconds = time.perf_counter() - start
    info = {"test_accuracy": accuracy(model, x_test, y_test), "train_seconds": round(seconds, 1),
            "threads": torch.get_num_threads(), "recipe": dataclasses.asdict(recipe)}
    return model.eval().requires_grad_(False), info


def save_classifier(model: FMNISTClassifier, info: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata={"info": json.dumps(info)})
    tmp.replace(path)  # concurrent trainers each write a complete file; the last rename wins
    return path


def read_classifier(path: Path) -> FMNISTClassifier:
    with safe_open(str(path), framework="pt") as f:
        info = json.loads(f.metadata()["info"])
        state = {k: f.get_tensor(k) for k in f.keys()}
    recipe = ClassifierRecipe(**{**info["recipe"], "widths": tuple(info["recipe"]["widths"])})
    model = FMNISTClassifier(recipe.widths, recipe.hidden, recipe.dropout)
    model.load_state_dict(state)
    model.info = info
    return model.eval().requires_grad_(False)


SHIPPED_DIR = Path(__file__).parent / "weights"


def classifier_path(recipe: ClassifierRecipe, data: FashionMNISTConfig, cache_dir: Path | None = None) -> Path:
    return paths.classifier_cache(cache_dir) / f"fmnist-{cache_key(recipe, data)}.safetensors"


def load_classifier(recipe: ClassifierRecipe = ClassifierRecipe(), data: FashionMNISTConfig = FashionMNISTConfig(),
                    cache_dir: str | Path | None = None, train: bool = True, progress: bool = True) -> FMNISTClassifier:
    """The cached (or shipped) classifier for (data, recipe), trained and cached first if missing (and `train`).

    `model.info` holds its test accuracy and training time."""
    check_classifier_data(data)
    path = classifier_path(recipe, data, Path(cache_dir) if cache_dir else None)
    for found in (path, SHIPPED_DIR / path.name):
        if found.is_file():
            return read_classifier(found)
    if not train:
        raise FileNotFoundError(f"no cached Fashion-MNIST classifier at {path}; call load_classifier(train=True)")
    model, info = train_classifier(recipe, data, progress)
    save_classifier(model, info, path)
    return read_classifier(path)
