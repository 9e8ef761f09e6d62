"""Evaluation on the workers: the four metrics and the figures, collectively over the data-parallel
workers (rank 0 gets the results), plus the Fig. 8 student-forcing rows of a training batch.

Runs inside Ray Train workers (train jobs' evaluations, eval jobs' scoring).
"""
from __future__ import annotations

from pathlib import Path

import torch

from sar_core.eval import FigureConfig, evaluate
from sar_core.eval.figures import student_forcing_figure
from sar_core.objectives import TokenBatch
from sar_core.schedule import ScaleSchedule


def evaluate_generator(model, tokenizer, job, schedule: ScaleSchedule, out_dir: Path, trace_batch: TokenBatch | None = None,
                       cache_dir: Path | None = None):
    """Collective over the data-parallel workers; rank 0 gets (metrics, figure paths), others ({}, []).
    `cache_dir`: where the prepared metric classifier and reference features are (None: the data cache)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = job.data.image_dataset(tokenizer.config.image_size)
    figures = FigureConfig() if job.eval.figures else None
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    result = evaluate(model, tokenizer, job.eval.sampling, job.eval.metrics, schedule, out_dir,
                      data=data, figures=figures, progress=rank == 0, cache_dir=cache_dir)
    paths = [Path(p) for p in result.figures.values()]
    if rank == 0 and result.samples_path is not None:
        paths.append(Path(result.samples_path))
    if rank == 0 and figures is not None and trace_batch is not None:
        paths.append(student_forcing_figure(model, tokenizer, trace_batch, job.objective, out_dir / "student_forcing.png"))
    metrics = dict(result.metrics)
    if rank == 0:
        metrics["eval/seconds"] = result.seconds
    return metrics, paths


def artifact_folder(path: Path) -> str:
    """Where an evaluation output goes among a run's MLflow artifacts."""
    return "figures" if path.suffix == ".png" else "samples"
