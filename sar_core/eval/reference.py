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

import numpy as np

from sar_core import paths
from sar_core.data.dataset import ImageDataset, model_input_batches
from sar_core.data.order import choose_rows
from sar_core.eval.config import MetricConfig
from sar_core.eval.export import ReferenceNpz, read_reference_npz
from sar_core.eval.features import FeatureNetwork, Features, extract_features
from sar_core.eval.metrics import GaussianStats, coverage, frechet_distance, inception_score, manifold_radii
from sar_core.eval.uncertainty import (fid_bootstrap, inception_score_bootstrap, precision_recall_bootstrap,
                                       resample_counts, standard_error)


@dataclass
class RealReference:
    description: str
    features: Features  # for precision / recall (and the IS of the real set)
    stats: GaussianStats  # for FID: a reference .npz's own mu / sigma when it has them


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


def split_features(network: FeatureNetwork, data: ImageDataset, split: str, count: int, seed: int, image_size: int,
                   batch_size: int = 500, device="cpu", cache_dir: Path | None = None) -> tuple[Features, str]:
    """(features of `count` seeded-random images of a split, a description); cached."""
    rows = choose_rows(data.split_size(split), count, seed)
    key = json.dumps([network.fingerprint, data.identity(split), split, len(rows), seed, image_size, data.transform])
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    path = paths.reference_cache(cache_dir) / f"{data.name}-{split}-{digest}.npz"
    batches = (data.to_feature_input(x) for x in model_input_batches(data, split, rows, image_size, batch_size))
    feats = _cached(path, lambda: extract_features(network, batches, device))
    return feats, f"{data.name}/{split}[n={len(rows)},seed={seed}]"


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """The file's SHA-256 (which reference batch a number was measured against, byte for byte)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def npz_features(network: FeatureNetwork, path: str | Path, data: ImageDataset, batch_size: int = 500, device="cpu",
                 cache_dir: Path | None = None) -> tuple[Features, ReferenceNpz]:
    ref = read_reference_npz(path)
    st = Path(path).stat()
    key = json.dumps([network.fingerprint, str(Path(path).resolve()), st.st_size, st.st_mtime_ns])
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    cache = paths.reference_cache(cache_dir) / f"npz-{digest}.npz"
    batches = (data.to_feature_input(x) for x in ref.batches(batch_size))
    return _cached(cache, lambda: extract_features(network, batches, device)), ref


def real_reference(network: FeatureNetwork, metrics: MetricConfig, data: ImageDataset, image_size: int,
                   device="cpu", cache_dir: Path | None = None) -> RealReference:
    """The real side of every metric, as `metrics.reference` selects it."""
    if metrics.reference_is_npz:
        feats, ref = npz_features(network, metrics.reference, data, metrics.batch_size, device, cache_dir)
        stats = GaussianStats(ref.mu, ref.sigma) if ref.mu is not None else GaussianStats.from_features(feats.features)
        return RealReference(f"npz:{ref.path.name}[n={ref.num_images},sha256={file_sha256(ref.path)[:16]}]", feats, stats)
    feats, desc = split_features(network, data, metrics.reference, metrics.reference_count, metrics.seed, image_size,
                                 metrics.batch_size, device, cache_dir)
    return RealReference(desc, feats, GaussianStats.from_features(feats.features))


HEADLINE_METRICS = ("fid", "is", "precision", "recall")
"""The paper's four metrics, as `score` names them (tables and progress lines show these)."""


def score(fake: Features, real: RealReference, metrics: MetricConfig, device="cpu") -> dict[str, float]:
    """The four metrics of `fake` against `real`, and with `metrics.bootstrap` their standard
    errors over resamples of the generated samples (`fid_se`, ...; sar_core/eval/uncertainty.py)."""
    k, block = metrics.pr_k, metrics.block_size
    real_radii = manifold_radii(real.features.features, k, block, device)
    fake_radii = manifold_radii(fake.features, k, block, device)
    cover = coverage(real.features.features, real_radii, fake.features, fake_radii, block, device)
    out = {
        "fid": frechet_distance(GaussianStats.from_features(fake.features), real.stats),
        "is": inception_score(fake.logits, metrics.is_splits),
        "precision": cover.precision,
        "recall": cover.recall,
    }
    if metrics.bootstrap:
        counts = bootstrap_counts(len(fake.features), metrics)
        precision, recall = precision_recall_bootstrap(cover, counts)
        out.update(fid_se=standard_error(fid_bootstrap(fake.features, real.stats, counts)),
                   is_se=standard_error(inception_score_bootstrap(fake.logits, counts, metrics.is_splits)),
                   precision_se=standard_error(precision), recall_se=standard_error(recall))
    return out


def bootstrap_counts(n: int, metrics: MetricConfig):
    """The resamples behind every standard error of one evaluation (seeded by the metric seed)."""
    return resample_counts(n, metrics.bootstrap, metrics.seed * 7_919 + 1)


def real_floor(network: FeatureNetwork, data: ImageDataset, count: int, image_size: int, metrics: MetricConfig = MetricConfig(),
               fake_split: str = "test", real_split: str = "train", device="cpu", cache_dir: Path | None = None) -> dict:
    """FID / IS / precision / recall of `count` real `fake_split` images against `count` real
    `real_split` images: what a generator indistinguishable from the data would score."""
    fake, fake_desc = split_features(network, data, fake_split, count, metrics.seed, image_size, metrics.batch_size, device, cache_dir)
    real_feats, real_desc = split_features(network, data, real_split, count, metrics.seed, image_size, metrics.batch_size,
                                           device, cache_dir)
    real = RealReference(real_desc, real_feats, GaussianStats.from_features(real_feats.features))
    return {**score(fake, real, metrics, device), "samples": fake_desc, "reference": real_desc, "network": network.fingerprint}
