"""Scoring one checkpoint across classifier-free-guidance weights.

A fidelity / diversity shift reads as a win or a loss depending on where one guidance weight sits,
so an evaluation may take a grid of weights (`EvalSampling` with `cfg` a tuple). The checkpoint is
then scored at every weight g on two sample sets: the *report* set (metrics.seed) gives the numbers
shown; the *selection* set (metrics.selection_seed) picks the weight, so that the pick is not
fitted to the noise of the numbers reported at it. Metric keys (g written `f"{g:g}"`):

    cfg/<g>/<m>, cfg/<g>/<m>_se   report set: every key a one-weight evaluation logs (fid_at/... too)
    cfg/<g>/select/<m>            selection set: the headline metrics (no standard errors)
    best_cfg                      the g of the lowest cfg/<g>/select/fid (the first one on a tie)
    <m>, <m>_se, ...              the report set's keys at best_cfg, unprefixed

A one-weight sampler (`cfg` a number) keeps the unprefixed keys alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Iterable

from sar_core.eval.config import MetricConfig
from sar_core.eval.reference import HEADLINE_METRICS
from sar_core.token_sampling import SamplingConfig

GRID_FIX = "write cfg as one guidance weight >= 0 (2.5) or a list of distinct weights >= 0 such as [0.5, 1.5, 2.5]"


def guidance_weights(value) -> float | tuple[float, ...]:
    """`cfg` as written: a number (one weight, checked by SamplingConfig) or a list (a grid)."""
    if isinstance(value, (list, tuple)):
        return guidance_grid(value)
    if isinstance(value, str):
        raise ValueError(f"cfg: {value!r} is not a number; {GRID_FIX}")
    return value


def guidance_grid(values: Iterable) -> tuple[float, ...]:
    """`values` as a grid of guidance weights: non-empty, finite numbers >= 0, no repeats."""
    values, fix = list(values), GRID_FIX
    if not values:
        raise ValueError(f"cfg: the guidance grid is empty; {fix}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ValueError(f"cfg: {v!r} in {values} is not a finite number >= 0; {fix}")
    repeated = sorted({float(v) for v in values if [float(w) for w in values].count(float(v)) > 1})
    if repeated:
        raise ValueError(f"cfg: {values} repeats {', '.join(f'{g:g}' for g in repeated)}; {fix}")
    return tuple(float(v) for v in values)


@dataclass(frozen=True)
class EvalSampling(SamplingConfig):
    """The sampler of an evaluation: `cfg` is one guidance weight, or a tuple of them (a grid);
    every other field (ramp, top-k / top-p, FlexVAR size rules) applies at each weight alike."""

    __pydantic_config__ = {"extra": "forbid"}

    cfg: float | tuple[float, ...] = 2.5

    def __post_init__(self):
        if not isinstance(self.cfg, (tuple, list)):
            super().__post_init__()
            return
        object.__setattr__(self, "cfg", guidance_grid(self.cfg))
        for g in self.cfg:
            self.at(g)  # every point is a valid sampler

    @property
    def grid(self) -> tuple[float, ...] | None:
        """The guidance weights scored (None: one weight, `cfg`)."""
        return self.cfg if isinstance(self.cfg, tuple) else None

    def at(self, g: float) -> SamplingConfig:
        """The one-weight sampler at guidance weight `g`."""
        return SamplingConfig(**{f.name: getattr(self, f.name) for f in fields(SamplingConfig)} | {"cfg": g})

    def single(self) -> SamplingConfig:
        if self.grid is not None:
            raise ValueError(f"cfg is a guidance grid {list(self.grid)}; pick one weight with .at(g)")
        return self.at(self.cfg)

    def cfg_at(self, scale_index: int, num_scales: int, size: int | None = None) -> float:
        return self.single().cfg_at(scale_index, num_scales, size)

    def unread_fields(self) -> dict[str, str]:
        if self.grid is None:
            return super().unread_fields()
        if not any(self.grid):
            return {"cfg_ramp": "is only read when some cfg > 0 (cfg 0 samples without guidance)"}
        return {}

    def summary(self) -> str:
        if self.grid is None:
            return super().summary()
        rest = self.at(max(self.grid)).summary().split(", ", 1)[1]
        return f"cfg grid {', '.join(f'{g:g}' for g in self.grid)} ({self.cfg_ramp} ramp), {rest}"


def cfg_prefix(g: float) -> str:
    return f"cfg/{g:g}/"


@dataclass(frozen=True)
class SampleSet:
    """One set of generated samples an evaluation scores, and where its numbers go."""

    prefix: str  # of its metric keys: "" (one weight), "cfg/<g>/" (report), "cfg/<g>/select/" (selection)
    sampling: SamplingConfig
    metrics: MetricConfig  # its seed, standard errors, FID@scale, npz
    cfg: float
    selection: bool = False

    @property
    def label(self) -> str:
        return f"{'selecting' if self.selection else 'evaluating'} cfg {self.cfg:g}"


def sample_sets(sampling: SamplingConfig, metrics: MetricConfig, selection: bool = True) -> list[SampleSet]:
    """What to generate: one set for a one-weight sampler; the report set of every weight of a grid
    and, with `selection`, its selection set (headline metrics only: no standard errors, FID@scale
    or npz)."""
    grid = getattr(sampling, "grid", None)
    if grid is None:
        single = sampling.single() if isinstance(sampling, EvalSampling) else sampling
        return [SampleSet("", single, metrics, single.cfg)]
    select = replace(metrics, seed=metrics.selection_draw_seed, selection_seed=None, bootstrap=0, fid_at_scales=(),
                     save_npz=False)
    out = []
    for g in grid:
        out.append(SampleSet(cfg_prefix(g), sampling.at(g), metrics, g))
        if selection:
            out.append(SampleSet(cfg_prefix(g) + "select/", sampling.at(g), select, g, selection=True))
    return out


def best_cfg(scores: dict[str, float], grid: Iterable[float]) -> float:
    """The weight whose selection set has the lowest FID (the first in grid order on a tie)."""
    return min(grid, key=lambda g: scores[cfg_prefix(g) + "select/fid"])


def with_best_cfg(scores: dict[str, float], grid: tuple[float, ...]) -> dict[str, float]:
    """`scores` plus `best_cfg` and, unprefixed, every report-set key at that weight."""
    best = best_cfg(scores, grid)
    prefix = cfg_prefix(best)
    report = {k.removeprefix(prefix): v for k, v in scores.items()
              if k.startswith(prefix) and not k.startswith(prefix + "select/")}
    return {**scores, "best_cfg": best, **report}


def guidance_table(scores: dict[str, float], grid: Iterable[float]) -> str:
    """One row per weight: the report set's headline metrics (± standard error) and the selection
    FID; the best weight marked with *."""
    best = scores.get("best_cfg")
    head = f"{'cfg':>8}  " + "  ".join(f"{m:>9}{'':9}" for m in HEADLINE_METRICS) + f"  {'select fid':>10}"
    rows = [head]
    for g in grid:
        p = cfg_prefix(g)
        cells = []
        for m in HEADLINE_METRICS:
            se = scores.get(f"{p}{m}_se")
            cells.append(f"{scores[p + m]:>9.4g}" + (f" ± {se:<6.2g}" if se is not None else " " * 9))
        select = scores.get(p + "select/fid")
        mark = "*" if best == g else " "
        rows.append(f"{mark}{g:>7g}  " + "  ".join(cells) + f"  {'' if select is None else f'{select:.4g}':>10}")
    return "\n".join(rows + (["* best_cfg: lowest selection-set FID"] if best is not None else []))
