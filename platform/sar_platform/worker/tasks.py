"""The bodies of the Ray tasks drivers launch before their workers start (kinds.py hands them to the
drivers): encoding a train job's token shards, and preparing the evaluation assets.

Runs inside Ray tasks.
"""
from __future__ import annotations

from pathlib import Path

import torch

from sar_core.checkpoint import load_model
from sar_core.data.shards import encode_shards
from sar_core.eval.evaluate import build_feature_network
from sar_core.eval.reference import real_reference
from sar_platform.services.storage import Workspace


def encode_token_shards(job, folder: str, workspace: Workspace) -> None:
    """Encode the job's training images with its tokenizer into Parquet shards at `folder`."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = load_model(workspace.local_copy(job.tokenizer), kind="tokenizer", device=device)
    images = job.data.images("train", tokenizer.config.image_size)
    target = Path(folder) if workspace.is_local else Path(workspace.staging_dir(folder))
    encode_shards(tokenizer, images.torch_dataset(), target, dataset_name=job.data.dataset, split="train",
                  flip=job.data.flip, device=device)
    if not workspace.is_local:
        workspace.upload_folder(target, folder)


def prepare_eval_assets(job, image_size: int, workspace: Workspace) -> str:
    """Train (or find) the feature network and the real reference features, into the cache the
    workers' evaluation reads (the workspace's eval-assets/ when it is on S3, so that workers on
    any node find them); returns what was prepared, for the driver's log."""
    data = job.data.image_dataset(image_size)
    cache = workspace.eval_cache()
    network = build_feature_network(job.eval.metrics, data, "cpu", cache_dir=cache, progress=True)
    real = real_reference(network, job.eval.metrics, data, image_size, cache_dir=cache)
    if (selection := getattr(job.eval, "selection_metrics", None)) is not None:  # the selection set's own reference
        real_reference(network, selection, data, image_size, cache_dir=cache)
    workspace.save_eval_cache(cache)
    return f"{network.fingerprint} vs {real.description}"
