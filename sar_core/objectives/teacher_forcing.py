"""Teacher forcing (kind `tf`), and the one-pass step it shares with every kind graded on the
ground truth: run one differentiable pass on the chosen inputs, cross-entropy to the ground truth."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from sar_core.objectives.batch import ObjectiveOutput, StepInputs

if TYPE_CHECKING:
    from sar_core.objectives.build import Objective


def ground_truth_pass(name: str, objective: Objective, s: StepInputs, x_BlCv: torch.Tensor,
                      extra_metrics: dict[str, torch.Tensor] | None = None) -> ObjectiveOutput:
    """One pass on generator inputs `x_BlCv` graded on the ground truth: `loss/<name>` and per-scale
    `<name>/loss/sXX`, `<name>/acc/sXX`."""
    logits_BLV = s.model(s.label_B, x_BlCv, s.batch.schedule)
    loss, metrics = objective.ground_truth_loss(name, logits_BLV, s.batch)
    return objective.output(loss, {f"loss/{name}": loss}, {**metrics, **(extra_metrics or {})})


def teacher_forcing_step(objective: Objective, s: StepInputs) -> ObjectiveOutput:
    return ground_truth_pass("tf", objective, s, s.x_tf_BlCv)


def teacher_forcing_unread_draws(config) -> str:
    return "is not read by kind: tf: teacher forcing never draws tokens (use kind: sar or sf_*, or remove it)"
