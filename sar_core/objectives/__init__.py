"""SAR training objectives: teacher forcing, Self-Autoregressive Refinement (Stagger-Scale Rollout +
Contrastive Student-Forcing Loss) and the naive student-forcing baselines, as configurations of one API.

    objective = build_objective(ObjectiveConfig.from_preset("paper"))
    out = objective(model, TokenBatch(labels, tokens, schedule), step, rng)   # out.loss, out.metrics
    gap = objective.diagnostics(model, batch, rng)                             # train-test gap curves
"""
from sar_core.objectives.batch import ObjectiveOutput, TokenBatch
from sar_core.objectives.build import Objective, build_objective
from sar_core.objectives.config import OBJECTIVE_PRESETS, ObjectiveConfig, SamplingStrategy, merge_preset, unread_rollout_fields
from sar_core.objectives.csfl import csfl_loss
from sar_core.objectives.diagnostics import StudentForcingTrace, gap_diagnostics, probe_batch, student_forcing_trace
from sar_core.objectives.rollout import RolloutDraw, sequential_rollout, stagger_scale_rollout
from sar_core.objectives.weighting import ScaleWeighting

__all__ = [
    "OBJECTIVE_PRESETS", "Objective", "ObjectiveConfig", "ObjectiveOutput", "RolloutDraw", "SamplingStrategy",
    "ScaleWeighting", "StudentForcingTrace", "TokenBatch", "build_objective", "csfl_loss", "gap_diagnostics",
    "merge_preset", "probe_batch", "sequential_rollout", "stagger_scale_rollout", "student_forcing_trace", "unread_rollout_fields",
]
