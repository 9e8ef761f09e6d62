"""Comparisons a parent run (pipeline, sweep) makes of its children, with their uncertainty.

An arm is one configuration: a pipeline step, or one configuration of a sweep, with its final
metrics per training seed. Each arm is reported as
    one run:   the metric and its bootstrap standard error (sample-draw noise only)
    n seeds:   the mean and its 95% t-interval across seeds (training and sample noise)
and every other arm against the baseline arm as a difference with its 95% interval:
    paired     the arms share seeds and their starting checkpoint: t-interval of the per-seed differences
    unpaired   Welch's interval of the two means
    one run    each: a - b ± 1.96 sqrt(se_a^2 + se_b^2), sample-draw noise only.
A difference whose interval contains 0 is "within noise". Arms whose runs measured the train-test
gap diagnostics (on the shared probe) also get the gap per scale, mean and 95% interval across seeds,
as a table and a figure.

Runs in the `sar` process.
"""
from __future__ import annotations

import math
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from sar_core.eval import HEADLINE_METRICS
from sar_core.eval.uncertainty import difference_of_two, excludes_zero, mean_ci, paired_difference, unpaired_difference
from sar_core.objectives.metrics import scale_key
from sar_platform.driver.report import DECIMALS, comparison_table, gap_figure, log_table
from sar_platform.services.tracking import RunHandle, flatten, metric_key
from sar_platform.spec.reads import read_spec

GAP_CONTEXTS = ("sf", "ar")  # one-step student forcing, full rollout: each against diag/tf on the same probe
PER_SCALE = re.compile(r"diag/tf/loss/s(\d+)$")  # the scales an arm measured (keys named by `scale_key`)

NOT_SETTINGS = ("name", "description", "tokenizer", "init_from", "kind", "storage.", "mlflow.", "log.", "checkpoint.")
"""Params that say where a run lives or what it logs, not what it trains: left out of "settings that differ"."""


@dataclass
class Arm:
    name: str
    summary: str  # one line: what the arm is
    settings: dict[str, str]  # its run's params (flattened resolved spec)
    results: dict[int, dict] = field(default_factory=dict)  # training seed -> final metrics (with *_se)
    start: str | None = None  # the checkpoint it starts from (pairing needs the same one)

    def values(self, metric: str) -> dict[int, float]:
        return {seed: m[metric] for seed, m in self.results.items() if isinstance(m.get(metric), (int, float))}


@dataclass(frozen=True)
class Estimate:
    value: float
    half_width: float  # 95%; nan when unknown
    n: int
    basis: str  # "SE" (one run: half_width is the standard error), "CI" (seeds), or a difference's basis

    def cell(self, metric: str, signed: bool = False) -> str:
        d = DECIMALS.get(metric, 3)
        value = f"{self.value:+.{d}f}" if signed else f"{self.value:.{d}f}"
        if math.isnan(self.value):
            return "-"
        if math.isnan(self.half_width):
            return value
        if self.basis == "SE":
            return f"{value} (SE {self.half_width:.{d}f})"
        mark = " *" if signed and excludes_zero(self.value, self.half_width) else ""
        return f"{value} ± {self.half_width:.{d}f}{mark}"


def estimate(arm: Arm, metric: str) -> Estimate:
    values = arm.values(metric)
    if len(values) == 1:
        (seed, value), = values.items()
        return Estimate(value, arm.results[seed].get(f"{metric}_se", math.nan), 1, "SE")
    mean, half, n = mean_ci(list(values.values()))
    return Estimate(mean, half, n, "CI")


def difference(arm: Arm, base: Arm, metric: str) -> Estimate:
    a, b = arm.values(metric), base.values(metric)
    if len(a) == 1 and len(b) == 1:
        ea, eb = estimate(arm, metric), estimate(base, metric)
        d, half = difference_of_two(ea.value, ea.half_width, eb.value, eb.half_width)
        return Estimate(d, half, 1, "one run each: sample-draw noise only")
    if arm.start == base.start and len(a.keys() & b.keys()) >= 2:
        d, half, n = paired_difference(a, b)
        return Estimate(d, half, n, f"paired over {n} seeds")
    d, half, n = unpaired_difference(list(a.values()), list(b.values()))
    return Estimate(d, half, n, "unpaired (Welch)")


def differing_settings(arms: list[Arm]) -> list[str]:
    keys = sorted({k for a in arms for k in a.settings if not k.startswith(NOT_SETTINGS) and k not in NOT_SETTINGS})
    return [k for k in keys if len({a.settings.get(k) for a in arms}) > 1]


@dataclass
class Comparison:
    arms: list[Arm]
    baseline: str | None  # the arm the others are compared against

    def metrics(self) -> list[str]:
        return [m for m in HEADLINE_METRICS if any(a.values(m) for a in self.arms)]

    def base(self) -> Arm | None:
        return next((a for a in self.arms if a.name == self.baseline), None)

    def others(self) -> list[Arm]:
        return [a for a in self.arms if a is not self.base()] if self.base() is not None else []

    def rows(self) -> list[dict]:
        """One row per arm: its name, what it is, each metric with its uncertainty (`_se` for one
        run, `_ci95` across seeds) and the settings that differ between arms."""
        keys = differing_settings(self.arms)
        out = []
        for arm in self.arms:
            row = {"arm": arm.name, "n": max(1, len(arm.results)), "what": arm.summary}
            for m in self.metrics():
                e = estimate(arm, m)
                row.update({m: e.value, f"{m}_{'se' if e.basis == 'SE' else 'ci95'}": e.half_width})
            row.update({k: arm.settings.get(k, "-") for k in keys})
            out.append(row)
        return out

    def differences(self) -> list[dict]:
        """Every other arm against the baseline: per metric the difference, its 95% half-width,
        whether the interval excludes 0, and the basis of the interval."""
        out = []
        for arm in self.others():
            row = {"difference": f"{arm.name} - {self.baseline}"}
            for m in self.metrics():
                e = difference(arm, self.base(), m)
                row.update({f"{m}_diff": e.value, f"{m}_ci95": e.half_width,
                            f"{m}_beyond_noise": excludes_zero(e.value, e.half_width), "basis": e.basis})
            out.append(row)
        return out

    def verdicts(self) -> list[str]:
        """One plain sentence per compared arm on whether its FID differs from the baseline's beyond noise."""
        lines = []
        for row, arm in zip(self.differences(), self.others()):
            if "fid_diff" not in row or math.isnan(row["fid_ci95"]):
                continue
            a, b = estimate(arm, "fid").value, estimate(self.base(), "fid").value
            side = "lower" if row["fid_diff"] < 0 else "higher"
            verdict = ("a difference beyond the noise" if row["fid_beyond_noise"] else
                       "within the noise: these runs cannot tell them apart")
            lines.append(f"{arm.name} vs {self.baseline}: FID {a:.2f} vs {b:.2f}, {abs(row['fid_diff']):.2f} {side} "
                         f"± {row['fid_ci95']:.2f} (95%, {row['basis']}) - {verdict}.")
        return lines

    def parent_metrics(self) -> dict[str, float]:
        """What the parent run records: every arm's numbers and every difference with its interval."""
        out = {}
        for row in self.rows():
            for m in self.metrics():
                for k in (m, f"{m}_se", f"{m}_ci95"):
                    if isinstance(row.get(k), float) and not math.isnan(row[k]):
                        out[metric_key(f"compare/{row['arm']}/{k}")] = row[k]
        for row in self.differences():
            name = row["difference"].replace(" - ", "-")
            for k, v in row.items():
                if k.endswith(("_diff", "_ci95", "_beyond_noise")) and not (isinstance(v, float) and math.isnan(v)):
                    out[metric_key(f"diff/{name}/{k}")] = float(v)
        return out

    def gaps(self) -> list[dict]:
        """Per arm, student context and scale: the loss gap to teacher forcing on the probe
        (diag/<context>/loss/sNN - diag/tf/loss/sNN), mean and 95% interval across seeds."""
        out = []
        for arm in self.arms:
            scales = sorted({int(m.group(1)) for r in arm.results.values() for k in r if (m := PER_SCALE.match(k))})
            for context in GAP_CONTEXTS:
                for s in scales:
                    tf = arm.values(f"diag/tf/loss/{scale_key(s)}")
                    student = arm.values(f"diag/{context}/loss/{scale_key(s)}")
                    per_seed = [student[k] - tf[k] for k in student if k in tf]
                    if per_seed:
                        gap, half, n = mean_ci(per_seed)
                        out.append({"arm": arm.name, "context": context, "scale": s, "gap": gap, "ci95": half, "n": n})
        return out

    def gap_cells(self) -> list[dict]:
        """The headline gaps (scales 2..N, token-weighted) of every arm that has them, for the printed table."""
        cells = []
        for arm in self.arms:
            row = {"arm": arm.name}
            for context in GAP_CONTEXTS:
                e = estimate(arm, f"diag/gap/{context}")
                if not math.isnan(e.value):
                    row[f"gap/{context}"] = e.cell("gap")
            if len(row) > 1:
                cells.append(row)
        return cells

    def render(self) -> str:
        """The printed comparison: arms, differences against the baseline, and the verdicts."""
        metrics = self.metrics()
        cells = [{"arm": a.name, "n": max(1, len(a.results)), **{m: estimate(a, m).cell(m) for m in metrics}}
                 for a in self.arms]
        text = [comparison_table(cells, ["arm", "n", *metrics]), *(f"  {a.name}: {a.summary}" for a in self.arms),
                "  (one run: the metric and its bootstrap standard error over the generated samples; "
                "n seeds: mean ± 95% t-interval across seeds)"]
        if self.others():
            diffs = [{"difference": f"{a.name} - {self.baseline}",
                      **{m: difference(a, self.base(), m).cell(m, signed=True) for m in metrics}} for a in self.others()]
            text += ["", comparison_table(diffs, ["difference", *metrics]), "  (± 95% interval; * it excludes 0)", "",
                     *self.verdicts()]
        if cells := self.gap_cells():
            text += ["", comparison_table(cells, ["arm", *(f"gap/{c}" for c in GAP_CONTEXTS)]),
                     "  (train-test gap on the probe, nats per token over scales 2..N: sf one-step student forcing, "
                     "ar full rollout, each minus teacher forcing)"]
        return "\n".join(text)

    def log(self, handle: RunHandle) -> dict:
        """Record the comparison in the parent run (tables as artifacts, numbers as metrics); returns
        it for the parent's outputs.json."""
        rows, diffs = self.rows(), self.differences()
        log_table(handle, rows, list(rows[0]), "comparison")
        if diffs:
            log_table(handle, diffs, list(diffs[0]), "differences")
        handle.log_metrics(self.parent_metrics(), 0)
        if gaps := self.gaps():
            log_table(handle, gaps, list(gaps[0]), "gaps")
            with tempfile.TemporaryDirectory() as tmp:
                handle.log_artifact(gap_figure(gaps, Path(tmp) / "gap_per_scale.png"), "figures")
        return {"comparison": rows, "differences": diffs, "verdicts": self.verdicts(), "gaps": gaps}


def step_arms(name: str, step, outputs: dict) -> list[Arm]:
    """A compared pipeline step as arms: its one run, or one arm per configuration of a sweep."""
    if step.kind == "sweep":
        return sweep_arms(name, step, outputs.get("trials", []))
    return [Arm(name, step.summary(), flatten(read_spec(step)), {step.seed: outputs.get("metrics", {})},
                getattr(step, "init_from", None))]


def sweep_arms(name: str, sweep, trials: list[dict]) -> list[Arm]:
    """One arm per configuration of the searched fields, holding its finished trials by seed."""
    configs: dict[tuple, Arm] = {}
    for trial in trials:
        key = tuple((p, str(trial.get(p))) for p in sweep.space)
        label = ",".join(f"{p}={v}" for p, v in key)
        arm = configs.setdefault(key, Arm(f"{name}[{label}]" if label else name, sweep.train.summary(),
                                          {**flatten(read_spec(sweep.train)), **dict(key)}, start=sweep.train.init_from))
        if trial.get("status") == "finished":
            arm.results[int(trial.get("seed", sweep.seed))] = trial
    return list(configs.values())
