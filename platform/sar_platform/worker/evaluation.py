"""Evaluation on the workers: the four metrics with their standard errors and the figures,
collectively over the data-parallel workers (rank 0 gets the results), the Fig. 8 student-forcing
rows of the probe batch, and the record of how the numbers were made (`provenance`: feature network
and its fingerprint, reference set, number of samples, seed, sampler, checkpoint step; under a
guidance grid also the sampler per weight, the selection seed and best_cfg), which rank 0
writes as `provenance.json` beside the figures and as the run's `sar.eval.*` tags.

Runs inside Ray Train workers (train jobs' evaluations, eval jobs' scoring).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from sar_core.eval import EvalResult, FigureConfig, evaluate
from sar_core.eval.figures import student_forcing_figure
from sar_core.objectives import RolloutDraw, TokenBatch
from sar_core.schedule import ScaleSchedule
from sar_platform.services.tracking import RunHandle, environment_tags

FIGURE_ROWS = 8
"""Probe images the student-forcing figure is drawn from (it shows the first)."""


@dataclass(frozen=True)
class Probe:
    """The batch and sampler every run of a comparison measures its train-test gap with."""

    batch: TokenBatch
    draw: RolloutDraw
    seed: int
    description: str


def provenance(scoring, sampling, result: EvalResult, schedule: ScaleSchedule, step: int) -> dict:
    """How an evaluation's numbers were made (`sampling`: the sampler it ran, which for a periodic
    evaluation under a guidance grid is the grid's first weight alone)."""
    m, s = scoring.metrics, sampling
    record = {
        "checkpoint_step": step, "feature_network": m.feature_network, "feature_fingerprint": result.feature_network,
        "reference": result.reference, "num_samples": result.num_samples, "seed": m.seed,
        "bootstrap_resamples": m.bootstrap, "sampler": f"schedule {schedule}, {s.summary()}",
        "schedule": list(schedule.scales), "cfg": s.cfg, "cfg_ramp": s.cfg_ramp, "top_k": s.top_k, "top_p": s.top_p,
        "temperature": s.temperature,
    }
    if getattr(s, "grid", None) is None:
        return record
    record["cfg"] = list(s.grid)
    record.update({f"sampler/cfg_{g:g}": f"schedule {schedule}, {s.at(g).summary()}" for g in s.grid})
    if "best_cfg" in result.metrics:
        record.update(selection_seed=m.selection_draw_seed, best_cfg=result.metrics["best_cfg"])
    return record


def scored_sampling(scoring, final: bool):
    """The sampler an evaluation runs: a guidance grid whole at the final evaluation, its first
    weight alone at the periodic ones: logged under cfg/<g>/ (no selection), or as plain metrics
    when a selection rule reads them (the loop logs those under select/)."""
    s = scoring.sampling
    if final or s.grid is None:
        return s
    return replace(s, cfg=s.grid[0] if getattr(scoring, "select", None) is not None else s.grid[:1])


def evaluate_generator(model, tokenizer, job, schedule: ScaleSchedule, out_dir: Path, step: int, title: str = "",
                       probe: Probe | None = None, handle: RunHandle | None = None, cache_dir: Path | None = None,
                       final: bool = True):
    """Collective over the data-parallel workers; rank 0 gets (metrics, output paths) and records
    the provenance in the run (`handle`), the others get ({}, []). `cache_dir`: where the prepared
    metric classifier and reference features are (None: the data cache). `final`: False for a
    training run's periodic evaluations (see `scored_sampling`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = job.data.image_dataset(tokenizer.config.image_size)
    figures = FigureConfig() if job.eval.figures else None
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    sampling = scored_sampling(job.eval, final)
    result = evaluate(model, tokenizer, sampling, job.eval.metrics, schedule, out_dir, data=data, figures=figures,
                      progress=rank == 0, title=title, cache_dir=cache_dir, selection=final)
    if rank != 0:
        return {}, []
    paths = [Path(p) for p in result.figures.values()]
    if result.samples_path is not None:
        paths.append(Path(result.samples_path))
    if figures is not None and probe is not None:
        rows = TokenBatch(probe.batch.labels[:FIGURE_ROWS], probe.batch.tokens[:FIGURE_ROWS], probe.batch.schedule)
        paths.append(student_forcing_figure(model, tokenizer, rows, probe.draw, out_dir / "student_forcing.png",
                                            title=f"{title}\nprobe: {probe.description}", seed=probe.seed))
    record = provenance(job.eval, sampling, result, schedule, step)
    (out_dir / "provenance.json").write_text(json.dumps({**record, "metrics": result.metrics}, indent=2))
    paths.append(out_dir / "provenance.json")
    if handle is not None:
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        handle.set_tags({**{f"sar.eval.{k}": v for k, v in record.items()}, **environment_tags(world)})
    return {**result.metrics, "eval/seconds": result.seconds}, paths


def artifact_folder(path: Path) -> str:
    """Where an evaluation output goes among a run's MLflow artifacts."""
    return {".png": "figures", ".json": "eval"}.get(path.suffix, "samples")
