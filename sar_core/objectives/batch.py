"""What an objective consumes (a batch of ground-truth token maps), what each kind's step starts
from, and what it returns (a loss and metrics)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from sar_core.schedule import ScaleSchedule


@dataclass(frozen=True)
class TokenBatch:
    """Real class labels (B,) and the ground-truth tokens (B, L) of every scale of `schedule`.

    Labels are the real classes: class dropout happens inside the objective, once per batch, so that
    every pass of one step sees the same condition. The schedule may change from step to step.
    """

    labels: torch.Tensor
    tokens: torch.Tensor
    schedule: ScaleSchedule

    def __post_init__(self):
        if self.labels.ndim != 1 or self.labels.dtype != torch.int64:
            raise ValueError(f"labels must be a (B,) int64 tensor; got {self.labels.dtype} {tuple(self.labels.shape)}")
        B, L = self.labels.shape[0], self.schedule.num_tokens
        if self.tokens.dtype != torch.int64 or tuple(self.tokens.shape) != (B, L):
            raise ValueError(f"tokens must be a (B, L) = ({B}, {L}) int64 tensor for schedule {self.schedule}; "
                             f"got {self.tokens.dtype} {tuple(self.tokens.shape)}")
        if len(self.schedule) < 2:
            raise ValueError(f"objectives need a schedule of at least two scales; got {self.schedule}")

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "TokenBatch":
        return TokenBatch(self.labels.to(device, non_blocking=non_blocking),
                          self.tokens.to(device, non_blocking=non_blocking), self.schedule)

    def token_maps(self) -> list[torch.Tensor]:
        """Per-scale ground truth, flattened: (B, h_i * h_i) for every scale i."""
        return self.schedule.split(self.tokens)


@dataclass(frozen=True)
class StepInputs:
    """What every objective kind's step starts from. `label_B` holds the labels after this step's
    class dropout, drawn once and shared by every pass; `x_tf_BlCv` the teacher-forcing inputs
    (the ground truth of scales 1..N-1, up-sampled to feed scales 2..N)."""

    model: nn.Module
    batch: TokenBatch
    step: int
    rng: torch.Generator | None
    label_B: torch.Tensor
    x_tf_BlCv: torch.Tensor


@dataclass
class ObjectiveOutput:
    loss: torch.Tensor  # differentiable scalar
    metrics: dict[str, float] = field(default_factory=dict)
