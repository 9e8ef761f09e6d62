"""Evaluation inside training workers: the four metrics, the figures, and the Fig. 8 rollout rows."""
from __future__ import annotations

from pathlib import Path

import torch

from sar_core.checkpoint import read_header
from sar_core.eval import FigureConfig, evaluate
from sar_core.eval.evaluate import build_feature_network
from sar_core.eval.reference import real_reference
from sar_core.eval.figures import student_forcing_figure
from sar_core.objectives import TokenBatch
from sar_core.schedule import ScaleSchedule
from sar_platform.data import dataset_config


def prepare_eval_assets(job, image_size: int) -> str:
    """Train (or find) the feature network and the real reference features once, before training
    starts, so that the workers' evaluation only loads them from the cache. Runs as a Ray task."""
    data = dataset_config(job.data, image_size)
    network = build_feature_network(job.eval.metrics, data, "cpu", progress=True)
    real = real_reference(network, job.eval.metrics, data, image_size)
    return f"{network.fingerprint} vs {real.description}"


def ensure_eval_assets(job, session) -> None:
    from sar_platform.ray_env import run_task

    _, tokenizer_config, _ = read_header(session.workspace.local_copy(job.tokenizer))
    described = run_task(prepare_eval_assets, job, tokenizer_config.image_size, num_cpus=job.resources.cpus_per_worker)
    print(f"[sar] evaluation assets: {described}", flush=True)


def evaluate_generator(model, tokenizer, job, schedule: ScaleSchedule, out_dir: Path, trace_batch: TokenBatch | None = None):
    """Collective over the data-parallel workers; rank 0 gets (metrics, figure paths), others ({}, [])."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = dataset_config(job.data, tokenizer.config.image_size)
    figures = FigureConfig() if job.eval.figures else None
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    result = evaluate(model, tokenizer, job.eval.sampling, job.eval.metrics, schedule, out_dir,
                      data=data, figures=figures, progress=rank == 0)
    paths = [Path(p) for p in result.figures.values()]
    if rank == 0 and result.samples_path is not None:
        paths.append(Path(result.samples_path))
    if rank == 0 and figures is not None and trace_batch is not None:
        paths.append(student_forcing_figure(model, tokenizer, trace_batch, job.objective, out_dir / "student_forcing.png"))
    metrics = dict(result.metrics)
    if rank == 0:
        metrics["eval/seconds"] = result.seconds
    return metrics, paths
