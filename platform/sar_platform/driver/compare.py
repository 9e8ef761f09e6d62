"""Comparisons a parent run (pipeline, sweep) makes of its children, with their uncertainty.

An arm is one configuration: a pipeline step, or one configuration of a sweep, with its final
metrics per training seed. Each arm is reported as
    one run:   the metric and its bootstrap standard error (sample-draw noise only)
    n seeds:   the mean and its 95% t-interval across seeds (training and sample noise)
and the compared pairs (every arm against the baseline, or every pair) as differences with their
95% interval and the p-value of the same test:
    paired     the arms share seeds and their starting checkpoint: t on the per-seed differences
    unpaired   Welch's t on the two means
    one run    each: a - b ± 1.96 sqrt(se_a^2 + se_b^2), z-test, sample-draw noise only.
The intervals are unadjusted; the stars, "beyond the noise" and the verdicts use Holm-adjusted p
over the family of differences shown (every headline metric x every compared pair, cells with a
test). Arms evaluated over a guidance grid stand at their own best guidance (driver/guidance.py)
and get their metric-against-guidance curves. Arms whose runs measured the train-test gap
diagnostics (on the shared probe) also get the gap per scale, mean and 95% interval across seeds,
as a table and a figure.

Runs in the `sar` process.
"""
from __future__ import annotations

import dataclasses
import math
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from sar_core.eval import HEADLINE_METRICS
from sar_core.eval.directions import better, directions_line
from sar_core.eval.uncertainty import (difference_of_two, holm, mean_ci, normal_p_value, paired_difference,
                                       paired_p_value, unpaired_difference, welch_p_value)
from sar_core.gauge_keys import CALIBRATED_GAPS, CONTEXTS, RAW_GAPS, continuation_key, diag_key
from sar_core.objectives.metrics import scale_key
from sar_platform.driver.guidance import at_best_guidance, grid, report_key
from sar_platform.driver.report import DECIMALS, comparison_table, gap_figure, guidance_figure, log_table
from sar_platform.services.tracking import DESCRIPTION_TAG, RunHandle, flatten, metric_key
from sar_platform.spec.overrides import trial_job
from sar_platform.spec.reads import read_spec

ALPHA = 0.05  # family-wise error rate of the Holm-adjusted stars and verdicts
GAUGES = (*RAW_GAPS.values(), *CALIBRATED_GAPS.values(), *(diag_key(f"acc_gap/{c}", calibrated=True) for c in CONTEXTS))
"""The gauges the comparison shows, per arm (mean and 95% interval across seeds; sar_core/gauge_keys.py):
the raw loss gaps, the calibrated ones and the calibrated agreement gaps. Estimates, not differences,
so they are not in the Holm family."""
CONTINUATION_FID = re.compile(r"cont/k(\d+)/fid$")  # continuation quality from k ground-truth scales
EARLY_FID = re.compile(r"fid_at/s(\d+)$")  # FID of the generation stopped at an earlier scale (eval.metrics.fid_at_scales)
PER_SCALE = re.compile(r"diag/tf/loss/s(\d+)$")  # the scales an arm measured (keys named by `scale_key`)

COMPARED_TAG = "sar.compared"
"""Tag of a run that holds a comparison: its arms (what `sar ui` and `sar report` look for)."""
HEADLINE_ARTIFACT = "headline.json"
"""The comparison as shown (verdicts, tables with their notes), for `sar ui` and `sar report`."""
DESCRIPTION_LIMIT = 8000  # MLflow's longest tag value
CUT_NOTE = "\n\n(cut here: the full tables are the artifacts comparison.md, differences.md and headline.json)"
HEADLINE = "fid"  # the metric the verdicts and the headline/ keys are about
ARMS_NOTE = ("(one run: the metric and its bootstrap standard error over the generated samples; "
             "n seeds: mean ± 95% t-interval across seeds)")
GUIDANCE_NOTE = ("(cfg: the guidance each arm is reported at, the lowest mean FID on the selection sample set; "
                 "the numbers are the separate report set's at that guidance; -: no guidance grid)")
GAUGES_NOTE = ("(train-test gaps on the probe over scales 2..N, each context minus teacher forcing: sf one-step "
               "student forcing, ar full rollout; gap: nats per token, moved by any rescaling of the logits; "
               "cal/gap: the same after one fitted temperature per run; cal/acc_gap: top-1 agreement lost)")
EARLY_NOTE = ("(FID of each generation stopped at that scale, decoded and resized to the image size, against the "
              "same real images: the paper's FID @ 4 of Table 2, at the arm's chosen guidance)")
CONTINUATION_NOTE = ("(FID of images whose first k scales are real images' tokens and the rest the model's own: "
                     "k0 is plain generation; how errors accumulate scale by scale)")
LOSS_NOTE = ("Training curves: chart `loss/tf_nll` to compare arms (the training batch's teacher-forced cross-entropy "
             "per token, one formula for every kind); `loss/total` of SAR adds γ·L_CSF and each kind weights scales its "
             "own way, and `diag/tf/loss` is the teacher-forced loss on the shared probe for every kind with diagnostics.")

NOT_SETTINGS = ("name", "description", "tokenizer", "init_from", "kind", "storage.", "mlflow.", "log.", "checkpoint.")
"""Params that say where a run lives or what it logs, not what it trains: left out of "settings that differ"."""


@dataclass(frozen=True)
class Table:
    """One table of a comparison as shown: display cells per row, and the notes that explain it."""

    name: str
    columns: list[str]
    rows: list[dict]
    notes: tuple[str, ...] = ()

    def text(self) -> str:
        return comparison_table(self.rows, self.columns)


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
    p: float = math.nan  # a difference's two-sided p-value on the same basis (unadjusted)

    def cell(self, metric: str, signed: bool = False) -> str:
        d = DECIMALS.get(metric, 3)
        value = f"{self.value:+.{d}f}" if signed else f"{self.value:.{d}f}"
        if math.isnan(self.value):
            return "-"
        if math.isnan(self.half_width):
            return value
        if self.basis == "SE":
            return f"{value} (SE {self.half_width:.{d}f})"
        return f"{value} ± {self.half_width:.{d}f}"


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
        p = normal_p_value(ea.value, ea.half_width, eb.value, eb.half_width)
        return Estimate(d, half, 1, "one run each: sample-draw noise only", p)
    if arm.start == base.start and len(a.keys() & b.keys()) >= 2:
        d, half, n = paired_difference(a, b)
        return Estimate(d, half, n, f"paired over {n} seeds", paired_p_value(a, b))
    d, half, n = unpaired_difference(list(a.values()), list(b.values()))
    return Estimate(d, half, n, "unpaired (Welch)", welch_p_value(list(a.values()), list(b.values())))


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def differing_settings(arms: list[Arm]) -> list[str]:
    keys = sorted({k for a in arms for k in a.settings if not k.startswith(NOT_SETTINGS) and k not in NOT_SETTINGS})
    return [k for k in keys if len({a.settings.get(k) for a in arms}) > 1]


PAIRINGS = {  # the spec's `pairs:` -> (arms, baseline arm) -> the (arm, reference) pairs differenced
    "baseline": lambda arms, base: [(a, base) for a in arms if a is not base] if base is not None else [],
    "all": lambda arms, base: [(later, earlier) for i, earlier in enumerate(arms) for later in arms[i + 1:]],
}


@dataclass
class Comparison:
    arms: list[Arm]  # arms with a guidance grid are replaced by their views at their own best guidance
    baseline: str | None  # the arm the others are compared against (pairs="baseline")
    pairs: str = "baseline"  # a PAIRINGS key: every other arm against the baseline, or every pair
    guidance: dict[str, str] = field(init=False)  # arm name -> the guidance it is reported at (arms with a grid)

    def __post_init__(self):
        if self.pairs not in PAIRINGS:
            raise ValueError(f"pairs: {self.pairs!r} is not one of {', '.join(map(repr, PAIRINGS))}")
        self.arms, self.guidance = at_best_guidance(self.arms)

    def metrics(self) -> list[str]:
        return [m for m in HEADLINE_METRICS if any(a.values(m) for a in self.arms)]

    def base(self) -> Arm | None:
        return next((a for a in self.arms if a.name == self.baseline), None)

    def others(self) -> list[Arm]:
        return [a for a in self.arms if a is not self.base()] if self.base() is not None else []

    def compared_pairs(self) -> list[tuple[Arm, Arm]]:
        """(arm, reference) of every difference shown."""
        return PAIRINGS[self.pairs](self.arms, self.base())

    def rows(self) -> list[dict]:
        """One row per arm: its name, what it is, each metric with its uncertainty (`_se` for one
        run, `_ci95` across seeds) and the settings that differ between arms."""
        keys = differing_settings(self.arms)
        out = []
        for arm in self.arms:
            row = {"arm": arm.name, "n": max(1, len(arm.results)), "what": arm.summary}
            if self.guidance:
                row["cfg"] = self.guidance.get(arm.name, "-")
            for m in self.metrics():
                e = estimate(arm, m)
                row.update({m: e.value, f"{m}_{'se' if e.basis == 'SE' else 'ci95'}": e.half_width})
            row.update({k: arm.settings.get(k, "-") for k in keys})
            out.append(row)
        return out

    def differences(self) -> list[dict]:
        """Every compared pair: per metric the difference, its unadjusted 95% half-width, its p-value,
        the Holm-adjusted p over the whole family, whether that is below ALPHA ("beyond the noise"),
        and the basis of the test."""
        out, family = [], []
        for arm, ref in self.compared_pairs():
            row = {"difference": f"{arm.name} - {ref.name}"}
            for m in self.metrics():
                e = difference(arm, ref, m)
                row.update({f"{m}_diff": e.value, f"{m}_ci95": e.half_width, f"{m}_p": e.p,
                            f"{m}_p_holm": math.nan, f"{m}_beyond_noise": False, "basis": e.basis})
                family.append((row, m))
            out.append(row)
        for (row, m), adjusted in zip(family, holm([row[f"{m}_p"] for row, m in family])):
            row[f"{m}_p_holm"], row[f"{m}_beyond_noise"] = adjusted, adjusted < ALPHA
        return out

    def family(self, diffs: list[dict]) -> str:
        """How many comparisons the adjustment covers: the cells of `diffs` that have a test."""
        tested = sum(not math.isnan(r[f"{m}_p"]) for r in diffs for m in self.metrics())
        return f"Holm-adjusted over {plural(tested, 'comparison')}"

    def verdicts(self) -> list[str]:
        """One plain sentence per compared pair on whether their FIDs differ beyond the noise, after Holm."""
        lines, diffs = [], self.differences()
        for row, (arm, ref) in zip(diffs, self.compared_pairs()):
            if "fid_diff" not in row or math.isnan(row["fid_ci95"]):
                continue
            a, b = estimate(arm, "fid").value, estimate(ref, "fid").value
            side = "lower" if row["fid_diff"] < 0 else "higher"
            if row["fid_beyond_noise"]:
                verdict = "a difference beyond the noise"
            elif row["fid_p"] < ALPHA:
                verdict = "within the noise once the other comparisons are accounted for (unadjusted p < 0.05)"
            else:
                verdict = "within the noise: these runs cannot tell them apart"
            lines.append(f"{arm.name} vs {ref.name}: FID {a:.2f} vs {b:.2f}, {abs(row['fid_diff']):.2f} {side} "
                         f"± {row['fid_ci95']:.2f} (unadjusted 95%, {row['basis']}; p = {row['fid_p']:.2g}, "
                         f"{self.family(diffs)}: p = {row['fid_p_holm']:.2g}) - {verdict}.")
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
                recorded = k.endswith(("_diff", "_ci95", "_p", "_p_holm", "_beyond_noise"))
                if recorded and not (isinstance(v, float) and math.isnan(v)):
                    out[metric_key(f"diff/{name}/{k}")] = float(v)
        out.update({metric_key(f"compare/{arm}/cfg"): float(g) for arm, g in self.guidance.items()})
        return out

    def guidance_curves(self) -> list[dict]:
        """Per arm with a guidance grid, guidance value and metric: the report-set value, mean and
        95% interval across seeds (`ci95`), or one run's bootstrap standard error (`se`)."""
        out = []
        for arm in self.arms:
            for g in grid(arm):
                for m in HEADLINE_METRICS:
                    e = estimate(arm, report_key(g, m))
                    if not math.isnan(e.value):
                        out.append({"arm": arm.name, "cfg": float(g), "metric": m, "value": e.value,
                                    "se" if e.basis == "SE" else "ci95": e.half_width, "n": e.n,
                                    "chosen": g == self.guidance.get(arm.name)})
        return out

    def gaps(self) -> list[dict]:
        """Per arm, student context and scale: the loss gap to teacher forcing on the probe
        (diag/<context>/loss/sNN - diag/tf/loss/sNN), mean and 95% interval across seeds."""
        out = []
        for arm in self.arms:
            scales = sorted({int(m.group(1)) for r in arm.results.values() for k in r if (m := PER_SCALE.match(k))})
            for context in CONTEXTS:
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
            for key in GAUGES:
                e = estimate(arm, key)
                if not math.isnan(e.value):
                    row[key.removeprefix("diag/")] = e.cell(key)
            if len(row) > 1:
                cells.append(row)
        return cells

    def tables(self) -> list[Table]:
        """The comparison's tables as shown (cells with their uncertainty): arms, differences,
        guidance curves, gauges, FID at earlier scales, continuation; those with nothing to show are left out."""
        metrics, diffs = self.metrics(), self.differences()
        arms = [{"arm": a.name, "n": max(1, len(a.results)), "cfg": self.guidance.get(a.name, "-"),
                 **{m: estimate(a, m).cell(m) for m in metrics}} for a in self.arms]
        out = [Table("arms", ["arm", "n", *(["cfg"] if self.guidance else []), *metrics], arms,
                     (ARMS_NOTE, *([GUIDANCE_NOTE] if self.guidance else [])))]
        if diffs:
            out.append(self.differences_table(diffs))
        if curves := self.guidance_curves():
            out.append(self.curves_table(curves))
        if cells := self.gap_cells():
            out.append(Table("gauges", ["arm", *(k.removeprefix("diag/") for k in GAUGES)], cells, (GAUGES_NOTE,)))
        if cells := self.early_scale_cells():
            out.append(Table("earlier scales", list(cells[0]), cells, (EARLY_NOTE,)))
        if cells := self.continuation_cells():
            out.append(Table("continuation", list(cells[0]), cells, (CONTINUATION_NOTE,)))
        return out

    def render(self) -> str:
        """The printed comparison: the tables, each arm's summary under the arms, the verdicts under the differences."""
        text = []
        for table in self.tables():
            text += ([""] if text else []) + [table.text()]
            if table.name == "arms":
                text += [f"  {a.name}: {a.summary}" for a in self.arms]
            text += [f"  {note}" for note in table.notes]
            if table.name == "differences":
                text += ["", *self.verdicts()]
        return "\n".join(text)

    def headline_metrics(self, diffs: list[dict]) -> dict[str, float]:
        """`headline/<a>-<b>/fid_diff`, `_ci95`, `_p_holm` of every compared pair, rounded as the
        tables show them (the full values are the `diff/` keys): the numbers to read first."""
        out = {}
        for row in diffs:
            name = row["difference"].replace(" - ", "-")
            for suffix, digits in (("diff", DECIMALS["fid"]), ("ci95", DECIMALS["fid"]), ("p_holm", 3)):
                value = row.get(f"{HEADLINE}_{suffix}", math.nan)
                if not math.isnan(value):
                    out[metric_key(f"headline/{name}/{HEADLINE}_{suffix}")] = round(value, digits)
        return out

    def answers(self, diffs: list[dict]) -> list[str]:
        """One short line per compared pair, the clearest (lowest Holm-adjusted p) first: the FID
        difference, its interval and which arm it favours, the first thing the parent run says."""
        lines = []
        tested = [r for r in diffs if not math.isnan(r.get(f"{HEADLINE}_p_holm", math.nan))]
        for row in sorted(tested, key=lambda r: r[f"{HEADLINE}_p_holm"]):
            diff, ci, p_holm = (row[f"{HEADLINE}_{k}"] for k in ("diff", "ci95", "p_holm"))
            arm = row["difference"].split(" - ")[0]
            favours = (diff < 0) == (better(HEADLINE) == "lower")
            verdict = (f"**{arm} {'better' if favours else 'worse'}**" if row[f"{HEADLINE}_beyond_noise"]
                       else "within the noise")
            lines.append(f"{row['difference']}: FID {diff:+.{DECIMALS[HEADLINE]}f} ± {ci:.{DECIMALS[HEADLINE]}f}, "
                         f"{verdict} (Holm-adjusted p = {p_holm:.2g})")
        return lines

    def headline(self, diffs: list[dict], summary: str = "") -> str:
        """The parent run's description (markdown): the answers, what ran, the verdicts, the arms and
        the differences, and which way each metric is better."""
        text = [*(f"- {a}" for a in self.answers(diffs))]
        if text:
            text += ["", f"(a - b; ± unadjusted 95% interval; {better(HEADLINE)} FID is better; {self.family(diffs)})"]
        text += [*(["", summary] if summary else []), "", *(f"- {v}" for v in self.verdicts())]
        for table in self.tables()[:2]:  # the arms and the differences
            text += ["", table.text(), "", *table.notes]
        if diffs:
            text += ["", f"Headline metrics: `headline/<a>-<b>/{HEADLINE}_diff` is a minus b ({better(HEADLINE)} is "
                         f"better), `_ci95` its unadjusted 95% half-width, `_p_holm` its {self.family(diffs)}."]
        directions = directions_line(self.metrics())
        text += ["", f"{directions[:1].upper()}{directions[1:]}.", "", LOSS_NOTE]
        return "\n".join(text)

    def early_scale_cells(self) -> list[dict]:
        """Per arm that measured it: FID of its generations stopped at every measured earlier scale."""
        keys = sorted({k for a in self.arms for r in a.results.values() for k in r if EARLY_FID.fullmatch(k)})
        return [{"arm": a.name, **{f"fid @{int(EARLY_FID.fullmatch(k).group(1))}": estimate(a, k).cell("fid") for k in keys}}
                for a in self.arms if any(a.values(k) for k in keys)]

    def continuation_cells(self) -> list[dict]:
        """Per arm that measured it: continuation FID from every k of ground-truth scales."""
        ks = sorted({int(m.group(1)) for a in self.arms for r in a.results.values() for k in r
                     if (m := CONTINUATION_FID.match(k))})
        return [{"arm": a.name, **{f"fid k{k}": estimate(a, continuation_key(k, "fid")).cell("fid") for k in ks}}
                for a in self.arms if any(a.values(continuation_key(k, "fid")) for k in ks)]

    def differences_table(self, diffs: list[dict]) -> Table:
        """The differences: unadjusted intervals, stars from the Holm-adjusted p."""
        metrics = self.metrics()
        shown = [{"difference": row["difference"],
                  **{m: Estimate(row[f"{m}_diff"], row[f"{m}_ci95"], 0, row["basis"]).cell(m, signed=True)
                     + (" *" if row[f"{m}_beyond_noise"] else "") for m in metrics}} for row in diffs]
        return Table("differences", ["difference", *metrics], shown,
                     (f"(± unadjusted 95% interval; * p < {ALPHA:g}, {self.family(diffs)}: "
                      f"{plural(len(metrics), 'metric')} x {plural(len(diffs), 'pair')})",))

    def curves_table(self, curves: list[dict]) -> Table:
        """Each arm's report-set metrics at every guidance of its grid, the chosen one marked."""
        metrics = list(dict.fromkeys(c["metric"] for c in curves))
        by_point: dict[tuple, dict] = {}
        for c in curves:
            cfg = f"{c['cfg']:g}" + (" <" if c["chosen"] else "")
            row = by_point.setdefault((c["arm"], c["cfg"]), {"arm": c["arm"], "cfg": cfg, "n": c["n"]})
            half, basis = (c["se"], "SE") if "se" in c else (c["ci95"], "CI")
            row[c["metric"]] = Estimate(c["value"], half, c["n"], basis).cell(c["metric"])
        return Table("guidance curves", ["arm", "cfg", "n", *metrics], list(by_point.values()),
                     ("(metrics against guidance on the report set; < the arm's chosen guidance)",))

    def log(self, handle: RunHandle) -> dict:
        """Record the comparison in the parent run (tables as artifacts, numbers as metrics); returns
        it for the parent's outputs.json."""
        rows, diffs = self.rows(), self.differences()
        log_table(handle, rows, list(rows[0]), "comparison")
        if diffs:
            log_table(handle, diffs, list(diffs[0]), "differences")
        handle.log_metrics({**self.parent_metrics(), **self.headline_metrics(diffs)}, 0)
        client = handle.client()
        summary = client.get_run(handle.run_id).data.tags.get("sar.summary", "")
        description = self.headline(diffs, summary).strip()
        if len(description) > DESCRIPTION_LIMIT:  # many arms: the verdicts stay, the tables are in the artifacts
            description = description[:DESCRIPTION_LIMIT - len(CUT_NOTE)].rsplit("\n", 1)[0] + CUT_NOTE
        handle.set_tags({DESCRIPTION_TAG: description,
                         COMPARED_TAG: ", ".join(a.name for a in self.arms)})
        client.log_dict(handle.run_id, {"verdicts": self.verdicts(), "arms": {a.name: a.summary for a in self.arms},
                                        "tables": [dataclasses.asdict(t) for t in self.tables()],
                                        "directions": directions_line(self.metrics()), "loss_note": LOSS_NOTE},
                        HEADLINE_ARTIFACT)
        if curves := self.guidance_curves():
            log_table(handle, curves, ["arm", "cfg", "metric", "value", "ci95", "se", "n", "chosen"], "guidance_curves")
            with tempfile.TemporaryDirectory() as tmp:
                handle.log_artifact(guidance_figure(curves, Path(tmp) / "metrics_vs_guidance.png"), "figures")
        for name, cells in (("gauges", self.gap_cells()), ("continuation", self.continuation_cells())):
            if cells:
                log_table(handle, cells, list(dict.fromkeys(k for c in cells for k in c)), name)
        if gaps := self.gaps():
            log_table(handle, gaps, list(gaps[0]), "gaps")
            with tempfile.TemporaryDirectory() as tmp:
                handle.log_artifact(gap_figure(gaps, Path(tmp) / "gap_per_scale.png"), "figures")
        return {"comparison": rows, "differences": diffs, "verdicts": self.verdicts(), "gaps": gaps,
                "guidance": self.guidance, "guidance_curves": curves}


def step_arms(name: str, step, outputs: dict) -> list[Arm]:
    """A compared pipeline step as arms: its one run, or one arm per configuration of a sweep."""
    if step.kind == "sweep":
        return sweep_arms(name, step, outputs.get("trials", []))
    return [Arm(name, step.summary(), flatten(read_spec(step)), {step.seed: outputs.get("metrics", {})},
                getattr(step, "init_from", None))]


def sweep_arms(name: str, sweep, trials: list[dict]) -> list[Arm]:
    """One arm per configuration of the searched fields, holding its finished trials by seed."""
    configs: dict[tuple, Arm] = {}
    names = field_labels(list(sweep.space))
    for trial in trials:
        key = tuple((p, str(trial.get(p))) for p in sweep.space)
        label = ",".join(f"{names[p]}={v}" for p, v in key)
        if key not in configs:  # described by the configuration it trained, not by the sweep's template
            job = trial_job(sweep, {p: trial.get(p) for p in sweep.space})
            configs[key] = Arm(f"{name}[{label}]" if label else name, job.summary(),
                               {**flatten(read_spec(job)), **dict(key)}, start=job.init_from)
        arm = configs[key]
        if trial.get("status") == "finished":
            arm.results[int(trial.get("seed", sweep.seed))] = trial
    return list(configs.values())


def field_labels(paths: list[str]) -> dict[str, str]:
    """Each searched field by its last name (`objective.gamma` -> `gamma`) where that names it alone
    among the sweep's fields, else by its full path: arm names that fit a table and a legend."""
    last = [p.rsplit(".", 1)[-1] for p in paths]
    return {p: short if last.count(short) == 1 else p for p, short in zip(paths, last)}
