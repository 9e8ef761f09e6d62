"""The objective: one mechanism for teacher forcing, SAR and the naive student-forcing schedules.

Every kind chooses the token maps that feed each scale, runs differentiable passes on them with
`model(label_B, x_BlCv, schedule)`, and grades them:

    tf             ground-truth inputs, cross-entropy to the ground truth            L_TF
    sf_*           inputs from a student-forcing schedule (student_forcing.py), CE to ground truth
    sar            L_TF + gamma * L_CSF: the teacher pass above, then the Stagger-Scale Rollout
                   (rollout.py) graded by the Contrastive Student-Forcing Loss (csfl.py)

Class dropout is drawn once per batch and shared by every pass of the step. All losses are
float32 sums of per-scale means weighted by `ScaleWeighting`.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from sar_core.generator import unwrap
from sar_core.objectives.batch import ObjectiveOutput, TokenBatch
from sar_core.objectives.config import ObjectiveConfig
from sar_core.objectives.csfl import csfl_loss, csfl_targets, graded_scales
from sar_core.objectives.diagnostics import gap_diagnostics
from sar_core.objectives.metrics import log_probs, per_scale_entries, per_scale_mean, to_floats, token_accuracy, token_nll
from sar_core.objectives.rollout import RolloutDraw, shifted_inputs, stagger_scale_rollout
from sar_core.objectives.student_forcing import student_forced_inputs
from sar_core.objectives.weighting import ScaleWeighting
from sar_core.schedule import ScaleSchedule


class Objective:
    """`objective(model, batch, step, rng)` -> ObjectiveOutput(loss, metrics).

    `rng` (a torch.Generator on the batch's device, or None for the global one) drives class
    dropout and every token draw; `step` only matters to `sf_alternate`.
    """

    def __init__(self, config: ObjectiveConfig):
        self.config = config
        self.draw = RolloutDraw(config.sampling, config.rollout)
        self.weighting = ScaleWeighting(config.weighting, config.dynamic_momentum)

    def __call__(self, model: nn.Module, batch: TokenBatch, step: int, rng: torch.Generator | None = None) -> ObjectiveOutput:
        kind = self.config.kind
        if kind == "sf_alternate":
            kind = "tf" if step % 2 == 0 else "sf_full"
        gen = unwrap(model)
        label_B = gen.drop_labels(batch.labels, rng)
        x_tf = gen.scale_inputs(batch.tokens, batch.schedule)
        if kind == "tf":
            loss, metrics = self.ground_truth_loss("tf", model(label_B, x_tf, batch.schedule), batch)
            return self.output(loss, {"loss/tf": loss}, metrics)
        if kind == "sar":
            return self.sar(model, label_B, x_tf, batch, rng)
        inputs = student_forced_inputs(kind, model, label_B, batch.token_maps(), x_tf, batch.schedule, self.draw,
                                       self.config.hybrid_scale, rng)
        logits = model(label_B, shifted_inputs(model, inputs, batch.schedule), batch.schedule)
        loss, metrics = self.ground_truth_loss("sf", logits, batch)
        return self.output(loss, {"loss/sf": loss}, metrics)

    def sar(self, model, label_B, x_tf, batch: TokenBatch, rng) -> ObjectiveOutput:
        cfg, schedule = self.config, batch.schedule
        teacher = model(label_B, x_tf, schedule)
        teacher_logp = log_probs(teacher)  # once, for L_TF and the soft CSFL target
        loss_tf, metrics = self.ground_truth_loss("tf", teacher, batch, teacher_logp)
        n = math.ceil(cfg.student_fraction * label_B.shape[0])  # the student rows: a cost knob
        graded = graded_scales(cfg.csfl_scales, len(schedule), rng)
        ssr = stagger_scale_rollout(model, label_B[:n], teacher[:n], x_tf[:n], schedule, graded, self.draw,
                                    cfg.rollout_depth, cfg.student_context, cfg.csfl_target == "teacher_hard", rng)
        targets = csfl_targets(cfg.csfl_target, schedule, graded, teacher_logp[:n], ssr.teacher_samples, batch.tokens[:n])
        sizes = ScaleSchedule(schedule.scales[graded.start:graded.stop])
        loss_csf, csf_S = csfl_loss(ssr.logits, targets, sizes, self.weighting(sizes.scales, teacher.device))
        metrics.update(per_scale_entries("csf/loss", csf_S, sizes.scales))
        return self.output(loss_tf + cfg.gamma * loss_csf, {"loss/tf": loss_tf, "loss/csf": loss_csf}, metrics)

    def ground_truth_loss(self, name: str, logits_BLV: torch.Tensor, batch: TokenBatch, log_probs_BLV=None):
        """Weighted cross-entropy of a pass to the ground truth; feeds the dynamic weighting.
        `log_probs_BLV`: the pass's log-probabilities when the caller needs them too (computed once)."""
        schedule, sizes = batch.schedule, batch.schedule.scales
        logp = log_probs(logits_BLV) if log_probs_BLV is None else log_probs_BLV
        loss_N = per_scale_mean(token_nll(logp, batch.tokens), schedule)
        self.weighting.observe(sizes, loss_N)
        w_N = self.weighting(sizes, logits_BLV.device)
        acc_N = per_scale_mean(token_accuracy(logits_BLV.detach(), batch.tokens), schedule)
        metrics = {
            **per_scale_entries(f"{name}/loss", loss_N, sizes),
            **per_scale_entries(f"{name}/acc", acc_N, sizes),
            **per_scale_entries("weight", w_N, sizes),
        }
        return (w_N * loss_N).sum(), metrics

    @staticmethod
    def output(loss: torch.Tensor, losses: dict, metrics: dict) -> ObjectiveOutput:
        return ObjectiveOutput(loss, to_floats({"loss/total": loss, **losses, **metrics}))

    def diagnostics(self, model: nn.Module, batch: TokenBatch, rng: torch.Generator | None = None) -> dict[str, float]:
        """The train-test gap curves (diagnostics.py); no grad, eval mode, real labels."""
        return gap_diagnostics(model, batch, self.draw, rng)

    def state_dict(self) -> dict:
        return {"weighting": self.weighting.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.weighting.load_state_dict(state["weighting"])


def build_objective(config: ObjectiveConfig) -> Objective:
    return Objective(config)
