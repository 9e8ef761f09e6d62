"""Training settings shared by the `tokenizer` and `train` job kinds.

Validation runs in the `sar` process when a spec is loaded; workers only read the validated tree.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from sar_core.objectives import ObjectiveConfig, merge_preset
from sar_core.schedule import ScaleSchedule, ScheduleDraw
from sar_platform.spec.common import StrictModel


class OptimSpec(StrictModel):
    """AdamW, the reference recipe (no decay on 1-D tensors and position/scale maps)."""

    lr: float = Field(1e-4, gt=0, le=10)
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.95)
    weight_decay: float = Field(0.05, ge=0, le=10)
    warmup_steps: int = Field(0, ge=0)
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    """Final lr as a fraction of `lr` for the linear / cosine schedules."""
    grad_clip: float = Field(2.0, ge=0)
    """Max global gradient norm (0: no clipping)."""
    batch_size: int = Field(64, ge=1, le=2**20)
    """Global batch: split evenly over the workers (a multiple of resources.num_workers, at most the
    number of training rows)."""
    steps: int | None = Field(None, ge=1)
    epochs: float | None = Field(None, gt=0, le=1e6)
    """Training length: exactly one of `steps` and `epochs` (epochs are converted with the dataset size)."""

    @model_validator(mode="after")
    def _one_length(self):
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("set exactly one of optim.steps and optim.epochs")
        return self

    def total_steps(self, dataset_size: int) -> int:
        if self.steps is not None:
            return self.steps
        return max(1, round(self.epochs * dataset_size / self.batch_size))


class ScheduleSpec(StrictModel):
    """The scale schedule: fixed, or FlexVAR's new random draw every iteration."""

    scales: tuple[int, ...]
    """The default schedule (coarse to fine); its last scale must equal the tokenizer's latent size."""
    random: bool = False
    """Draw a new schedule every iteration (FlexVAR), so the model serves any schedule afterwards."""
    default_prob: float = Field(0.05, ge=0, le=1)
    """With `random`: probability of using `scales` itself in an iteration."""
    max_tokens: int | None = Field(None, ge=1)
    """With `random`: cap on tokens per drawn schedule (FlexVAR: 680 at 256 px)."""

    @field_validator("scales")
    @classmethod
    def _valid(cls, v):
        ScaleSchedule(v)  # raises a ScheduleError (a ValueError) naming the problem
        return v

    @model_validator(mode="after")
    def _random_settings(self):
        if not self.random and ("default_prob" in self.model_fields_set or "max_tokens" in self.model_fields_set):
            raise ValueError("schedule.default_prob / schedule.max_tokens only apply with schedule.random: true")
        if self.random:
            self.draw()  # validates max_tokens against the default schedule
        return self

    @property
    def default(self) -> ScaleSchedule:
        return ScaleSchedule(self.scales)

    def draw(self) -> ScheduleDraw:
        return ScheduleDraw(self.default, default_prob=self.default_prob, max_tokens=self.max_tokens)


def expand_objective_preset(value: Any) -> Any:
    """`objective: {preset: released_code, gamma: 0.05}` -> the preset's fields with the user's on top."""
    if isinstance(value, dict) and "preset" in value:
        rest = {k: v for k, v in value.items() if k != "preset"}
        return merge_preset(value["preset"], rest)
    return value


Objective = Annotated[ObjectiveConfig, BeforeValidator(expand_objective_preset)]


class CheckpointSpec(StrictModel):
    every_steps: int = Field(500, ge=1)
    """Checkpoint (model, optimizer, lr schedule, step, objective state) every N steps and at the end."""
    keep: int = Field(2, ge=1)
    """How many checkpoints Ray Train keeps (the newest)."""


class LogSpec(StrictModel):
    every_steps: int = Field(50, ge=1)
    """Training metrics (averaged over the steps since the last report and over workers) every N steps."""
    diagnostics_every: int = Field(0, ge=0)
    """Train-test-gap diagnostics (per-scale TF / SF loss, accuracy, divergence) every N steps (0: never)."""
