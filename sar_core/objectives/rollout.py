"""Self-generated inputs: drawing tokens from predictions, the Stagger-Scale Rollout, and the
scale-by-scale rollout of naive student forcing.

Every objective feeds the generator token maps, one per scale: the input of scale i+1 is scale
i's map, embedded with the codebook and bicubic-up-sampled to scale i+1's size, exactly as the
generation does at inference (`shifted_inputs`). Teacher forcing feeds ground truth; student forcing
feeds tokens drawn from the model's own predictions. Drawn tokens are integers made under
no_grad, so no gradient flows through sampling.

Every forward goes through `model(...)` (a DistributedDataParallel wrapper included); passes that
only produce tokens run under no_grad, and with `cfg` sampling they are batched with the
null-class pass that guidance needs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn

from sar_core.generator import unwrap
from sar_core.schedule import ScaleSchedule
from sar_core.token_sampling import SamplingConfig, sample_tokens


@dataclass(frozen=True)
class RolloutDraw:
    """Draws tokens from logits: `argmax`, `stochastic` (temperature, top-k, top-p) or `cfg`
    (the same, from guided logits (1+w)*cond - w*uncond with w on the settings' ramp)."""

    strategy: str
    settings: SamplingConfig

    @property
    def guided(self) -> bool:
        return self.strategy == "cfg"

    def __call__(self, cond_BlV, uncond_BlV, scale_index_l: torch.Tensor, num_scales: int, rng=None) -> torch.Tensor:
        """Tokens (B, l) for positions whose scale indices (within a schedule of `num_scales`) are given."""
        if self.strategy == "argmax":
            return cond_BlV.argmax(-1)
        logits = cond_BlV.float()
        if self.guided:
            ramp = torch.tensor([self.settings.cfg_at(i, num_scales) for i in range(num_scales)], device=logits.device)
            w_l1 = ramp[scale_index_l].unsqueeze(-1)
            # cond + w * (cond - uncond), in one buffer: these draws cover most of the pass's logits
            logits = torch.sub(logits, uncond_BlV.float()).mul_(w_l1).add_(logits)
        s = self.settings
        return sample_tokens(logits, s.top_k, s.top_p, s.temperature, rng)


def prefix(schedule: ScaleSchedule, n: int) -> ScaleSchedule:
    """The first n scales (a pass over a prefix gives the same logits for them, by causality)."""
    return schedule if n == len(schedule) else ScaleSchedule(schedule.scales[:n])


def crop_inputs(x_BlCv: torch.Tensor, sub: ScaleSchedule) -> torch.Tensor:
    """Inputs of a schedule cropped to those of its prefix `sub`."""
    return x_BlCv[:, : sub.num_tokens - sub.token_counts[0]]


def shifted_inputs(model: nn.Module, tokens: Sequence[torch.Tensor], schedule: ScaleSchedule) -> torch.Tensor:
    """Token maps (B, h_i^2) of scales 1..N-1 -> generator inputs (B, L - h_1^2, Cvae) of scales 2..N,
    built the way the model's family builds them (FlexVAR: each map up-sampled; VAR: the running f-hat)."""
    return unwrap(model).inputs_from_maps(tokens, schedule)


def null_labels(model: nn.Module, label_B: torch.Tensor) -> torch.Tensor:
    return torch.full_like(label_B, unwrap(model).config.null_class)


@torch.no_grad()
def predict(model, label_B, x_BlCv, schedule, guided: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A no-grad pass for drawing tokens: conditional logits, and with guidance the null-class
    logits from the same call (batch doubled)."""
    if not guided:
        return model(label_B, x_BlCv, schedule), None
    both = model(torch.cat([label_B, null_labels(model, label_B)]), torch.cat([x_BlCv, x_BlCv]), schedule)
    return both.chunk(2)


def draw_scales(draw: RolloutDraw, cond_BLV, uncond_BLV, schedule: ScaleSchedule, num_scales: int, rng=None):
    """Draw all scales of a (prefix) schedule at once -> list of (B, h_i^2) token maps."""
    idx = draw(cond_BLV.detach(), uncond_BLV, schedule.scale_index(cond_BLV.device), num_scales, rng)
    return schedule.split(idx)


def span(schedule: ScaleSchedule, scales: range) -> slice:
    """Sequence positions of the consecutive scales `scales` of a schedule."""
    return slice(schedule.slices[scales.start].start, schedule.slices[scales.stop - 1].stop)


@dataclass
class StudentRollout:
    graded: range  # consecutive scale indices the student pass is graded on
    logits: torch.Tensor  # (B, l, V) student logits of the graded scales, differentiable
    inputs: list[torch.Tensor]  # token maps (B, h^2) of the scales fed to the student pass
    teacher_samples: list[torch.Tensor]  # tokens drawn from the teacher pass, scales 0..


def stagger_scale_rollout(
    model: nn.Module,
    label_B: torch.Tensor,
    teacher_logits_BLV: torch.Tensor,
    x_tf_BlCv: torch.Tensor,
    schedule: ScaleSchedule,
    graded: range,
    draw: RolloutDraw,
    depth: int = 1,
    context: str = "full",
    sample_graded: bool = False,
    rng: torch.Generator | None = None,
    ground_truth: Sequence[torch.Tensor] | None = None,
    residual_context: str = "ground_truth_below",
) -> StudentRollout:
    """SSR: shift the teacher pass's drawn predictions one scale up and run the student pass on them.

    Scale i's tokens are drawn from the teacher's scale-i prediction and feed scale i+1, so scale
    i+1 is predicted from self-generated context (eq. 6). With depth k > 1 the shift-and-pass is
    repeated: pass m+1's inputs are drawn from pass m's predictions (the k-1 intermediate passes run
    without grad and with full context); the last pass is the student pass, with gradient. Context
    `full`: one parallel pass over the scales up to the highest graded one; `single_scale`: the
    student sees only the start (class) token and the up-sampled input of its one graded scale.
    `sample_graded` also draws the teacher's tokens at the graded scales (hard CSFL targets).
    `ground_truth` (the batch's token maps) and `residual_context` feed families whose inputs
    accumulate every earlier scale (VAR's f-hat): `ground_truth_below` keeps the ground truth below
    the drawn scale, `own_draws` accumulates the drawn maps of every earlier scale
    (`VarGenerator.staggered_inputs`); FlexVAR's inputs read the drawn map alone.
    """
    N, top = len(schedule), graded.stop - 1
    sub = prefix(schedule, top + 1 if sample_graded else top)
    uncond = None
    if draw.guided:
        uncond = predict(model, null_labels(model, label_B), crop_inputs(x_tf_BlCv, sub), sub, guided=False)[0]
    teacher_samples = draw_scales(draw, teacher_logits_BLV[:, : sub.num_tokens], uncond, sub, N, rng)
    inputs = teacher_samples[:top]
    feed = prefix(schedule, top)
    gen = unwrap(model)

    def staggered(maps, sub):
        return gen.staggered_inputs(ground_truth, maps, sub, residual_context)

    for _ in range(depth - 1):
        cond, uncond = predict(model, label_B, staggered(inputs, feed), feed, draw.guided)
        inputs = draw_scales(draw, cond, uncond, feed, N, rng)
    logits = student_pass(model, label_B, inputs, schedule, graded, context, staggered)
    return StudentRollout(graded, logits, inputs, teacher_samples)


def student_pass(model, label_B, inputs, schedule: ScaleSchedule, graded: range, context: str, staggered) -> torch.Tensor:
    """Differentiable pass on self-generated inputs -> (B, l, V) logits of the graded scales."""
    if context == "single_scale":
        if len(graded) != 1:
            raise ValueError(f"a single-scale student pass grades one scale, got {len(graded)}")
        s = graded.start
        pair = ScaleSchedule((schedule[0], schedule[s]))
        x_BlCv = staggered(inputs, prefix(schedule, s + 1))[:, -schedule.token_counts[s]:]  # scale s's input alone
        return model(label_B, x_BlCv, pair)[:, pair.slices[1]]
    sub = prefix(schedule, graded.stop)
    return model(label_B, staggered(inputs, sub), sub)[:, span(sub, graded)]


@torch.no_grad()
def sequential_rollout(
    model: nn.Module,
    label_B: torch.Tensor,
    tokens: Sequence[torch.Tensor],
    schedule: ScaleSchedule,
    start: int,
    draw: RolloutDraw,
    rng: torch.Generator | None = None,
) -> list[torch.Tensor]:
    """Naive student forcing: replace the token maps of scales start..N-2 by the model's own draws,
    one scale at a time, each predicted from the maps before it (ground truth below `start`, own
    draws from `start` on). This is inference (`sar_core.generation.generate`) seeded with ground truth
    below `start`; each step is one pass over the scales so far. Returns the N-1 input maps."""
    tokens = list(tokens[: len(schedule) - 1])
    N = len(schedule)
    for i in range(start, N - 1):
        sub = prefix(schedule, i + 1)
        cond, uncond = predict(model, label_B, shifted_inputs(model, tokens, sub), sub, draw.guided)
        last = sub.slices[i]
        uncond_i = None if uncond is None else uncond[:, last]
        tokens[i] = draw(cond[:, last], uncond_i, torch.full((sub.token_counts[i],), i, device=cond.device), N, rng)
    return tokens


def teacher_draws(model: nn.Module, label_B: torch.Tensor, x_tf_BlCv: torch.Tensor, schedule: ScaleSchedule,
                  draw: RolloutDraw, rng: torch.Generator | None = None) -> list[torch.Tensor]:
    """Tokens drawn from a no-grad teacher-forced pass's predictions of scales 1..N-1: each map is
    the model's own one-step guess of the ground-truth map at that place (they feed scales 2..N)."""
    sub = prefix(schedule, len(schedule) - 1)
    cond, uncond = predict(model, label_B, crop_inputs(x_tf_BlCv, sub), sub, draw.guided)
    return draw_scales(draw, cond, uncond, sub, len(schedule), rng)
