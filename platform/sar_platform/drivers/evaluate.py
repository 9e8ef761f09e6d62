"""`eval` jobs: score a generator checkpoint on the cluster's workers (each generates its share)."""
from __future__ import annotations

import tempfile
from pathlib import Path

import ray.train
from ray.train.torch import TorchTrainer

from sar_platform.drivers.train import finish, run_config, scaling_config
from sar_platform.tracking import RunHandle


def score_worker(config: dict) -> None:
    """Ray Train worker: load both checkpoints, evaluate collectively, rank 0 logs and reports."""
    import ray.train.torch

    from sar_core.checkpoint import load_model
    from sar_core.schedule import ScaleSchedule
    from sar_platform.evaluation import evaluate_generator
    from sar_platform.storage import Workspace
    from sar_platform.worker.generator_task import compatible
    from sar_platform.worker.loop import autocast, precision

    job, handle = config["job"], config["mlflow"]
    workspace = Workspace(job.storage.path, job.storage.s3_endpoint)
    device = ray.train.torch.get_device()
    tokenizer = load_model(workspace.local_copy(job.tokenizer), kind="tokenizer", device=device).eval()
    model = load_model(workspace.local_copy(job.generator), kind="generator", device=device).eval()
    compatible(model, tokenizer)
    with autocast(device, precision(job)):
        metrics, paths = evaluate_generator(model, tokenizer, job, ScaleSchedule(job.schedule), Path(tempfile.mkdtemp()))
    if ray.train.get_context().get_world_rank() == 0 and handle is not None:
        handle.log_metrics(metrics, 0)
        for path in paths:
            handle.log_artifact(path, "figures" if path.suffix == ".png" else "samples")
    ray.train.report(metrics)


def run(job, session, parent: RunHandle | None, run_name: str) -> dict:
    from sar_platform.evaluation import ensure_eval_assets

    ensure_eval_assets(job, session)
    handle = session.open_run(f"{session.workspace.root}/{run_name}", run_name, job, parent)
    print(f"[sar] {run_name}: scoring {job.generator} ({job.eval.metrics.num_samples} samples)", flush=True)
    trainer = TorchTrainer(score_worker, train_loop_config={"job": job, "mlflow": handle},
                           scaling_config=scaling_config(job.resources), run_config=run_config(job, session, run_name))
    return finish(trainer.fit(), session, run_name, handle, {"kind": "eval", "generator": job.generator, "tokenizer": job.tokenizer})
