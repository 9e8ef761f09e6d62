"""Noisy-context teacher forcing (kind `noisy_context`): the cheap exposure-bias remedy.

Teacher forcing whose input token maps (scales 1..N-1, which feed scales 2..N) have each token
replaced independently with probability `noise_rate`; the targets stay the ground truth, and the
step is one differentiable pass, like `tf`. It carries Infinity's bitwise self-correction over to
index tokens: the model learns to predict the true next scale from a context with errors in it.
Replacement tokens come from `noise_source`:

    random  uniform codebook entries
    model   the model's own draws from a no-grad teacher-forced pass, with the objective's rollout
            sampler (`sampling`, `rollout`): errors of the kind it makes one scale deep

A replacement may equal the ground truth (1/V of uniform draws, often for the model's own), so
`noisy/replaced` (≈ noise_rate) and `noisy/changed` (the inputs that differ from the ground truth)
are both logged.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

import torch

from sar_core.generator import unwrap
from sar_core.objectives.batch import ObjectiveOutput, StepInputs
from sar_core.objectives.rollout import shifted_inputs, teacher_draws
from sar_core.objectives.teacher_forcing import ground_truth_pass

if TYPE_CHECKING:
    from sar_core.objectives.build import Objective

NOISY_FIELDS = ("noise_rate", "noise_source")


def random_tokens(objective: Objective, s: StepInputs) -> list[torch.Tensor]:
    """Uniform codebook indices shaped like the ground-truth maps of scales 1..N-1."""
    V = unwrap(s.model).config.vocab_size
    maps = s.batch.token_maps()[:-1]
    return [torch.randint(0, V, m.shape, generator=s.rng, device=m.device) for m in maps]


def model_tokens(objective: Objective, s: StepInputs) -> list[torch.Tensor]:
    return teacher_draws(s.model, s.label_B, s.x_tf_BlCv, s.batch.schedule, objective.draw, s.rng)


NOISE_SOURCES: dict[str, Callable[["Objective", StepInputs], list[torch.Tensor]]] = {
    "random": random_tokens,
    "model": model_tokens,
}


def corrupt_token_maps(clean: Sequence[torch.Tensor], replacements: Sequence[torch.Tensor], rate: float,
                       rng: torch.Generator | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Each token of the (B, l) maps `clean` replaced by the same token of `replacements` with
    probability `rate`, independently -> (the corrupted maps, the (B, sum l) bool replacement mask)."""
    clean_BL = torch.cat(list(clean), dim=1)
    replace_BL = torch.rand(clean_BL.shape, generator=rng, device=clean_BL.device) < rate
    noisy_BL = torch.where(replace_BL, torch.cat(list(replacements), dim=1), clean_BL)
    return list(noisy_BL.split([m.shape[1] for m in clean], dim=1)), replace_BL


def noisy_context_step(objective: Objective, s: StepInputs) -> ObjectiveOutput:
    cfg, clean = objective.config, s.batch.token_maps()[:-1]
    if cfg.noise_rate == 0:  # nothing is replaced: skip drawing replacements (the model source's extra pass)
        return ground_truth_pass("noisy", objective, s, s.x_tf_BlCv, noise_metrics(clean, clean, None))
    replacements = NOISE_SOURCES[cfg.noise_source](objective, s)
    noisy, replaced_BL = corrupt_token_maps(clean, replacements, cfg.noise_rate, s.rng)
    x_BlCv = shifted_inputs(s.model, noisy, s.batch.schedule)
    return ground_truth_pass("noisy", objective, s, x_BlCv, noise_metrics(clean, noisy, replaced_BL))


def noise_metrics(clean, noisy, replaced_BL: torch.Tensor | None) -> dict[str, torch.Tensor]:
    changed_BL = torch.cat(list(noisy), dim=1) != torch.cat(list(clean), dim=1)
    replaced = changed_BL if replaced_BL is None else replaced_BL
    return {"noisy/replaced": replaced.float().mean(), "noisy/changed": changed_BL.float().mean()}


def noisy_unread_draws(config) -> str | None:
    """The model source draws with the rollout sampler; the random source and rate 0 draw nothing."""
    if config.noise_rate == 0:
        return "is not read with noise_rate: 0 (no input token is replaced; raise noise_rate, or remove it)"
    if config.noise_source == "random":
        return "is only read with noise_source: model (random replacements are uniform codebook entries)"
    return None


def noisy_unread_own(config) -> dict[str, str]:
    if config.noise_rate == 0:
        return {"noise_source": "is not read with noise_rate: 0 (no input token is replaced; raise noise_rate, "
                                "or remove it)"}
    return {}


def describe_noisy(config) -> list[str]:
    source = f"{config.sampling} draws of the model" if config.noise_source == "model" else "uniform tokens"
    return [f"inputs replaced at p={config.noise_rate:g} by {source}"]
