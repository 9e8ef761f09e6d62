"""The Ray Train plumbing every driver shares: how many workers with which resources, where a run's
checkpoints go, fitting a TorchTrainer around a worker entry point, and turning the result into the
run's outputs (outputs.json, the MLflow run's status and checkpoint tag).

Runs in the `sar` process (and in Tune trial functions).
"""
from __future__ import annotations

import ray.train
from ray.train.torch import TorchTrainer

from sar_platform.driver.session import Session, WorkerEntry
from sar_platform.services.tracking import RunHandle


def scaling_config(resources) -> ray.train.ScalingConfig:
    per_worker = {"CPU": resources.cpus_per_worker}
    if resources.use_gpu:
        per_worker["GPU"] = resources.gpus_per_worker
    return ray.train.ScalingConfig(
        num_workers=resources.num_workers, use_gpu=resources.use_gpu, resources_per_worker=per_worker,
        placement_strategy=resources.placement_strategy,
    )


def run_config(job, session: Session, run_name: str) -> ray.train.RunConfig:
    """Where the run's checkpoints go (runs/<name>), how many are kept, and how often it is retried."""
    keep = job.checkpoint.keep if hasattr(job, "checkpoint") else None
    storage_path, filesystem = session.workspace.ray_storage()
    return ray.train.RunConfig(
        name=run_name, storage_path=storage_path, storage_filesystem=filesystem,
        failure_config=ray.train.FailureConfig(max_failures=job.max_failures),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=keep),
        callbacks=list(session.callbacks),
        logging_config=ray.train.LoggingConfig(log_level="WARNING"),  # progress lines come from our loop
    )


def fit(entry: WorkerEntry, job, session: Session, run_name: str, handle: RunHandle, datasets: dict | None = None,
        **inputs):
    """Run `entry` on the job's workers and wait for it. Each worker receives the job, its run's
    name, the MLflow run to log into (`mlflow`, rank 0 logs) and `inputs`."""
    trainer = TorchTrainer(entry.fn, train_loop_config={"job": job, "run_name": run_name, "mlflow": handle, **inputs},
                           scaling_config=scaling_config(job.resources), run_config=run_config(job, session, run_name),
                           datasets=datasets)
    return trainer.fit()


def finish(result, job, session: Session, run_name: str, handle: RunHandle, entry: WorkerEntry,
           outputs: dict | None = None) -> dict:
    """Record a finished Ray Train run: outputs.json beside it (the job's kind, `outputs`, the model
    file of the last checkpoint, the final metrics), the checkpoint location in MLflow."""
    if result.error is not None:
        handle.finish("FAILED")
        raise RuntimeError(f"{run_name} failed: {result.error}") from result.error
    outputs = {"kind": job.kind, **(outputs or {})}
    checkpoint = session.checkpoint_uri(result.checkpoint.path) if result.checkpoint is not None else None
    if checkpoint is not None and entry.output is not None:
        outputs[entry.output] = f"{checkpoint}/{entry.checkpoint_file}"
    outputs.update(metrics=dict(result.metrics or {}), mlflow_run_id=handle.run_id)
    if checkpoint is not None:
        outputs["checkpoint"] = checkpoint
        handle.set_tags({"sar.checkpoint": checkpoint})
    handle.finish()
    session.save_outputs(run_name, outputs)
    return outputs
