"""The naive student-forcing schedules of the paper's Table 3 (section 4.1), kinds `sf_*`.

Each schedule only decides which token map feeds each scale; the step then runs one
differentiable pass on those inputs and grades every scale against the ground truth (`loss/sf`).

    sf_full        every scale from the model's own scale-by-scale rollout (inference conditions)
    sf_hybrid      scales smaller than `hybrid_scale` (a size) teacher-forced, the others predicted
                   from the model's own rollout, which starts from its prediction of the scale below
    sf_interleave  scales 1, 3, 5, .. (1-based) get teacher-forced inputs, scales 2, 4, 6, .. the
                   token drawn from a no-grad teacher pass's prediction of the scale below
    sf_alternate   sf_full on odd steps, teacher forcing on even steps
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

import torch

from sar_core.objectives.batch import ObjectiveOutput, StepInputs
from sar_core.objectives.rollout import sequential_rollout, shifted_inputs, teacher_draws
from sar_core.objectives.teacher_forcing import ground_truth_pass, teacher_forcing_step
from sar_core.schedule import ScaleSchedule

if TYPE_CHECKING:
    from sar_core.objectives.build import Objective

InputMaps = Callable[["Objective", StepInputs], list[torch.Tensor]]


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


def full_inputs(objective: Objective, s: StepInputs) -> list[torch.Tensor]:
    return sequential_rollout(s.model, s.label_B, s.batch.token_maps(), s.batch.schedule, 0, objective.draw, s.rng)


def hybrid_inputs(objective: Objective, s: StepInputs) -> list[torch.Tensor]:
    start = hybrid_start(s.batch.schedule, objective.config.hybrid_scale)
    return sequential_rollout(s.model, s.label_B, s.batch.token_maps(), s.batch.schedule, start, objective.draw, s.rng)


def interleave_inputs(objective: Objective, s: StepInputs) -> list[torch.Tensor]:
    drawn = teacher_draws(s.model, s.label_B, s.x_tf_BlCv, s.batch.schedule, objective.draw, s.rng)
    return interleaved_inputs(s.batch.token_maps(), drawn)


def student_forcing_step(inputs: InputMaps):
    """The step of a schedule whose N-1 input maps (feeding scales 2..N) `inputs` chooses."""

    def step(objective: Objective, s: StepInputs) -> ObjectiveOutput:
        maps = inputs(objective, s)
        return ground_truth_pass("sf", objective, s, shifted_inputs(s.model, maps, s.batch.schedule))

    return step


sf_full_step = student_forcing_step(full_inputs)
sf_hybrid_step = student_forcing_step(hybrid_inputs)
sf_interleave_step = student_forcing_step(interleave_inputs)


def sf_alternate_step(objective: Objective, s: StepInputs) -> ObjectiveOutput:
    return (teacher_forcing_step if s.step % 2 == 0 else sf_full_step)(objective, s)


def describe_rollout(config) -> list[str]:
    return [config.rollout_words()]


def describe_hybrid(config) -> list[str]:
    return [f"{config.rollout_words()} from scale {config.hybrid_scale}"]


def hybrid_schedule_conflicts(config, last: int, where: str) -> list[tuple[str, str]]:
    """sf_hybrid needs every schedule to reach `hybrid_scale`."""
    if config.hybrid_scale <= last:
        return []
    return [("hybrid_scale", f"{config.hybrid_scale} leaves no student-forced scale in {where} at {last}x{last}; "
                             f"use a size <= {last}")]
