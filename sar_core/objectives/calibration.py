"""Temperature calibration of the probe: one temperature per model, fitted on part of the probe.

A model can lower its cross-entropy under a mismatched context by hedging (flattening every
prediction) without predicting any better. Scoring every context with logits / T, where T minimises
the teacher-forced cross-entropy on a held-apart calibration part of the probe, takes that freedom
away: a model whose logits are divided by c is fitted T / c and scores exactly as before.
"""
from __future__ import annotations

import dataclasses
import math

import torch

from sar_core.objectives.rollout import RolloutDraw

TEMPERATURE_BOUNDS = (0.01, 100.0)
"""The fitted temperature is searched (on log T) within these bounds and clamped to them."""


def calibration_split(num_images: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(calibration rows, measurement rows) of `num_images`: a seeded permutation, the first
    round(fraction * n) rows (at least 1, at most n - 1) for calibration, the rest for measurement."""
    if num_images < 2:
        raise ValueError(f"a calibrated probe needs at least 2 images (1 to fit, 1 to measure); got {num_images}")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"calibration_fraction must be in (0, 1); got {fraction}")
    order = torch.randperm(num_images, generator=torch.Generator().manual_seed(seed))
    n_cal = min(max(round(fraction * num_images), 1), num_images - 1)
    return order[:n_cal].sort().values, order[n_cal:].sort().values


def mean_slope(logits_NV: torch.Tensor, target_N: torch.Tensor, beta: float) -> float:
    """d/d(beta) of the mean cross-entropy of beta * logits: E_p[z] - z_target, averaged (float64 sum).
    It increases with beta (the cross-entropy is convex in beta), which makes the root unique."""
    expected = (torch.softmax(logits_NV * beta, dim=-1) * logits_NV).sum(-1)
    return (expected.double() - logits_NV.gather(-1, target_N[:, None])[:, 0].double()).mean().item()


@torch.no_grad()
def fit_temperature(logits_BlV: torch.Tensor, target_Bl: torch.Tensor, iters: int = 60) -> float:
    """The T minimising the mean cross-entropy of logits_BlV / T to `target_Bl`.

    Bisection on log T of the cross-entropy's slope in 1 / T: monotone, so robust (no step size,
    no local minima), and equivariant (logits / c give exactly T / c). A minimum beyond the bounds
    returns the nearer bound (e.g. targets the model never ranks first: T -> infinity)."""
    z_NV = logits_BlV.float().flatten(0, -2)
    y_N = target_Bl.flatten()
    lo, hi = math.log(1 / TEMPERATURE_BOUNDS[1]), math.log(1 / TEMPERATURE_BOUNDS[0])  # on log(1 / T)
    if mean_slope(z_NV, y_N, math.exp(lo)) >= 0:
        return TEMPERATURE_BOUNDS[1]
    if mean_slope(z_NV, y_N, math.exp(hi)) <= 0:
        return TEMPERATURE_BOUNDS[0]
    for _ in range(iters):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mean_slope(z_NV, y_N, math.exp(mid)) < 0 else (lo, mid)
    return math.exp(-(lo + hi) / 2)


def calibrated_draw(draw: RolloutDraw, temperature: float) -> RolloutDraw:
    """`draw` applied to logits / temperature. Guidance is linear in the logits and top-k only ranks
    them, so dividing by the temperature is the same as multiplying the sampler's own temperature."""
    settings = dataclasses.replace(draw.settings, temperature=draw.settings.temperature * temperature)
    return RolloutDraw(draw.strategy, settings)
