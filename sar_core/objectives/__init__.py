"""SAR training objectives: teacher forcing, Self-Autoregressive Refinement (Stagger-Scale Rollout +
Contrastive Student-Forcing Loss), the naive student-forcing baselines and noisy-context teacher
forcing, as configurations of one API; the kinds are the entries of OBJECTIVE_KINDS (kinds.py).

    objective = build_objective(ObjectiveConfig.from_preset("paper"))
    out = objective(model, TokenBatch(labels, tokens, schedule), step, rng)   # out.loss, out.metrics
    gap = objective.diagnostics(model, batch, rng)                             # train-test gap curves
"""
from sar_core.objectives.batch import ObjectiveOutput, TokenBatch
from sar_core.objectives.build import Objective, build_objective
from sar_core.objectives.config import OBJECTIVE_PRESETS, ObjectiveConfig, SamplingStrategy, merge_preset, unread_rollout_fields
from sar_core.objectives.csfl import csfl_loss
from sar_core.objectives.diagnostics import StudentForcingTrace, gap_diagnostics, probe_batch, student_forcing_trace
from sar_core.objectives.kinds import OBJECTIVE_KINDS, KindSpec
from sar_core.objectives.noisy_context import NOISE_SOURCES, corrupt_token_maps
from sar_core.objectives.rollout import RolloutDraw, sequential_rollout, stagger_scale_rollout
from sar_core.objectives.weighting import ScaleWeighting

__all__ = [
    "NOISE_SOURCES", "OBJECTIVE_KINDS", "OBJECTIVE_PRESETS", "KindSpec", "Objective", "ObjectiveConfig", "ObjectiveOutput",
    "RolloutDraw", "SamplingStrategy", "ScaleWeighting", "StudentForcingTrace", "TokenBatch", "build_objective",
    "corrupt_token_maps", "csfl_loss", "gap_diagnostics",
    "merge_preset", "probe_batch", "sequential_rollout", "stagger_scale_rollout", "student_forcing_trace", "unread_rollout_fields",
]
