"""The selection rule applied: a run's selection evaluations in, its best step and whether it has
stopped improving out.

`BestStep` is a pure function of the evaluations it has seen (`history`), so its whole state is
that list: the training loop saves it in every checkpoint and a resumed run replays it. Used by the
training loop (inside Ray Train workers) and by drivers, which record the outcome on the run.
"""
from __future__ import annotations

import math

from sar_platform.spec.selection import SELECT_PREFIX, SelectSpec

SELECTION_FILE = "selection.json"
"""In every checkpoint of a run with a selection rule: the evaluations it has seen ({"history": [[step, value], ...]})."""
CHECKPOINT_SCORE = "select/checkpoint_score"
"""What Ray Train ranks a checkpoint by (higher is kept), in its report only: k for the checkpoint of
the rule's k-th improvement, NaN (ranked last) for every other one. Each improvement beats every
earlier evaluation by the rule, so the current best always ranks first."""


class BestStep:
    """Tracks the best evaluation under `rule` and says when training should stop."""

    def __init__(self, rule: SelectSpec):
        self.rule = rule
        self.history: list[tuple[int, float]] = []
        self.best_step: int | None = None
        self.best_value = math.nan
        self.since_best = 0
        """Evaluations since the best one (the patience count)."""
        self.improvements = 0

    def improves(self, value: float) -> bool:
        """Whether `value` beats the best so far by the rule (a non-finite value never does)."""
        if not math.isfinite(value):
            return False
        if self.best_step is None:
            return True
        gain = self.best_value - value if self.rule.better == "min" else value - self.best_value
        return gain > 0 and gain >= self.rule.min_delta

    def observe(self, step: int, value: float) -> None:
        if self.should_stop:
            raise RuntimeError(f"the rule ended training at step {self.last_step}; no evaluation comes after it")
        value = float(value)
        self.history.append((step, value))
        if self.improves(value):
            self.best_step, self.best_value, self.since_best = step, value, 0
            self.improvements += 1
        else:
            self.since_best += 1

    @property
    def should_stop(self) -> bool:
        return self.rule.patience is not None and self.since_best >= self.rule.patience

    @property
    def last_step(self) -> int | None:
        return self.history[-1][0] if self.history else None

    def checkpoint_score(self, step: int) -> float:
        """The `CHECKPOINT_SCORE` of the checkpoint saved at `step`, just after its evaluation (if any)."""
        return float(self.improvements) if step == self.best_step else math.nan

    def score(self, step: int, metrics: dict[str, float]) -> dict[str, float]:
        """One selection evaluation's metrics under `select/`, after the rule has seen them, with its
        standing: the report of that step."""
        if self.rule.metric not in metrics:
            raise KeyError(f"the evaluation reported no {self.rule.metric} (it reported {sorted(metrics)})")
        self.observe(step, metrics[self.rule.metric])
        return {**{SELECT_PREFIX + k: v for k, v in metrics.items()}, **self.standing()}

    def standing(self) -> dict[str, float]:
        """The rule's state as metrics (MLflow curves; the last ones end up in the run's outputs)."""
        return {f"{SELECT_PREFIX}best_step": float(self.best_step if self.best_step is not None else -1),
                f"{SELECT_PREFIX}best_{self.rule.metric}": self.best_value,
                f"{SELECT_PREFIX}evaluations": float(len(self.history)),
                f"{SELECT_PREFIX}evaluations_since_best": float(self.since_best),
                f"{SELECT_PREFIX}stopped_early": float(self.should_stop)}

    def stop_reason(self) -> str | None:
        """Why training ended early, in words (None while it has not)."""
        if not self.should_stop:
            return None
        by = f" by at least {self.rule.min_delta:g}" if self.rule.min_delta else ""
        return (f"stopped at step {self.last_step}: {self.since_best} evaluations without improving{by} on "
                f"{self.rule.report_key} = {self.best_value:.4g} (step {self.best_step}); patience {self.rule.patience}")

    def outcome(self) -> str:
        """What the rule chose and why, in one line (recorded on the run and on the runs that use it)."""
        if self.best_step is None:
            return f"{self.rule.describe()}: no evaluation qualified ({len(self.history)} made)"
        ended = self.stop_reason() or f"trained to the end (step {self.last_step})"
        return (f"{self.rule.describe()}: best {self.rule.report_key} = {self.best_value:.4g} at step {self.best_step} "
                f"of {len(self.history)} evaluations; {ended}")

    def state_dict(self) -> dict:
        return {"history": [[step, value] for step, value in self.history]}

    def load_state_dict(self, state: dict) -> None:
        self.__init__(self.rule)
        for step, value in state["history"]:
            self.observe(int(step), float(value))

    @classmethod
    def from_history(cls, rule: SelectSpec, history) -> "BestStep":
        best = cls(rule)
        best.load_state_dict({"history": history})
        return best
