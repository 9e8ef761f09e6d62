"""Training settings shared by the `tokenizer` and `train` job kinds.

Validation runs in the `sar` process when a spec is loaded; workers only read the validated tree.
"""
from __future__ import annotations

from dataclasses import fields, replace
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from sar_core.eval.guidance import EvalSampling, guidance_weights
from sar_core.objectives import ObjectiveConfig, SamplingStrategy, merge_preset, unread_rollout_fields
from sar_core.schedule import DrawRule, ScaleSchedule, ScheduleDraw
from sar_core.token_sampling import SamplingConfig, merge_sampling_preset
from sar_platform.spec.common import StrictModel, Unread


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

    def unread_fields(self) -> Unread:
        if self.lr_schedule == "constant":
            return {("min_lr_ratio",): "is only read with lr_schedule: linear or cosine (here constant)"}
        return {}

    def length(self) -> str:
        return f"{self.steps} steps" if self.steps is not None else f"{self.epochs:g} epochs"

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
    draw_rule: DrawRule = "keep_last"
    """With `random`: `flexvar` is the reference code's draw (the token cap may drop the last scale, so
    a third of the 256-px draws end below 16x16); `keep_last` always ends at the latent size."""

    @field_validator("scales")
    @classmethod
    def _valid(cls, v):
        ScaleSchedule(v)  # raises a ScheduleError (a ValueError) naming the problem
        return v

    @model_validator(mode="after")
    def _random_settings(self):
        if self.random:
            self.draw()  # validates max_tokens against the default schedule
        return self

    def unread_fields(self) -> Unread:
        if self.random:
            return {}
        why = "is only read with schedule.random: true (a fixed schedule draws nothing)"
        return {("default_prob",): why, ("max_tokens",): why, ("draw_rule",): why}

    @property
    def default(self) -> ScaleSchedule:
        return ScaleSchedule(self.scales)

    def draw(self) -> ScheduleDraw:
        return ScheduleDraw(self.default, default_prob=self.default_prob, max_tokens=self.max_tokens, rule=self.draw_rule)

    def smallest_last(self) -> int:
        """The smallest size any schedule of the job ends at."""
        return self.draw().smallest_last() if self.random else self.scales[-1]


def expand_objective_preset(value: Any) -> Any:
    """`objective: {preset: released_code, gamma: 0.05}` -> the preset's fields with the user's on top."""
    if isinstance(value, dict) and value.get("preset"):
        rest = {k: v for k, v in value.items() if k != "preset"}
        return merge_preset(value["preset"], rest)
    return value


Objective = Annotated[ObjectiveConfig, BeforeValidator(expand_objective_preset)]


def expand_sampling_preset(value: Any) -> Any:
    """`sampling: {preset: flexvar_eval, cfg: 2.0}` -> the preset's fields with the user's on top."""
    if isinstance(value, dict) and "preset" in value:
        rest = {k: v for k, v in value.items() if k != "preset"}
        return merge_sampling_preset(value["preset"], rest)
    return value


Sampling = Annotated[SamplingConfig, BeforeValidator(expand_sampling_preset)]


def expand_eval_sampling(value: Any) -> Any:
    """The preset expanded, and a `cfg` list checked as a guidance grid here, so that a bad grid
    is one error naming the fix (not one per reading of the union)."""
    if isinstance(value, SamplingConfig) and not isinstance(value, EvalSampling):
        return {f.name: getattr(value, f.name) for f in fields(SamplingConfig)}
    value = expand_sampling_preset(value)
    if isinstance(value, dict) and isinstance(value.get("cfg"), (list, tuple, str)):
        return {**value, "cfg": guidance_weights(value["cfg"])}
    return value


ScoringSampling = Annotated[EvalSampling, BeforeValidator(expand_eval_sampling)]
"""An evaluation's sampler: `cfg` one guidance weight or a list (a grid, sar_core/eval/guidance.py)."""


class CheckpointSpec(StrictModel):
    every_steps: int = Field(500, ge=1)
    """Checkpoint (model, optimizer, lr schedule, step, objective state) every N steps and at the end."""
    keep: int = Field(2, ge=1)
    """How many checkpoints Ray Train keeps (the newest)."""


class ProbeSpec(StrictModel):
    """The probe behind the train-test-gap diagnostics and the student-forcing figure: the same
    held-out images and the same token sampler for every run of a comparison, whatever each run's
    own objective, so that TF's and SAR's `diag/*` curves mean the same thing on one chart. Set it
    once on a pipeline or sweep (its steps and trials share it)."""

    images: int = Field(64, ge=2)
    """Held-out images in the probe batch (seeded choice)."""
    split: str = "test"
    """The data set split they come from (held out from training)."""
    seed: int = Field(0, ge=0)
    """Seeds the choice of images and every token the probe draws."""
    sampling: Literal["eval", "argmax", "stochastic", "cfg"] = "eval"
    """How the probe draws self-generated tokens. eval: with the job's eval.sampling (cfg on its
    ramp, top-k, top-p, temperature; not FlexVAR's per-size rules), the contexts inference sees;
    argmax: deterministic, one rollout per class; stochastic / cfg: with `rollout`."""
    rollout: SamplingConfig = SamplingConfig()
    """Sampling settings for sampling: stochastic or cfg."""
    draws: int = Field(4, ge=1)
    """Rollouts per probe image (K): a stochastic sampler draws each image's contexts K times."""
    calibration_fraction: float = Field(0.5, gt=0.0, lt=1.0)
    """Share of the probe images (seeded choice) the calibrated gaps' temperature is fitted on; the
    calibrated gaps are measured on the other images."""

    def unread_fields(self) -> Unread:
        if self.sampling == "eval":
            return {("rollout",): "is not read with sampling: eval (the probe draws with eval.sampling; "
                                  "use sampling: stochastic or cfg, or remove it)"}
        out = {tuple(k.split(".")): why for k, why in unread_rollout_fields(self.sampling, self.rollout).items()}
        if self.sampling == "argmax":
            out[("draws",)] = ("is not read with sampling: argmax (every argmax rollout of an image is the same; "
                               "use sampling: eval, stochastic or cfg)")
        return out

    def draw(self, eval_sampling: SamplingConfig) -> tuple[str, SamplingConfig]:
        """(strategy, settings) of the probe's RolloutDraw: `eval` is the evaluation sampler's (at
        the first weight of a guidance grid, so every run of a comparison probes alike), less
        FlexVAR's per-size rules (flexvar_max_size), which exist in generation only."""
        if self.sampling != "eval":
            return self.sampling, self.rollout
        if isinstance(eval_sampling, EvalSampling):
            eval_sampling = eval_sampling.at(eval_sampling.grid[0]) if eval_sampling.grid else eval_sampling.single()
        return ("cfg" if eval_sampling.cfg > 0 else "stochastic"), replace(eval_sampling, flexvar_max_size=None)

    def rollout_draws(self) -> int:
        return 1 if self.sampling == "argmax" else self.draws

    def describe(self, dataset: str, eval_sampling: SamplingConfig) -> str:
        strategy, settings = self.draw(eval_sampling)
        sampler = "eval sampler, " if self.sampling == "eval" else ""
        draw = "argmax" if strategy == "argmax" else f"{sampler}{strategy} ({settings.summary()}) x{self.draws}"
        return (f"{dataset}/{self.split}[n={self.images},seed={self.seed}], {draw} rollout, "
                f"calibrated on {self.calibration_fraction:g}")


class LogSpec(StrictModel):
    every_steps: int = Field(50, ge=1)
    """Training metrics (averaged over the steps since the last report and over workers) every N steps."""
    diagnostics_every: int = Field(0, ge=0)
    """Train-test-gap diagnostics (per-scale TF / SF loss, accuracy, divergence) every N steps (0: never)."""
