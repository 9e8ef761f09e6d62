"""The `eval` job's worker: load both checkpoints, generate this worker's share of the samples and
score them collectively; rank 0 logs the metrics and figures and reports them.

Runs inside Ray Train workers.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import ray.train
import ray.train.torch

from sar_core.checkpoint import load_model
from sar_core.schedule import ScaleSchedule
from sar_platform.services.storage import Workspace
from sar_platform.worker.evaluation import artifact_folder, evaluate_generator
from sar_platform.worker.generator_task import compatible
from sar_platform.worker.loop import autocast, precision


def score_generator(config: dict) -> dict:
    """Ray Train worker entry point; rank 0 returns the metrics."""
    job, handle = config["job"], config["mlflow"]
    workspace = Workspace.of(job.storage)
    device = ray.train.torch.get_device()
    tokenizer = load_model(workspace.local_copy(job.tokenizer), kind="tokenizer", device=device).eval()
    model = load_model(workspace.local_copy(job.generator), kind="generator", device=device).eval()
    compatible(model, tokenizer)
    step = handle.step_offset if handle is not None else 0  # the checkpoint's step
    title = f"{job.name}: {Path(job.generator).parent.name}/{Path(job.generator).name} @ step {step}"
    with autocast(device, precision(job)):
        metrics, paths = evaluate_generator(model, tokenizer, job, ScaleSchedule(job.schedule), Path(tempfile.mkdtemp()),
                                            step, title, handle=handle, cache_dir=workspace.eval_cache())
    if ray.train.get_context().get_world_rank() == 0 and handle is not None:
        handle.log_metrics(metrics, 0)
        for path in paths:
            handle.log_artifact(path, artifact_folder(path))
    ray.train.report(metrics)
    return metrics
