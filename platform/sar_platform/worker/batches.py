"""A train job's batches, step by step, on each Ray Train worker: (labels, tokens of every stored
scale) per training step, with the flipped image's tokens drawn per sample when the shards hold flips.

Two loaders (`data.loader`):
- memory: the worker loads the whole shard set and takes its rows of a seeded, resumable global
  order (`sar_core.data.order`);
- ray_data: the worker streams its split of the Ray Dataset the driver handed the TorchTrainer
  (`ray.train.get_dataset_shard("train")`), one batch of `worker_batch` per step.

Runs inside Ray Train workers.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from sar_core.data.order import batch_indices
from sar_core.data.shards import training_batch
from sar_platform.services.inputs import TokenShardsRef

Batch = tuple[torch.Tensor, torch.Tensor]


def worker_batch(batch: dict[str, torch.Tensor], generator: torch.Generator | None = None, flip_prob: float = 0.5,
                 device: str | torch.device | None = None) -> Batch:
    """A batch of shard rows -> (labels (B,) int64, tokens (B, T) int64) on `device`."""
    labels, tokens = training_batch(batch, generator, flip_prob)
    if device is not None:
        labels, tokens = labels.to(device, non_blocking=True), tokens.to(device, non_blocking=True)
    return labels, tokens


def step_batch(batch: dict, seed: int, rank: int, step: int, device) -> Batch:
    """One step's batch, its flips drawn from (seed, step, rank): the same after a resume."""
    flips = torch.Generator().manual_seed(seed * 7_919 + step * 131 + rank)
    return worker_batch({k: torch.as_tensor(np.asarray(v)) for k, v in batch.items()}, flips, device=device)


def memory_batches(shards: TokenShardsRef, job, rank: int, world: int, start_step: int, device) -> Iterator[Batch]:
    columns = shards.local().load()
    order = batch_indices(shards.num_rows, job.optim.batch_size, rank, world, job.seed, start_step)
    for step, idx in enumerate(order, start_step):
        batch = {k: v[idx.numpy()] for k, v in columns.items() if k != "index"}
        yield step_batch(batch, job.seed, rank, step, device)


def stream_batches(per_worker: int, seed: int, rank: int, start_step: int, device) -> Iterator[Batch]:
    """Ray Data: a fresh streaming epoch whenever one ends. After a resume the epoch restarts
    (streams cannot seek); the steps already taken are not repeated, only the order differs."""
    import ray.train

    shard = ray.train.get_dataset_shard("train")
    step = start_step
    while True:
        for batch in shard.iter_torch_batches(batch_size=per_worker, drop_last=True, local_shuffle_buffer_size=4 * per_worker,
                                              local_shuffle_seed=seed + step):
            yield step_batch(batch, seed, rank, step, device)
            step += 1


def token_batches(shards: TokenShardsRef, job, rank: int, world: int, start_step: int, device) -> Iterator[Batch]:
    """This worker's batches from `start_step` on, through the job's loader."""
    if job.data.loader == "ray_data":
        return stream_batches(job.optim.batch_size // world, job.seed, rank, start_step, device)
    return memory_batches(shards, job, rank, world, start_step, device)
