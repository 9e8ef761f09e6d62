"""Evaluation settings as frozen stdlib dataclasses (the platform embeds them in its YAML specs).

Every field has a default; an invalid value raises ValueError naming the field and what is allowed
(pydantic reports it at that field).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

FeatureNetworkName = Literal["fmnist_classifier", "inception"]

SELECTION_SEED_OFFSET = 1_000_000
"""The default selection seed is seed + this: far from the small seeds runs are given (0, 1, 2, ...)."""


def _require(ok: bool, field: str, allowed: str, value) -> None:
    if not ok:
        raise ValueError(f"{field} must be {allowed}, got {value!r}")


@dataclass(frozen=True)
class MetricConfig:
    """What to generate and how to score it.

    num_samples: generated images, class-balanced (the paper: 50,000 = 50 per ImageNet class).
    batch_size: images per generation / feature batch (per data-parallel rank).
    feature_network: "fmnist_classifier" (the project's Fashion-MNIST CNN) or "inception" (TF-FID
        Inception-v3; needs inception_weights).
    inception_weights: path, file:// URI or http(s):// URL of pt_inception-2015-12-05-6726825d.pth.
    allow_download: an http(s) inception_weights URL may be fetched into the data cache.
    reference: the real set: a split of the data set ("train", "test", "val", ...) or the path of a
        reference batch .npz (ADM format: arr_0 uint8 NHWC images, optional mu / sigma).
    num_reference: real images used from a split (0: as many as num_samples; FID is biased at small
        N, so compare at equal N). Ignored for an .npz, which is used whole.
    pr_k: the k of the k-NN radii of precision / recall (3 in the ADM evaluator).
    is_splits: Inception Score splits (10 in the ADM evaluator).
    block_size: rows / columns per block of the k-NN distances (working memory ~13 bytes x block^2:
        ~330 MB at 5,000; results do not depend on it).
    fid_at_scales: also score the generation stopped at these scale sizes (the paper's "FID @ 4");
        each must be a scale of the evaluated schedule.
    seed: seeds the generation (per global batch) and the choice of real reference images.
    selection_seed: with a guidance grid (sampling cfg a list), seeds the second sample set that
        picks the best guidance weight (sar_core/eval/guidance.py); None: seed + 1,000,000. Must
        differ from seed: the pick and the reported numbers come from different draws.
    save_npz: also write the samples as the ADM evaluator's NHWC uint8 `samples.npz`.
    bootstrap: resamples of the generated samples behind each metric's standard error (`fid_se`,
        ...; see sar_core/eval/uncertainty.py); 0: no standard errors.
    """

    # Read by pydantic when the platform embeds this dataclass in a spec: unknown keys are errors.
    __pydantic_config__ = {"extra": "forbid"}

    num_samples: int = 10000
    batch_size: int = 250
    feature_network: FeatureNetworkName = "fmnist_classifier"
    inception_weights: str = ""
    allow_download: bool = False
    reference: str = "train"
    num_reference: int = 0
    pr_k: int = 3
    is_splits: int = 10
    block_size: int = 5000
    fid_at_scales: tuple[int, ...] = ()
    seed: int = 0
    selection_seed: int | None = None
    save_npz: bool = False
    bootstrap: int = 20

    def __post_init__(self):
        object.__setattr__(self, "fid_at_scales", tuple(self.fid_at_scales))
        _require(self.num_samples >= 2, "num_samples", "an integer >= 2", self.num_samples)
        _require(self.batch_size >= 1, "batch_size", "an integer >= 1", self.batch_size)
        _require(self.feature_network in ("fmnist_classifier", "inception"), "feature_network",
                 "'fmnist_classifier' or 'inception'", self.feature_network)
        _require(bool(self.reference.strip()), "reference", "a split name (train, test, val, ...) or a .npz path", self.reference)
        _require(self.num_reference >= 0, "num_reference", "an integer >= 0 (0: as many as num_samples)", self.num_reference)
        _require(1 <= self.pr_k < self.num_samples, "pr_k", f"an integer in [1, num_samples={self.num_samples})", self.pr_k)
        _require(1 <= self.is_splits <= self.num_samples, "is_splits", f"an integer in [1, num_samples={self.num_samples}]", self.is_splits)
        _require(self.block_size >= 1, "block_size", "an integer >= 1", self.block_size)
        _require(all(isinstance(s, int) and s >= 1 for s in self.fid_at_scales), "fid_at_scales",
                 "a list of positive scale sizes (e.g. [4])", self.fid_at_scales)
        _require(self.selection_seed is None or (self.selection_seed >= 0 and self.selection_seed != self.seed),
                 "selection_seed", f"a seed >= 0 other than seed ({self.seed}), so that the guidance weight is picked on "
                 f"other draws than the reported ones; leave it out for seed + {SELECTION_SEED_OFFSET:,}", self.selection_seed)
        _require(self.bootstrap == 0 or self.bootstrap >= 2, "bootstrap", "0 (no standard errors) or an integer >= 2",
                 self.bootstrap)
        if self.feature_network == "inception":
            _require(bool(self.inception_weights), "inception_weights",
                     "a path or URI of pt_inception-2015-12-05-6726825d.pth when feature_network is 'inception'",
                     self.inception_weights)

    def unread_fields(self) -> dict[str, str]:
        """Field -> why scoring with these settings never reads it."""
        out = {}
        if self.feature_network != "inception":
            why = f"is only read with feature_network: inception (here {self.feature_network})"
            out.update(inception_weights=why, allow_download=why)
        elif not self.inception_weights.startswith(("http://", "https://")):
            out["allow_download"] = "is only read when inception_weights is an http(s):// URL"
        if self.reference_is_npz:
            out["num_reference"] = "is not read with a reference .npz (the file is used whole)"
        return out

    @property
    def selection_draw_seed(self) -> int:
        """The seed of a guidance grid's selection samples."""
        return self.seed + SELECTION_SEED_OFFSET if self.selection_seed is None else self.selection_seed

    @property
    def reference_is_npz(self) -> bool:
        return self.reference.endswith(".npz")

    @property
    def reference_count(self) -> int:
        return self.num_reference or self.num_samples


@dataclass(frozen=True)
class FigureConfig:
    """Figures `evaluate` renders (PNG).

    grid_classes: classes shown in the sample grid, one row each (the first ones); 0: no grid.
    grid_per_class: samples per class (grid columns).
    trajectory_seeds: rows of the generation-trajectory figure (paper Fig. 7); 0: no trajectory.
    trajectory_prefix: force the ground-truth token maps of every scale up to this size (Fig. 7
        starts both models from the same 4x4 latent: 4), taken from real images; 0: none.
    seed: seeds the figures' generations (independent of the metric samples).
    """

    # Read by pydantic when the platform embeds this dataclass in a spec: unknown keys are errors.
    __pydantic_config__ = {"extra": "forbid"}

    grid_classes: int = 10
    grid_per_class: int = 8
    trajectory_seeds: int = 4
    trajectory_prefix: int = 0
    seed: int = 0

    def __post_init__(self):
        for name in ("grid_classes", "grid_per_class", "trajectory_seeds", "trajectory_prefix"):
            _require(getattr(self, name) >= 0, name, "an integer >= 0", getattr(self, name))
        _require(self.grid_classes == 0 or self.grid_per_class >= 1, "grid_per_class", "an integer >= 1 when grid_classes > 0",
                 self.grid_per_class)


@dataclass(frozen=True)
class ContinuationConfig:
    """Continuation quality (sar_core/eval/continuation.py): real images' first k scales of
    ground-truth tokens, the rest generated, scored like the samples.

    ks: ground-truth scales the continuations start from, each in 0..N (N: the schedule's number of
        scales); 0 is class-conditional generation, N the tokenizer's reconstruction.
    num_samples: real images continued for every k (the same images, seeded choice).
    split: the split they come from (held out from training: test).
    seed: seeds the choice of images and the generation (every k draws with the same uniforms).
    """

    # Read by pydantic when the platform embeds this dataclass in a spec: unknown keys are errors.
    __pydantic_config__ = {"extra": "forbid"}

    ks: tuple[int, ...] = (1, 2, 3)
    num_samples: int = 1000
    split: str = "test"
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "ks", tuple(self.ks))
        _require(bool(self.ks) and all(isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in self.ks),
                 "ks", "a non-empty list of integers >= 0 (ground-truth scales, e.g. [1, 2, 3])", self.ks)
        _require(len(set(self.ks)) == len(self.ks), "ks", "a list without repeats", self.ks)
        _require(self.num_samples >= 2, "num_samples", "an integer >= 2", self.num_samples)
        _require(bool(self.split.strip()), "split", "a split name (test, train, ...)", self.split)
        _require(self.seed >= 0, "seed", "an integer >= 0", self.seed)

    def problems(self, num_scales: int, metrics: MetricConfig) -> dict[str, str]:
        """Field -> why these settings cannot be scored on a schedule of `num_scales` with `metrics`."""
        out = {}
        beyond = [k for k in self.ks if k > num_scales]
        if beyond:
            out["ks"] = f"{beyond} go beyond the schedule's {num_scales} scales; pick from 0..{num_scales}"
        if not metrics.pr_k < self.num_samples or metrics.is_splits > self.num_samples:
            out["num_samples"] = (f"{self.num_samples} is too few for metrics.pr_k = {metrics.pr_k} and metrics.is_splits = "
                                  f"{metrics.is_splits}; use more than {max(metrics.pr_k, metrics.is_splits - 1)}")
        return out
