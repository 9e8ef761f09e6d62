"""`eval.select`: the stated rule that picks a train run's best checkpoint from its periodic
evaluations, and optionally ends training once they stop improving.

Validation runs in the `sar` process when a spec is loaded; workers only read the validated tree
(the rule itself is applied by services/selection.py).
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from sar_platform.spec.common import Seed, StrictModel

BETTER = {"fid": "min", "is": "max", "precision": "max", "recall": "max"}
"""Each selectable metric and the direction in which it improves."""
SELECT_PREFIX = "select/"
"""Metrics of selection evaluations are logged under this prefix (`select/fid`, ...), apart from the
final evaluation's, which is made on another sample set."""


class SelectSpec(StrictModel):
    """Periodic evaluations score a *selection* sample set (its own seed) and the run keeps the step
    whose score is best by this rule; `step:<name>@best` takes that checkpoint."""

    metric: Literal["fid", "is", "precision", "recall"] = "fid"
    """The evaluation metric the rule compares."""
    mode: Literal["min", "max"] | None = None
    """Whether lower (min) or higher (max) is better; left out: the metric's own direction (fid: min,
    the others: max). A mode against that direction is refused."""
    seed: Seed = 1
    """Seeds the selection samples (generation and the choice of real reference images); it must
    differ from eval.metrics.seed, the final evaluation's, so the reported score is not the one the
    checkpoint was chosen on."""
    patience: int | None = Field(None, ge=1)
    """End training after this many evaluations in a row without an improvement (None: train all steps)."""
    min_delta: float = Field(0.0, ge=0)
    """An evaluation improves on the best so far when it is better by at least this much (and
    strictly better); only improvements move the best step and reset the patience count."""

    @model_validator(mode="after")
    def _direction(self):
        if self.mode is not None and self.mode != BETTER[self.metric]:
            raise ValueError(f"mode: {self.metric} is better when {'lower' if BETTER[self.metric] == 'min' else 'higher'}; "
                             f"use mode: {BETTER[self.metric]} (or leave mode out)")
        return self

    @property
    def better(self) -> Literal["min", "max"]:
        return self.mode or BETTER[self.metric]

    @property
    def report_key(self) -> str:
        """The key of the selection metric in a training report (and MLflow)."""
        return SELECT_PREFIX + self.metric

    def describe(self) -> str:
        """The rule in one line, as it is recorded on the run."""
        best = "lowest" if self.better == "min" else "highest"
        rule = f"{best} {self.report_key} (selection samples, seed {self.seed})"
        if self.min_delta:
            rule += f", improving by at least {self.min_delta:g}"
        if self.patience is not None:
            rule += f"; stop after {self.patience} evaluation{'s' if self.patience > 1 else ''} without improvement"
        return rule
