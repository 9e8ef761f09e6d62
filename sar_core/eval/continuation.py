"""Continuation quality: how good the model's rollout is when it starts from real context.

For each k in `ContinuationConfig.ks`, real images are tokenized at the evaluated schedule, their
first k token maps forced, and the remaining scales generated with the evaluation sampler
(`generate(..., prefix=...)`); the last map is decoded and scored with the usual metrics against the
usual reference (FID / IS / precision / recall and their standard errors, `score`). k = 0 uses only
the real images' labels (class-conditional generation); k = N decodes the ground-truth tokens (the
tokenizer's reconstruction): the curve between says from which scale on the model's own context
costs quality. Every k continues the same images with the same uniforms (common random numbers),
and the reference is the metric config's at num_samples = the continuations' count (equal N, as FID
needs); keys are `cont/k<k>/<metric>` (sar_core/gauge_keys.py).

Data-parallel like `evaluate`: rank r continues the batches b = r, r + W, ...; rank 0 scores and
returns the metrics, the other ranks return {}; the call is collective.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from sar_core.data.dataset import ImageDataset
from sar_core.data.order import choose_rows
from sar_core.eval.config import ContinuationConfig, MetricConfig
from sar_core.eval.distributed import barrier, gather_rows, rank_and_world
from sar_core.eval.evaluate import build_feature_network
from sar_core.eval.features import FeatureNetwork, Features, batch_features
from sar_core.eval.reference import real_reference, score
from sar_core.gauge_keys import continuation_key
from sar_core.generation import generate
from sar_core.schedule import ScaleSchedule
from sar_core.token_sampling import SamplingConfig


def check_ks(ks, schedule: ScaleSchedule) -> None:
    beyond = [k for k in ks if not 0 <= k <= len(schedule)]
    if beyond:
        raise ValueError(f"continuation ks {beyond} are not in 0..{len(schedule)} (the schedule {schedule} has "
                         f"{len(schedule)} scales)")


@torch.no_grad()
def continue_from_ground_truth(generator, tokenizer, label_B: torch.Tensor, gt_maps: list[torch.Tensor], k: int,
                               schedule: ScaleSchedule, sampling: SamplingConfig,
                               rng: torch.Generator | None = None) -> torch.Tensor:
    """Images (B, C, H, W) whose first k scales are `gt_maps[:k]` and the rest the model's own rollout."""
    check_ks([k], schedule)
    return generate(generator, tokenizer, label_B, schedule, sampling, rng, prefix=gt_maps[:k]).images


@torch.no_grad()
def evaluate_continuation(generator, tokenizer, sampling: SamplingConfig, config: ContinuationConfig,
                          metrics: MetricConfig, schedule: ScaleSchedule, data: ImageDataset, *,
                          feature_network: FeatureNetwork | None = None, device=None, cache_dir=None,
                          progress: bool = False) -> dict[str, float]:
    """`cont/k<k>/<metric>` for every k of `config` (rank 0; {} elsewhere). Collective."""
    check_ks(config.ks, schedule)
    rank, world = rank_and_world()
    device = torch.device(device) if device is not None else next(generator.parameters()).device
    scoring = dataclasses.replace(metrics, num_samples=config.num_samples)
    network = (feature_network or build_feature_network(scoring, data, device, cache_dir, progress)).to(device).eval()
    size = tokenizer.config.image_size
    rows = choose_rows(data.split_size(config.split), config.num_samples, config.seed)
    labels, images = data.labels(config.split)[rows], data.images(config.split, size)
    parts = {k: [] for k in config.ks}
    index = [np.zeros(0, np.int64)]
    for b in range(rank, math.ceil(len(rows) / scoring.batch_size), world):
        chosen = slice(b * scoring.batch_size, (b + 1) * scoring.batch_size)
        label_B = torch.as_tensor(labels[chosen], dtype=torch.long, device=device)
        gt_maps = tokenizer.tokenize(images.batch(rows[chosen]).to(device), schedule)
        index.append(np.arange(len(rows))[chosen])
        for k in config.ks:
            rng = torch.Generator(device).manual_seed(config.seed * 1_000_003 + b)
            out = continue_from_ground_truth(generator, tokenizer, label_B, gt_maps, k, schedule, sampling, rng)
            parts[k].append(batch_features(network, data.to_feature_input(out), device))
    order = gather_rows(np.concatenate(index))
    gathered = {}
    for k, feats in parts.items():
        local = Features.concat(feats) if feats else Features(np.zeros((0, network.feature_dim), np.float32),
                                                              np.zeros((0, network.num_classes), np.float32))
        gathered[k] = (gather_rows(local.features), gather_rows(local.logits))
    out = {}
    if rank == 0:
        real = real_reference(network, scoring, data, size, device, cache_dir)
        sort = np.argsort(order, kind="stable")  # global image order, whatever the world size
        for k, (features, logits) in gathered.items():
            result = score(Features(features[sort], logits[sort]), real, scoring, device)
            out.update({continuation_key(k, name): value for name, value in result.items()})
    barrier()
    return out
