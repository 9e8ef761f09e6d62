"""Gathering per-rank rows to rank 0 when evaluation runs data-parallel (torch.distributed).

Works with gloo (CPU) and nccl (GPU: tensors travel on the rank's current CUDA device). Each rank
contributes a different number of rows; rows are padded to the largest count for the collective
and trimmed again on rank 0.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_rows(array: np.ndarray) -> np.ndarray | None:
    """Concatenate every rank's (n_r, ...) array in rank order on rank 0; other ranks get None.

    Without an initialised process group this returns the array itself."""
    rank, world = rank_and_world()
    if world == 1:
        return array
    device = _comm_device()
    local = torch.from_numpy(np.ascontiguousarray(array)).to(device)
    counts = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world)]
    dist.all_gather(counts, torch.tensor([len(local)], device=device))
    counts = [int(c) for c in counts]
    padded = torch.zeros((max(counts), *local.shape[1:]), dtype=local.dtype, device=device)
    padded[: len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(world)] if rank == 0 else None
    dist.gather(padded, parts, dst=0)
    if rank != 0:
        return None
    return torch.cat([p[:n] for p, n in zip(parts, counts)]).cpu().numpy()


def barrier() -> None:
    if rank_and_world()[1] > 1:
        dist.barrier()
