"""What a driver hands to its workers, resolved on the driver: paths and URIs only, no step
references, nothing open (every object here is plain, picklable data).

Made in the `sar` process (driver/inputs.py); read inside Ray Train workers (worker/).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from sar_core.data.shards import TokenShards, select_scales
from sar_platform.services.storage import Workspace


@dataclass(frozen=True)
class TokenShardsRef:
    """A finished shard set in the workspace (workers open it themselves)."""

    folder: str
    scales: tuple[int, ...]
    num_rows: int
    flip: bool
    fingerprint: str
    s3_endpoint: str | None = None

    def local(self) -> TokenShards:
        """The shard set on this machine (downloaded once when the workspace is remote)."""
        return TokenShards(Workspace(self.folder, self.s3_endpoint).local_folder(self.folder))

    def select(self, tokens_BT: torch.Tensor, schedule) -> torch.Tensor:
        """Cut a schedule's tokens out of the stored scales."""
        return select_scales(tokens_BT, self.scales, schedule)


@dataclass(frozen=True)
class TrainInputs:
    """What a train job's workers read."""

    tokenizer: str
    init_from: str | None
    shards: TokenShardsRef
    steps: int
    step_offset: int = 0
    """The global step of the checkpoint `init_from` (0 from scratch): this run's steps continue it."""
    origin: str = ""
    """Which run's checkpoint `init_from` is ("job @ step N"; empty from scratch)."""
    probe: str = ""
    """What the diagnostics probe is (data set split, images, seed, sampler), for the run's tags."""
