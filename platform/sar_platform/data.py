"""Data as the platform serves it: images for tokenizer training, token shards for generators.

Token shards are encoded once per (data set, tokenizer) into the workspace
(`shards/<dataset>-<split>[-n<limit>][-flip]-<tokenizer fingerprint>`), by a Ray task placed like
a training worker (on a GPU when the job trains on GPUs), and reused by every later job and trial
that uses the same tokenizer.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from sar_core.checkpoint import fingerprint, load_model
from sar_core.data.fashion_mnist import FashionMNISTConfig
from sar_core.data.image_folder import ImageFolderConfig
from sar_core.data.shards import TokenShards, encode_shards, select_scales, training_batch
from sar_platform.storage import Workspace


def dataset_config(data, image_size: int):
    if data.dataset == "fashion_mnist":
        return FashionMNISTConfig(root=data.root, download=data.download)
    return ImageFolderConfig(root=data.root, image_size=image_size)


class ImageSource:
    """Images of one split as the tokenizer sees them: len() and batch(indices) -> (B, C, H, W)."""

    def __init__(self, data, tokenizer_config, split: str):
        self.size = tokenizer_config.image_size
        self.config = dataset_config(data, self.size)
        limit = data.limit if split == "train" else None
        if data.dataset == "fashion_mnist":
            images, labels = self.config.arrays(split)
            self.images_u8, self.labels = images[:limit], labels[:limit]
            self.dataset = None
        else:
            self.dataset = self.config.dataset(split)
            self.labels = self.dataset.labels[:limit]

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, indices: torch.Tensor) -> torch.Tensor:
        if self.dataset is None:
            return self.config.to_model_input(self.images_u8[indices.numpy()], self.size)
        return torch.stack([self.dataset[int(i)][0] for i in indices])

    def torch_dataset(self) -> torch.utils.data.Dataset:
        """(image, label) items, for encoding shards."""
        if self.dataset is not None:
            return torch.utils.data.Subset(self.dataset, range(len(self)))
        return torch.utils.data.TensorDataset(self.config.to_model_input(self.images_u8, self.size),
                                              torch.from_numpy(self.labels.astype(np.int64)))


def image_source(data, tokenizer_config, split: str) -> ImageSource:
    return ImageSource(data, tokenizer_config, split)


@dataclass(frozen=True)
class TokenShardsRef:
    """A finished shard set in the workspace (picklable: workers open it themselves)."""

    folder: str
    scales: tuple[int, ...]
    num_rows: int
    flip: bool
    fingerprint: str
    s3_endpoint: str | None = None

    def local(self) -> TokenShards:
        workspace = Workspace(self.folder, self.s3_endpoint)
        if workspace.is_local:
            return TokenShards(self.folder)
        return TokenShards(workspace.local_folder(self.folder))

    def select(self, tokens_BT: torch.Tensor, schedule) -> torch.Tensor:
        return select_scales(tokens_BT, self.scales, schedule)

    def ray_dataset(self):
        from sar_platform.ray_data import shard_dataset

        return shard_dataset(self.local().folder, expected_fingerprint=self.fingerprint)

    def first_rows(self, n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        columns = self.local().load()
        return (torch.tensor(columns["label"][:n], dtype=torch.long, device=device),
                torch.tensor(columns["tokens"][:n].astype(np.int64), device=device))

    def batches(self, job, rank: int, world: int, start_step: int, device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(labels, tokens of every stored scale) per training step, flips drawn per sample."""
        per_worker = job.optim.batch_size // world
        if job.data.loader == "ray_data":
            yield from self._stream(per_worker, job.seed, rank, start_step, device)
            return
        from sar_core.data.order import batch_indices

        columns = self.local().load()
        for step, idx in enumerate(batch_indices(self.num_rows, job.optim.batch_size, rank, world, job.seed, start_step), start_step):
            batch = {k: v[idx.numpy()] for k, v in columns.items() if k != "index"}
            yield self._to_device(batch, job.seed, rank, step, device)

    def _stream(self, per_worker: int, seed: int, rank: int, start_step: int, device):
        """Ray Data: a fresh streaming epoch whenever one ends. After a resume the epoch restarts
        (streams cannot seek); the steps already taken are not repeated, only the order differs."""
        import ray.train

        shard = ray.train.get_dataset_shard("train")
        step = start_step
        while True:
            for batch in shard.iter_torch_batches(batch_size=per_worker, drop_last=True, local_shuffle_buffer_size=4 * per_worker,
                                                  local_shuffle_seed=seed + step):
                yield self._to_device(batch, seed, rank, step, device)
                step += 1

    def _to_device(self, batch: dict, seed: int, rank: int, step: int, device):
        flips = torch.Generator().manual_seed(seed * 7_919 + step * 131 + rank)
        labels, tokens = training_batch({k: torch.as_tensor(np.asarray(v)) for k, v in batch.items()}, flips)
        return labels.to(device, non_blocking=True), tokens.to(device, non_blocking=True)


def shard_folder_name(data, fingerprint_: str) -> str:
    parts = [data.dataset, "train"]
    if data.limit is not None:
        parts.append(f"n{data.limit}")
    if data.flip:
        parts.append("flip")
    return "-".join(parts + [fingerprint_])


def ensure_token_shards(job, session) -> TokenShardsRef:
    """The job's token shards: found in the workspace, or encoded now by a Ray task."""
    from sar_platform.ray_env import run_task

    workspace = session.workspace
    tokenizer = load_model(workspace.local_copy(job.tokenizer), kind="tokenizer")
    fp = fingerprint(tokenizer)
    folder = workspace.path("shards", shard_folder_name(job.data, fp))
    if not workspace.exists(workspace.path("shards", shard_folder_name(job.data, fp), "_manifest.json")):
        print(f"[sar] tokenizing {job.data.dataset} into {folder}", flush=True)
        run_task(encode_task, job, folder, workspace, num_cpus=job.resources.cpus_per_worker,
                 num_gpus=1 if job.resources.use_gpu else 0)
    shards = TokenShards(workspace.local_folder(folder) if not workspace.is_local else folder).check_tokenizer(fp)
    return TokenShardsRef(folder, shards.scales, shards.num_rows, shards.meta.flip, fp, workspace.s3_endpoint)


def encode_task(job, folder: str, workspace: Workspace) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = load_model(workspace.local_copy(job.tokenizer), kind="tokenizer", device=device)
    images = ImageSource(job.data, tokenizer.config, "train")
    target = Path(folder) if workspace.is_local else Path(workspace.staging_dir(folder))
    encode_shards(tokenizer, images.torch_dataset(), target, dataset_name=job.data.dataset, split="train",
                  flip=job.data.flip, device=device)
    if not workspace.is_local:
        workspace.upload_folder(target, folder)
