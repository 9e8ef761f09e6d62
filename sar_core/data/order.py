"""Deterministic, resumable batch order over an in-memory data set, sharded across workers.

Every epoch is a permutation drawn from (seed, epoch); rank r takes positions r, r + W, ... of the
global batch. Starting at any global step reproduces exactly the batches an uninterrupted run would
have seen from there, which is what makes a resumed run continue instead of repeating data.
`choose_rows` picks a seeded subset of a split (reference images, the diagnostics probe).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch


def batch_indices(num_rows: int, global_batch: int, rank: int, world: int, seed: int, start_step: int) -> Iterator[torch.Tensor]:
    if global_batch % world:
        raise ValueError(f"optim.batch_size {global_batch} is not divisible by {world} workers")
    if num_rows < global_batch:
        raise ValueError(f"the data set has {num_rows} rows, fewer than one batch of {global_batch}")
    per_epoch = num_rows // global_batch  # the ragged tail of each permutation is dropped
    step = start_step
    while True:
        epoch, offset = divmod(step, per_epoch)
        order = torch.randperm(num_rows, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        for b in range(offset, per_epoch):
            chunk = order[b * global_batch : (b + 1) * global_batch]
            yield chunk[rank::world]
            step += 1


def choose_rows(total: int, count: int, seed: int) -> np.ndarray:
    """`count` distinct row indices of `total`, seeded, in ascending order (all rows if count >= total)."""
    if count >= total:
        return np.arange(total)
    return np.sort(np.random.default_rng(seed).choice(total, size=count, replace=False))
