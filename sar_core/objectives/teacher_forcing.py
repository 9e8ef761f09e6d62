"""Teacher forcing (kind `tf`), and the one-pass step it shares with every kind graded on the
ground truth: run one differentiable pass on the chosen inputs, cross-entropy to the ground truth."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from sar_core.generator import unwrap
from sar_core.objectives.batch import ObjectiveOutput, StepInputs
from sar_core.objectives.metrics import token_cross_entropy

if TYPE_CHECKING:
    from sar_core.objectives.build import Objective


TF_NLL = "loss/tf_nll"
"""The training batch's cross-entropy per token under teacher forcing, one formula for every kind
(whatever context it trains on and however it weights scales): the training curve arms compare on."""


def teacher_forced_nll(s: StepInputs, teacher_BLV: torch.Tensor | None = None) -> torch.Tensor:
    """TF_NLL from the step's teacher-forced logits, or, for a kind without a teacher-forced pass,
    from one more pass without grad whose drop-path draws come from a forked RNG, so that training
    continues exactly as it would without the measurement."""
    if teacher_BLV is None:
        device = s.batch.tokens.device
        with torch.no_grad(), torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
            teacher_BLV = unwrap(s.model)(s.label_B, s.x_tf_BlCv, s.batch.schedule)
    return token_cross_entropy(teacher_BLV.detach(), s.batch.tokens).mean()


def ground_truth_pass(name: str, objective: Objective, s: StepInputs, x_BlCv: torch.Tensor,
                      extra_metrics: dict[str, torch.Tensor] | None = None) -> ObjectiveOutput:
    """One pass on generator inputs `x_BlCv` graded on the ground truth: `loss/<name>`, per-scale
    `<name>/loss/sXX`, `<name>/acc/sXX`, and TF_NLL (from this pass when it is teacher forcing)."""
    logits_BLV = s.model(s.label_B, x_BlCv, s.batch.schedule)
    loss, metrics = objective.ground_truth_loss(name, logits_BLV, s.batch)
    metrics[TF_NLL] = teacher_forced_nll(s, logits_BLV if x_BlCv is s.x_tf_BlCv else None)
    return objective.output(loss, {f"loss/{name}": loss}, {**metrics, **(extra_metrics or {})})


def teacher_forcing_step(objective: Objective, s: StepInputs) -> ObjectiveOutput:
    return ground_truth_pass("tf", objective, s, s.x_tf_BlCv)


def teacher_forcing_unread_draws(config) -> str:
    return "is not read by kind: tf: teacher forcing never draws tokens (use kind: sar or sf_*, or remove it)"
