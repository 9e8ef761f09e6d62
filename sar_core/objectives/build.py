"""The objective: one mechanism for every kind of OBJECTIVE_KINDS (kinds.py).

Every kind chooses the token maps that feed each scale, runs differentiable passes on them with
`model(label_B, x_BlCv, schedule)`, and grades them:

    tf             ground-truth inputs, cross-entropy to the ground truth            L_TF
    sf_*           inputs from a student-forcing schedule (student_forcing.py), CE to ground truth
    noisy_context  ground-truth inputs with tokens replaced at a rate (noisy_context.py), CE to ground truth
    sar            L_TF + gamma * L_CSF: the teacher pass above, then the Stagger-Scale Rollout
                   (rollout.py) graded by the Contrastive Student-Forcing Loss (csfl.py)    (sar.py)

Class dropout is drawn once per batch and shared by every pass of the step. All losses are
float32 sums of per-scale means weighted by `ScaleWeighting`.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from sar_core.generator import unwrap
from sar_core.objectives.batch import ObjectiveOutput, StepInputs, TokenBatch
from sar_core.objectives.config import ObjectiveConfig
from sar_core.objectives.diagnostics import gap_diagnostics
from sar_core.objectives.kinds import OBJECTIVE_KINDS
from sar_core.objectives.metrics import log_probs, per_scale_entries, per_scale_mean, to_floats, token_accuracy, token_nll
from sar_core.objectives.rollout import RolloutDraw
from sar_core.objectives.weighting import ScaleWeighting


class Objective:
    """`objective(model, batch, step, rng)` -> ObjectiveOutput(loss, metrics).

    `rng` (a torch.Generator on the batch's device, or None for the global one) drives class
    dropout and every token draw; `step` only matters to `sf_alternate`. The kind's entry in
    OBJECTIVE_KINDS runs the step; the kinds share this object's draw, weighting and grading.
    """

    def __init__(self, config: ObjectiveConfig):
        self.config = config
        self.kind = OBJECTIVE_KINDS[config.kind]
        self.draw = RolloutDraw(config.sampling, config.rollout)
        self.weighting = ScaleWeighting(config.weighting, config.dynamic_momentum)

    def __call__(self, model: nn.Module, batch: TokenBatch, step: int, rng: torch.Generator | None = None) -> ObjectiveOutput:
        gen = unwrap(model)
        label_B = gen.drop_labels(batch.labels, rng)
        inputs = StepInputs(model, batch, step, rng, label_B, gen.scale_inputs(batch.tokens, batch.schedule))
        return self.kind.step(self, inputs)

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
