"""Self-Autoregressive Refinement (kind `sar`): L_TF + gamma * L_CSF.

The teacher pass on ground-truth inputs gives L_TF; the Stagger-Scale Rollout (rollout.py) feeds
its drawn predictions one scale up to a student pass, which the Contrastive Student-Forcing Loss
(csfl.py) grades. gamma = 0 trains exactly like `tf` with the same weighting while still paying
for the rollout and logging `loss/csf`: a monitor of L_CSF under teacher forcing, not a cheaper TF.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

from sar_core.objectives.batch import ObjectiveOutput, StepInputs
from sar_core.objectives.csfl import csfl_loss, csfl_targets, graded_scales
from sar_core.objectives.metrics import log_probs, per_scale_entries
from sar_core.objectives.rollout import stagger_scale_rollout
from sar_core.objectives.teacher_forcing import TF_NLL, teacher_forced_nll
from sar_core.schedule import ScaleSchedule

if TYPE_CHECKING:
    from sar_core.objectives.build import Objective

SAR_FIELDS = ("gamma", "rollout_depth", "csfl_target", "csfl_scales", "student_context", "student_fraction",
              "residual_context")
_SCALES_WORDS = {"all": "all scales", "last": "the last scale", "random_one": "one random scale"}


def sar_step(objective: Objective, s: StepInputs) -> ObjectiveOutput:
    cfg, batch, schedule, label_B = objective.config, s.batch, s.batch.schedule, s.label_B
    teacher = s.model(label_B, s.x_tf_BlCv, schedule)
    teacher_logp = log_probs(teacher)  # once, for L_TF and the soft CSFL target
    loss_tf, metrics = objective.ground_truth_loss("tf", teacher, batch, teacher_logp)
    metrics[TF_NLL] = teacher_forced_nll(s, teacher)
    n = math.ceil(cfg.student_fraction * label_B.shape[0])  # the student rows: a cost knob
    graded = graded_scales(cfg.csfl_scales, len(schedule), s.rng)
    ssr = stagger_scale_rollout(s.model, label_B[:n], teacher[:n], s.x_tf_BlCv[:n], schedule, graded, objective.draw,
                                cfg.rollout_depth, cfg.student_context, cfg.csfl_target == "teacher_hard", s.rng,
                                [m[:n] for m in batch.token_maps()], cfg.residual_context)
    targets = csfl_targets(cfg.csfl_target, schedule, graded, teacher_logp[:n], ssr.teacher_samples, batch.tokens[:n])
    sizes = ScaleSchedule(schedule.scales[graded.start:graded.stop])
    loss_csf, csf_S = csfl_loss(ssr.logits, targets, sizes, objective.weighting(sizes.scales, teacher.device))
    metrics.update(per_scale_entries("csf/loss", csf_S, sizes.scales))
    return objective.output(loss_tf + cfg.gamma * loss_csf, {"loss/tf": loss_tf, "loss/csf": loss_csf}, metrics)


def describe_sar(config) -> list[str]:
    parts = [f"γ={config.gamma:g}", config.rollout_words(),
             *([f"rollout depth {config.rollout_depth}"] if config.rollout_depth > 1 else []),
             f"CSFL {config.csfl_target} on {_SCALES_WORDS[config.csfl_scales]}"]
    if config.student_context != "full" or config.student_fraction < 1:
        parts.append(f"student {config.student_context}, fraction {config.student_fraction:g}")
    return parts
