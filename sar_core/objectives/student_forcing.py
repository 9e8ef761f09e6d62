"""Inputs of the naive student-forcing schedules of the paper's Table 3 (section 4.1).

Each schedule only decides which token map feeds each scale; the objective then runs one
differentiable pass on those inputs and grades every scale against the ground truth.

    sf_full        every scale from the model's own scale-by-scale rollout (inference conditions)
    sf_hybrid      scales smaller than `hybrid_scale` (a size) teacher-forced, the others predicted
                   from the model's own rollout, which starts from its prediction of the scale below
    sf_interleave  scales 1, 3, 5, .. (1-based) get teacher-forced inputs, scales 2, 4, 6, .. the
                   token drawn from a no-grad teacher pass's prediction of the scale below
    sf_alternate   sf_full on odd steps, teacher forcing on even steps (in build.py)
"""
from __future__ import annotations

from typing import Sequence

import torch

from sar_core.objectives.rollout import RolloutDraw, crop_inputs, draw_scales, predict, prefix, sequential_rollout
from sar_core.schedule import ScaleSchedule


def hybrid_start(schedule: ScaleSchedule, hybrid_scale: int) -> int:
    """Index of the last teacher-forced scale: its prediction is the first self-generated input.

    Scales smaller than `hybrid_scale` are teacher-forced; the first scale of size >= hybrid_scale and
    every finer one are predicted from the model's own rollout. "Hybrid @ 16" thus student-forces the
    16x16 scale alone (under "teacher-force up to and including k" it would be plain teacher forcing,
    yet the paper's Table 3 reports it apart from TF)."""
    if hybrid_scale > schedule.last:
        raise ValueError(f"sf_hybrid with hybrid_scale={hybrid_scale} leaves no student-forced scale in schedule "
                         f"{schedule}; hybrid_scale must be at most the last scale ({schedule.last})")
    return max(0, sum(s < hybrid_scale for s in schedule) - 1)


def interleaved_inputs(ground_truth: Sequence[torch.Tensor], drawn: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Map i feeds scale i+1 (0-based): even i (feeding 1-based scales 2, 4, ..) drawn, odd i ground truth."""
    return [d if i % 2 == 0 else g for i, (g, d) in enumerate(zip(ground_truth, drawn))]


def student_forced_inputs(kind: str, model, label_B: torch.Tensor, ground_truth: Sequence[torch.Tensor],
                          x_tf_BlCv: torch.Tensor, schedule: ScaleSchedule, draw: RolloutDraw,
                          hybrid_scale: int, rng: torch.Generator | None = None) -> list[torch.Tensor]:
    """The N-1 token maps that feed scales 2..N under a naive student-forcing schedule."""
    if kind == "sf_interleave":
        sub = prefix(schedule, len(schedule) - 1)
        cond, uncond = predict(model, label_B, crop_inputs(x_tf_BlCv, sub), sub, draw.guided)
        return interleaved_inputs(ground_truth, draw_scales(draw, cond, uncond, sub, len(schedule), rng))
    start = hybrid_start(schedule, hybrid_scale) if kind == "sf_hybrid" else 0
    return sequential_rollout(model, label_B, ground_truth, schedule, start, draw, rng)
