"""The Contrastive Student-Forcing Loss: what the student pass is compared with, on which scales.

Targets (`csfl_target`), all without gradient:
    teacher_soft  KL(teacher || student) per token against the teacher pass's detached distribution
                  (the paper's equation 10; passed as the log-probabilities L_TF already computed)
    teacher_hard  cross-entropy to the token drawn from the teacher's prediction at that scale
                  (the released code)
    ground_truth  cross-entropy to the ground-truth token (Algorithm 1, line 24: naive student forcing)
Scales (`csfl_scales`): `all` transitions 1->2 .. N-1->N, the `last` one, or one `random_one` per step.
The first scale is never graded: it is predicted from the class token alone, as in the teacher pass.
"""
from __future__ import annotations

from typing import Sequence

import torch

from sar_core.objectives.metrics import log_prob_kl, log_probs, per_scale_mean, token_cross_entropy
from sar_core.objectives.rollout import span
from sar_core.schedule import ScaleSchedule


def graded_scales(csfl_scales: str, num_scales: int, rng: torch.Generator | None = None) -> range:
    """The consecutive scale indices whose student prediction is graded this step."""
    if csfl_scales == "all":
        return range(1, num_scales)
    if csfl_scales == "last":
        return range(num_scales - 1, num_scales)
    device = rng.device if rng is not None else None
    s = int(torch.randint(1, num_scales, (1,), generator=rng, device=device))
    return range(s, s + 1)


def csfl_targets(csfl_target: str, schedule: ScaleSchedule, graded: range, teacher_log_probs_BLV: torch.Tensor,
                 teacher_samples: Sequence[torch.Tensor], tokens_BL: torch.Tensor) -> torch.Tensor:
    """Targets of the graded scales, without gradient: the teacher's log-probabilities (B, l, V) or
    token indices (B, l)."""
    if csfl_target == "teacher_soft":
        return teacher_log_probs_BLV[:, span(schedule, graded)].detach()
    if csfl_target == "teacher_hard":
        return torch.cat(list(teacher_samples[graded.start:graded.stop]), dim=1)
    return tokens_BL[:, span(schedule, graded)]


def csfl_loss(student_BlV: torch.Tensor, target: torch.Tensor, graded: ScaleSchedule, weights_S: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """sum_s w_s * (mean over scale s's tokens of the per-token loss) -> (loss, (S,) per-scale losses).

    `graded` is the schedule of the graded scales' sizes. A target with a vocabulary axis is a
    teacher distribution as log-probabilities (KL); otherwise token indices (cross-entropy).
    """
    if target.ndim == student_BlV.ndim:
        token_loss = log_prob_kl(log_probs(student_BlV), target)
    else:
        token_loss = token_cross_entropy(student_BlV, target)
    per_scale = per_scale_mean(token_loss, graded)
    return (weights_S * per_scale).sum(), per_scale
