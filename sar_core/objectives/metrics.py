"""Token-level losses, their per-scale reduction, and metric names.

Losses are computed in float32 whatever the autocast dtype of the logits. Per-scale metric keys
use the scale's SIZE (`tf/loss/s07` is the 7x7 scale), so curves stay comparable when the schedule
is redrawn every step. Metrics are gathered as tensors and turned into floats with a single
device-to-host copy per call.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from sar_core.schedule import ScaleSchedule


def scale_key(size: int) -> str:
    return f"s{size:02d}"


def log_probs(logits_BlV: torch.Tensor) -> torch.Tensor:
    """(B, l, V) logits -> float32 log-probabilities over the vocabulary."""
    return F.log_softmax(logits_BlV.float(), dim=-1)


def token_cross_entropy(logits_BlV: torch.Tensor, target_Bl: torch.Tensor) -> torch.Tensor:
    """(B, l, V) logits and (B, l) token indices -> (B, l) cross-entropy."""
    return token_nll(log_probs(logits_BlV), target_Bl)


def token_nll(log_probs_BlV: torch.Tensor, target_Bl: torch.Tensor) -> torch.Tensor:
    """Cross-entropy from log-probabilities: bit-identical to F.cross_entropy on the logits, which
    computes exactly this, so a pass whose log-probabilities are needed again computes them once."""
    return F.nll_loss(log_probs_BlV.flatten(0, 1), target_Bl.flatten(), reduction="none").view_as(target_Bl)


def token_kl(student_BlV: torch.Tensor, teacher_BlV: torch.Tensor) -> torch.Tensor:
    """(B, l) KL(teacher || student) per token; the teacher side is whatever the caller passes (detach it)."""
    return log_prob_kl(log_probs(student_BlV), log_probs(teacher_BlV))


def log_prob_kl(student_log_probs_BlV: torch.Tensor, teacher_log_probs_BlV: torch.Tensor) -> torch.Tensor:
    """`token_kl` from log-probabilities (B, l, V) -> (B, l)."""
    return F.kl_div(student_log_probs_BlV, teacher_log_probs_BlV, log_target=True, reduction="none").sum(-1)


def token_accuracy(logits_BlV: torch.Tensor, target_Bl: torch.Tensor) -> torch.Tensor:
    return (logits_BlV.argmax(-1) == target_Bl).float()


def per_scale_mean(values_BL: torch.Tensor, schedule: ScaleSchedule) -> torch.Tensor:
    """(B, L) per-token values over a whole schedule -> (N,) mean of each scale's tokens."""
    idx = schedule.scale_index(values_BL.device)
    sums = torch.zeros(len(schedule), device=values_BL.device).index_add_(0, idx, values_BL.float().sum(0))
    counts = torch.tensor(schedule.token_counts, device=values_BL.device, dtype=torch.float32)
    return sums / (counts * values_BL.shape[0])


def per_scale_entries(prefix: str, values_N: torch.Tensor, sizes: Sequence[int]) -> dict[str, torch.Tensor]:
    return {f"{prefix}/{scale_key(s)}": v for s, v in zip(sizes, values_N.detach().unbind(0))}


def to_floats(metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    """0-d tensors -> floats with one device sync."""
    if not metrics:
        return {}
    values = torch.stack([v.detach().float().reshape(()) for v in metrics.values()]).tolist()
    return dict(zip(metrics.keys(), values))
