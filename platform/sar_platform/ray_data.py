"""Ray Data over pre-tokenized Parquet shards (`sar_core.data.shards`).

Driver side, `shard_dataset(folder)` checks the shard set (complete, optionally the expected
tokenizer) and returns a streaming `ray.data.Dataset` from `ray.data.read_parquet` over exactly
its shard files; hand it to `TorchTrainer(datasets={"train": ...})`. Worker side, iterate
`ray.train.get_dataset_shard("train").iter_torch_batches(batch_size=...)` and turn each batch
into `(labels (B,), tokens (B, T))` with `worker_batch`, which picks the original or the flipped
tokens per sample from a seeded generator when the shards hold flips. `select_scales` then cuts a
schedule out of the stored scales.
"""
from __future__ import annotations

from pathlib import Path

import ray.data
import torch

from sar_core.data.shards import TokenShards, training_batch


def shard_dataset(
    folder: str | Path,
    expected_fingerprint: str | None = None,
    override_num_blocks: int | None = None,
) -> ray.data.Dataset:
    """A lazy, streaming Dataset of the shard set's rows: index, label, tokens[, tokens_flip].

    Row order is not preserved across blocks (Ray Data's default); `index` names each row's place
    in the source data set."""
    shards = TokenShards(folder).verify()
    if expected_fingerprint is not None:
        shards.check_tokenizer(expected_fingerprint)
    return ray.data.read_parquet([str(p) for p in shards.files], override_num_blocks=override_num_blocks)


def worker_batch(
    batch: dict[str, torch.Tensor],
    generator: torch.Generator | None = None,
    flip_prob: float = 0.5,
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """An `iter_torch_batches` batch -> (labels (B,) int64, tokens (B, T) int64) on `device`."""
    labels, tokens = training_batch(batch, generator, flip_prob)
    if device is not None:
        labels, tokens = labels.to(device), tokens.to(device)
    return labels, tokens
