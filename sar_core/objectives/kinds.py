"""The objective kinds, as one table: adding a kind is one module (its step) and one entry here.

Each entry says how a training step of the kind runs, which kind-specific config fields it reads,
whether it draws tokens (and so reads `sampling` and `rollout`), how it describes itself, and what
it needs of a schedule. `ObjectiveConfig` derives its `kind` choices, `unread_fields()` and
`summary()` from the table, `Objective` dispatches on it, and the platform asks it about schedules.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from sar_core.objectives.batch import ObjectiveOutput, StepInputs
from sar_core.objectives.noisy_context import (NOISY_FIELDS, describe_noisy, noisy_context_step, noisy_unread_draws,
                                               noisy_unread_own)
from sar_core.objectives.sar import SAR_FIELDS, describe_sar, sar_step
from sar_core.objectives.student_forcing import (describe_hybrid, describe_rollout, hybrid_schedule_conflicts,
                                                 sf_alternate_step, sf_full_step, sf_hybrid_step, sf_interleave_step)
from sar_core.objectives.teacher_forcing import teacher_forcing_step, teacher_forcing_unread_draws

Config = Any  # an ObjectiveConfig (config.py builds on this table, so it cannot be imported here)


def _draws_tokens(config: Config) -> None:
    return None


def _nothing(config: Config) -> dict[str, str]:
    return {}


def _no_parts(config: Config) -> list[str]:
    return []


def _any_schedule(config: Config, last: int, where: str) -> list[tuple[str, str]]:
    return []


@dataclass(frozen=True)
class KindSpec:
    step: Callable[[Any, StepInputs], ObjectiveOutput]
    """(objective, inputs) -> the loss and metrics of one training step."""
    doc: str
    """What the kind trains on, in one line."""
    fields: tuple[str, ...] = ()
    """The kind-specific config fields it reads (any kind not listing a field leaves it unread)."""
    unread_draws: Callable[[Config], str | None] = _draws_tokens
    """config -> why this configuration draws no tokens (so `sampling` and `rollout` are unread); None: it draws."""
    unread_own: Callable[[Config], dict[str, str]] = _nothing
    """config -> those of its own `fields` this configuration leaves unread, and why."""
    describe: Callable[[Config], list[str]] = _no_parts
    """config -> the summary's words between the kind's name and the weighting."""
    schedule_conflicts: Callable[[Config, int, str], list[tuple[str, str]]] = _any_schedule
    """(config, smallest last scale, where that scale comes from) -> (field, problem) it cannot train with."""


OBJECTIVE_KINDS: dict[str, KindSpec] = {
    "tf": KindSpec(teacher_forcing_step, "ground-truth inputs, cross-entropy to the ground truth (L_TF)",
                   unread_draws=teacher_forcing_unread_draws),
    "sar": KindSpec(sar_step, "L_TF + gamma * L_CSF: Stagger-Scale Rollout graded by the Contrastive Student-Forcing Loss",
                    fields=SAR_FIELDS, describe=describe_sar),
    "sf_full": KindSpec(sf_full_step, "inputs from the model's own scale-by-scale rollout, CE to the ground truth",
                        describe=describe_rollout),
    "sf_alternate": KindSpec(sf_alternate_step, "tf on even steps, sf_full on odd steps", describe=describe_rollout),
    "sf_interleave": KindSpec(sf_interleave_step, "every other scale's input drawn from a teacher pass, CE to the "
                                                  "ground truth", describe=describe_rollout),
    "sf_hybrid": KindSpec(sf_hybrid_step, "teacher forcing below hybrid_scale, the model's own rollout from it",
                          fields=("hybrid_scale",), describe=describe_hybrid, schedule_conflicts=hybrid_schedule_conflicts),
    "noisy_context": KindSpec(noisy_context_step, "teacher forcing with input tokens replaced at noise_rate, CE to the "
                                                  "ground truth", fields=NOISY_FIELDS, unread_draws=noisy_unread_draws,
                              unread_own=noisy_unread_own, describe=describe_noisy),
}



def readers_of_fields() -> dict[str, tuple[str, ...]]:
    """Kind-specific config field -> the kinds that read it."""
    out: dict[str, tuple[str, ...]] = {}
    for name, spec in OBJECTIVE_KINDS.items():
        for field in spec.fields:
            out[field] = (*out.get(field, ()), name)
    return out


KIND_FIELDS = readers_of_fields()
