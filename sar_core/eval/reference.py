"""Real ("reference") features and statistics, computed once per feature network and cached.

Real images take the same path as generated ones: the model-input transform of the data set
(Fashion-MNIST: padded / resized to the tokenizer's size), uint8 quantisation, the data set's
feature view, then the feature network. The result (features and logits of `num_reference`
seeded-random images of a split, or of a whole reference `.npz`) is cached in the data cache under
a hash of (network fingerprint, data identity, split, count, seed, image size, transform).

`real_floor` gives the numbers a perfect generator would get: real test images scored against
real training images at equal N (the finite-sample floor of FID, the ceiling of precision /
recall / IS under this feature network).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from sar_core.data.fashion_mnist import FashionMNISTConfig, data_cache
from sar_core.data.image_folder import ImageFolderConfig, scan
from sar_core.eval.config import MetricConfig
from sar_core.eval.export import read_reference_npz
from sar_core.eval.features import FeatureNetwork, Features, extract_features
from sar_core.eval.fmnist_classifier import data_hash
from sar_core.eval.metrics import GaussianStats, frechet_distance, inception_score, precision_recall

DataConfig = FashionMNISTConfig | ImageFolderConfig


@dataclass
class RealReference:
    description: str
    features: Features  # for precision / recall (and the IS of the real set)
    stats: GaussianStats  # for FID: a reference .npz's own mu / sigma when it has them


def _data_identity(data: DataConfig, split: str) -> str:
    if isinstance(data, FashionMNISTConfig):
        return f"fashion_mnist:{data_hash(data)}"
    folder = Path(data.root).expanduser() / split
    _, items = scan(folder)
    h = hashlib.sha256()
    for path, label in items:
        st = path.stat()
        h.update(f"{path.relative_to(folder)}:{label}:{st.st_size}:{st.st_mtime_ns}".encode())
    return f"image_folder:{folder.resolve()}:{h.hexdigest()[:16]}"


def choose_rows(total: int, count: int, seed: int) -> np.ndarray:
    """`count` distinct row indices of `total`, seeded, in ascending order (all rows if count >= total)."""
    if count >= total:
        return np.arange(total)
    return np.sort(np.random.default_rng(seed).choice(total, size=count, replace=False))


def split_batches(data: DataConfig, split: str, rows: np.ndarray, image_size: int, batch_size: int) -> Iterator[torch.Tensor]:
    """Model-input images (B, C, size, size) in [-1, 1] of the chosen rows of a split."""
    if isinstance(data, FashionMNISTConfig):
        images, _ = data.arrays(split)
        for i in range(0, len(rows), batch_size):
            yield data.to_model_input(images[rows[i : i + batch_size]], image_size)
        return
    if data.image_size != image_size:
        raise ValueError(f"image folder crops to {data.image_size} px but the generator makes {image_size} px images")
    dataset = data.dataset(split)
    for i in range(0, len(rows), batch_size):
        yield torch.stack([dataset[int(r)][0] for r in rows[i : i + batch_size]])


def split_size(data: DataConfig, split: str) -> int:
    if isinstance(data, FashionMNISTConfig):
        return len(data.arrays(split)[1])
    return len(data.dataset(split))


def _cached(path: Path, compute) -> Features:
    if path.is_file():
        with np.load(path) as z:
            return Features(z["features"], z["logits"])
    feats = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, features=feats.features, logits=feats.logits)
    tmp.replace(path)
    return feats


def split_features(network: FeatureNetwork, data: DataConfig, split: str, count: int, seed: int, image_size: int,
                   batch_size: int = 500, device="cpu", cache_dir: Path | None = None) -> tuple[Features, str]:
    """(features of `count` seeded-random images of a split, a description); cached."""
    rows = choose_rows(split_size(data, split), count, seed)
    transform = getattr(data, "resize_mode", "center_crop")
    key = json.dumps([network.fingerprint, _data_identity(data, split), split, len(rows), seed, image_size, transform])
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    path = Path(cache_dir or data_cache()) / "reference" / f"{data.name}-{split}-{digest}.npz"
    batches = (data.to_feature_input(x) for x in split_batches(data, split, rows, image_size, batch_size))
    feats = _cached(path, lambda: extract_features(network, batches, device))
    return feats, f"{data.name}/{split}[n={len(rows)},seed={seed}]"


def npz_features(network: FeatureNetwork, path: str | Path, data: DataConfig, batch_size: int = 500, device="cpu",
                 cache_dir: Path | None = None) -> tuple[Features, "ReferenceNpz"]:
    ref = read_reference_npz(path)
    st = Path(path).stat()
    key = json.dumps([network.fingerprint, str(Path(path).resolve()), st.st_size, st.st_mtime_ns])
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    cache = Path(cache_dir or data_cache()) / "reference" / f"npz-{digest}.npz"
    batches = (data.to_feature_input(x) for x in ref.batches(batch_size))
    return _cached(cache, lambda: extract_features(network, batches, device)), ref


def real_reference(network: FeatureNetwork, metrics: MetricConfig, data: DataConfig, image_size: int,
                   device="cpu", cache_dir: Path | None = None) -> RealReference:
    """The real side of every metric, as `metrics.reference` selects it."""
    if metrics.reference_is_npz:
        feats, ref = npz_features(network, metrics.reference, data, metrics.batch_size, device, cache_dir)
        stats = GaussianStats(ref.mu, ref.sigma) if ref.mu is not None else GaussianStats.from_features(feats.features)
        return RealReference(f"npz:{ref.path.name}[n={ref.num_images}]", feats, stats)
    feats, desc = split_features(network, data, metrics.reference, metrics.reference_count, metrics.seed, image_size,
                                 metrics.batch_size, device, cache_dir)
    return RealReference(desc, feats, GaussianStats.from_features(feats.features))


def score(fake: Features, real: RealReference, metrics: MetricConfig, device="cpu") -> dict[str, float]:
    """The four metrics of `fake` against `real`."""
    precision, recall = precision_recall(real.features.features, fake.features, metrics.pr_k, metrics.block_size, device)
    return {
        "fid": frechet_distance(GaussianStats.from_features(fake.features), real.stats),
        "is": inception_score(fake.logits, metrics.is_splits),
        "precision": precision,
        "recall": recall,
    }


def real_floor(network: FeatureNetwork, data: DataConfig, count: int, image_size: int, metrics: MetricConfig = MetricConfig(),
               fake_split: str = "test", real_split: str = "train", device="cpu", cache_dir: Path | None = None) -> dict:
    """FID / IS / precision / recall of `count` real `fake_split` images against `count` real
    `real_split` images: what a generator indistinguishable from the data would score."""
    fake, fake_desc = split_features(network, data, fake_split, count, metrics.seed, image_size, metrics.batch_size, device, cache_dir)
    real_feats, real_desc = split_features(network, data, real_split, count, metrics.seed, image_size, metrics.batch_size,
                                           device, cache_dir)
    real = RealReference(real_desc, real_feats, GaussianStats.from_features(real_feats.features))
    return {**score(fake, real, metrics, device), "samples": fake_desc, "reference": real_desc, "network": network.fingerprint}
