"""The feature-network interface the metrics are computed from, and batched feature extraction.

A feature network maps images in [-1, 1] (B, C, H, W) to (features (B, D), logits (B, K)):
features feed FID and precision/recall, logits the Inception Score. Its `fingerprint` names the
network and hashes its weights, so every recorded metric says which frozen network produced it
(numbers are comparable only under the same fingerprint).

Images reach a network the way a saved sample would: quantised to uint8 first
(`quantize_uint8`), so metrics computed in memory equal those of the exported `.npz`.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
import torch.nn as nn


def state_fingerprint(model: nn.Module) -> str:
    """First 16 hex digits of a SHA-256 over the model's tensors (names, dtypes, values)."""
    h = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(str(value.dtype).encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class FeatureNetwork(nn.Module):
    """Base class: subclasses set `name`, `feature_dim`, `num_classes` and implement forward."""

    name: str = "feature-network"
    feature_dim: int = 0
    num_classes: int = 0

    def forward(self, images_BCHW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    @property
    def fingerprint(self) -> str:
        """`<name>:<weights hash>`; computed once, since the network is frozen."""
        if getattr(self, "_fingerprint", None) is None:
            self._fingerprint = f"{self.name}:{state_fingerprint(self)}"
        return self._fingerprint


def quantize_uint8(images_BCHW: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> uint8 [0, 255] (rounded), what a PNG or the ADM `.npz` would hold."""
    return ((images_BCHW.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def from_uint8(images_BCHW: torch.Tensor) -> torch.Tensor:
    return images_BCHW.float() / 127.5 - 1.0


@dataclass
class Features:
    """Features (N, D) and logits (N, K) of one image set, float32, in sample order."""

    features: np.ndarray
    logits: np.ndarray

    def __len__(self) -> int:
        return len(self.features)

    @staticmethod
    def concat(parts: Iterable["Features"]) -> "Features":
        parts = list(parts)
        return Features(np.concatenate([p.features for p in parts]), np.concatenate([p.logits for p in parts]))


@torch.no_grad()
def batch_features(network: FeatureNetwork, images_BCHW: torch.Tensor, device: str | torch.device = "cpu") -> Features:
    """Features of one batch of images in [-1, 1] (quantised to uint8 on the way, see module doc)."""
    x = from_uint8(quantize_uint8(images_BCHW)).to(device)
    feats, logits = network(x)
    return Features(feats.float().cpu().numpy(), logits.float().cpu().numpy())


def extract_features(
    network: FeatureNetwork,
    batches: Iterable[torch.Tensor],
    device: str | torch.device = "cpu",
) -> Features:
    """Stream batches of images through the network; only features and logits are kept."""
    network.eval()
    parts = [batch_features(network, images, device) for images in batches]
    if not parts:
        raise ValueError("no images to extract features from")
    return Features.concat(parts)
