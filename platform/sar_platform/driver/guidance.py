"""Arms evaluated over a guidance grid: which guidance values they have, and each arm at its own best.

A run evaluated over a grid of guidance scales g logs, per g (written `f"{g:g}"`),
    cfg/<g>/<m>, cfg/<g>/<m>_se    on the *report* sample set
    cfg/<g>/select/<m>             on a separate *selection* sample set
for m in HEADLINE_METRICS. An arm's best g is the argmin of its mean `cfg/<g>/select/fid` over
seeds, chosen on the selection set so that the winner's curse does not flatter the reported
numbers; the arm is then reported (and differenced, paired by seed) on the report set at that g.
One g per arm, shared by its seeds, so per-seed pairs compare like with like.

Runs in the `sar` process.
"""
from __future__ import annotations

import dataclasses
import re

from sar_core.eval import HEADLINE_METRICS

SELECTED_ON = "fid"  # the selection-set metric the best guidance minimises
REPORT_KEY = re.compile(rf"cfg/([0-9.e+-]+|inf)/({'|'.join(HEADLINE_METRICS)})$")  # g as f"{g:g}" writes it


def report_key(g: str, metric: str) -> str:
    return f"cfg/{g}/{metric}"


def select_key(g: str, metric: str) -> str:
    return f"cfg/{g}/select/{metric}"


def grid(arm) -> list[str]:
    """The guidance values (as logged) at which any seed of `arm` has a report-set metric, ascending."""
    found = {m.group(1) for r in arm.results.values() for k in r if (m := REPORT_KEY.match(k))}
    return sorted(found, key=float)


def guidance_metrics(metrics: dict) -> dict:
    """The guidance-grid keys (report and selection sets, with standard errors) of a run's final metrics."""
    return {k: v for k, v in metrics.items() if k.startswith("cfg/") and isinstance(v, (int, float))}


def best_guidance(arm) -> str | None:
    """The g whose selection-set FID, averaged over the arm's seeds, is lowest; only g that every
    seed measured compete. None when the arm has no selection-set FID at any shared g."""
    seeds = arm.results.values()
    complete = [g for g in grid(arm) if seeds and all(isinstance(r.get(select_key(g, SELECTED_ON)), (int, float))
                                                      and isinstance(r.get(report_key(g, SELECTED_ON)), (int, float))
                                                      for r in seeds)]
    if not complete:
        return None
    return min(complete, key=lambda g: sum(r[select_key(g, SELECTED_ON)] for r in seeds) / len(seeds))


def at_guidance(arm, g: str):
    """`arm` with its plain headline keys (m, m_se), and every other report-set key logged per
    guidance (fid_at/sNN), replaced by its report-set values at guidance g."""
    prefix, select = report_key(g, ""), select_key(g, "")
    results = {}
    for seed, metrics in arm.results.items():
        plain = {k: v for k, v in metrics.items() if k.removesuffix("_se") not in HEADLINE_METRICS}
        at_g = {k.removeprefix(prefix): v for k, v in metrics.items()
                if k.startswith(prefix) and not k.startswith(select) and isinstance(v, (int, float))}
        results[seed] = {**plain, **at_g}
    return dataclasses.replace(arm, results=results)


def at_best_guidance(arms: list) -> tuple[list, dict[str, str]]:
    """Every arm that has a grid at its own best guidance (others as they are), and the chosen g by arm name."""
    chosen = {a.name: g for a in arms if (g := best_guidance(a)) is not None}
    return [at_guidance(a, chosen[a.name]) if a.name in chosen else a for a in arms], chosen
