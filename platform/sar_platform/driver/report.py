"""Tables and figures that summarise several runs (pipeline comparisons, sweep results).

Runs in the `sar` process.
"""
from __future__ import annotations

import csv
import io
import math
import tempfile
from pathlib import Path
from typing import Any, Sequence

from sar_core.eval import HEADLINE_METRICS
from sar_core.eval.directions import better
from sar_platform.services.tracking import RunHandle


DECIMALS = {"fid": 2, "is": 2, "precision": 3, "recall": 3}
"""Decimals tables show each metric with (FID 12.34, precision 0.812); other numbers get 4 significant digits."""


def _fmt(v: Any, column: str = "") -> str:
    if isinstance(v, float):
        metric = column.removesuffix("_se").removesuffix("_ci95")
        return "-" if math.isnan(v) else (f"{v:.{DECIMALS[metric]}f}" if metric in DECIMALS else f"{v:.4g}")
    return "-" if v is None else str(v)


def headline(metrics: dict) -> dict:
    """Whichever of FID / IS / precision / recall `metrics` has, with their standard errors."""
    return {k: metrics[k] for m in HEADLINE_METRICS for k in (m, f"{m}_se") if k in metrics}


def final_metrics(metrics: dict) -> dict:
    """The evaluation results in a run's last report (not its training curves)."""
    return {k: v for k, v in metrics.items() if k.removesuffix("_se") in HEADLINE_METRICS or k.startswith("fid_at/")}


def final_diagnostics(metrics: dict) -> dict:
    """The train-test-gap diagnostics (`diag/*`, measured on the probe) in a run's last report."""
    return {k: v for k, v in metrics.items() if k.startswith("diag/") and isinstance(v, (int, float))}


def headline_columns(rows: Sequence[dict], leading: Sequence[str]) -> list[str]:
    """The leading columns, then whichever of FID / IS / precision / recall (and their standard
    errors) the rows have."""
    return [*leading, *(k for m in HEADLINE_METRICS for k in (m, f"{m}_se") if any(k in r for r in rows))]


def comparison_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    cells = [[_fmt(r.get(c), c) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]

    def line(values):
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths)) + " |"

    return "\n".join([line(columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)])


def log_table(handle: RunHandle, rows: Sequence[dict], columns: Sequence[str], name: str) -> None:
    """Attach the table to a run as markdown (readable in the UI) and CSV (every key, for analysis)."""
    keys = list(dict.fromkeys([*columns, *(k for r in rows for k in r)]))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    client = handle.client()
    client.log_text(handle.run_id, buf.getvalue(), f"{name}.csv")
    client.log_text(handle.run_id, comparison_table(rows, columns) + "\n", f"{name}.md")


def metric_vs_params_figure(rows: Sequence[dict], params: Sequence[str], metric: str, path: Path) -> Path | None:
    """One panel per swept parameter: the metric of every finished trial against that parameter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if isinstance(r.get(metric), (int, float)) and not math.isnan(r[metric])]
    if not done or not params:
        return None
    fig, axes = plt.subplots(1, len(params), figsize=(4 * len(params), 3.2), squeeze=False)
    for ax, p in zip(axes[0], params):
        xs = [r.get(p) for r in done]
        numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
        labels = sorted({str(x) for x in xs}) if not numeric else None
        pos = xs if numeric else [labels.index(str(x)) for x in xs]
        ax.scatter(pos, [r[metric] for r in done], s=36)
        if labels is not None:
            ax.set_xticks(range(len(labels)), labels, rotation=20)
        ax.set_xlabel(p)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight", pad_inches=0.1)  # titles and legends inside the image
    plt.close(fig)
    return path


def log_sweep_figure(handle: RunHandle, rows, params, metric: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = metric_vs_params_figure(rows, params, metric, Path(tmp) / f"{metric.replace('/', '_')}_vs_params.png")
        if path is not None:
            handle.log_artifact(path, "figures")


def gap_figure(gaps: Sequence[dict], path: Path) -> Path | None:
    """Fig. 8's question as curves: for every arm, the train-test gap at each scale (the student's
    loss minus the teacher-forced loss on the same probe tokens), one panel per student context,
    with its 95% interval across seeds where an arm has several (the legend says n)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    contexts = list(dict.fromkeys(g["context"] for g in gaps))
    if not contexts:
        return None
    titles = {"sf": "one-step student forcing (SSR)", "ar": "full rollout (inference)"}
    arms = list(dict.fromkeys(g["arm"] for g in gaps))
    fig, axes = plt.subplots(1, len(contexts), figsize=(5.2 * len(contexts), 3.6), squeeze=False)
    for ax, context in zip(axes[0], contexts):
        for i, arm in enumerate(arms):
            points = sorted((g["scale"], g["gap"], g["ci95"]) for g in gaps if g["arm"] == arm and g["context"] == context)
            if not points:
                continue
            xs, ys, half = zip(*points)
            dodge = 0.06 * (i - (len(arms) - 1) / 2)  # arms with equal gaps stay visible side by side
            ns = [g["n"] for g in gaps if g["arm"] == arm and g["context"] == context]
            ax.errorbar([x + dodge for x in xs], ys, yerr=[0 if math.isnan(h) else h for h in half], marker="os^Dv"[i % 5],
                        capsize=3, label=_arm_label(arm, [{"n": n} for n in ns], one_run="1 run, no interval"))
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_title(titles[context], fontsize=10)
        ax.set_xlabel("scale (tokens per side)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("loss gap to teacher forcing (nats)")
    fig.suptitle("train-test gap per scale on the probe (the legend gives each arm's n and its bars)", fontsize=10)
    fig.tight_layout()
    legend_below(fig, axes[0][0], len(arms))
    fig.savefig(path, dpi=110, bbox_inches="tight", pad_inches=0.1)  # titles and legends inside the image
    plt.close(fig)
    return path


def legend_below(fig, ax, arms: int) -> None:
    """One legend for every panel, under them, so that no arm's curve hides behind it."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(arms, 3), fontsize=8,
               frameon=False)


METRIC_TITLES = {m: f"{name} ({better(m)} is better)" for m, name in
                 (("fid", "FID"), ("is", "Inception Score"), ("precision", "precision"), ("recall", "recall"))}


def _arm_label(arm: str, points: Sequence[dict], one_run: str = "1 run, ±1.96 bootstrap SE") -> str:
    """The arm and what its bars are: n seeds (mean, 95% t-interval), or one run (`one_run`)."""
    ns = sorted({p["n"] for p in points})
    if ns == [1]:
        return f"{arm} ({one_run})"
    n = str(ns[0]) if len(ns) == 1 else f"{ns[0]}-{ns[-1]}"
    return f"{arm} (mean of n = {n} seeds, 95% t-interval)"


def guidance_figure(curves: Sequence[dict], path: Path) -> Path | None:
    """Each metric against the guidance scale, one panel per metric and one curve per arm, on the
    report sample set; the guidance each arm is reported at (chosen on the selection set) ringed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in HEADLINE_METRICS if any(c["metric"] == m for c in curves)]
    if not metrics:
        return None
    arms = list(dict.fromkeys(c["arm"] for c in curves))
    span = (max(c["cfg"] for c in curves) - min(c["cfg"] for c in curves)) or 1.0
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.4 * len(metrics), 3.8), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for i, arm in enumerate(arms):
            points = sorted((c for c in curves if c["arm"] == arm and c["metric"] == metric), key=lambda c: c["cfg"])
            if not points:
                continue
            half = [1.96 * c["se"] if "se" in c else c["ci95"] for c in points]
            dodge = 0.01 * span * (i - (len(arms) - 1) / 2)  # arms with equal values stay visible side by side
            line = ax.errorbar([c["cfg"] + dodge for c in points], [c["value"] for c in points],
                               yerr=[0 if math.isnan(h) else h for h in half], marker="os^Dv"[i % 5], capsize=3,
                               label=_arm_label(arm, points))
            for c in points:
                if c["chosen"]:
                    ax.scatter([c["cfg"] + dodge], [c["value"]], s=160, facecolors="none", lw=1.5,
                               edgecolors=line[0].get_color())
        ax.set_title(METRIC_TITLES[metric], fontsize=10)
        ax.set_xlabel("guidance scale (cfg)")
        ax.grid(alpha=0.3)
    fig.suptitle("metrics against guidance on the report sample set (ringed: each arm's guidance, "
                 "chosen by the lowest mean FID on the selection set)", fontsize=9)
    fig.tight_layout()
    legend_below(fig, axes[0][0], len(arms))
    fig.savefig(path, dpi=110, bbox_inches="tight", pad_inches=0.1)  # titles and legends inside the image
    plt.close(fig)
    return path
