"""`train` jobs: pre-tokenize the data once, then run the generator's training loop in a TorchTrainer."""
from __future__ import annotations

from dataclasses import dataclass

import ray.train
from ray.train.torch import TorchTrainer

from sar_platform.data import TokenShardsRef, ensure_token_shards
from sar_platform.tracking import RunHandle


@dataclass(frozen=True)
class TrainInputs:
    """What a train job's workers read, resolved on the driver (paths/URIs, no step references)."""

    tokenizer: str
    init_from: str | None
    shards: TokenShardsRef
    steps: int


def prepare_inputs(job, session) -> TrainInputs:
    from sar_platform.evaluation import ensure_eval_assets

    shards = ensure_token_shards(job, session)
    if job.eval.at_end or job.eval.every_steps:
        ensure_eval_assets(job, session)
    return TrainInputs(job.tokenizer, job.init_from, shards, job.optim.total_steps(shards.num_rows))


def scaling_config(resources) -> ray.train.ScalingConfig:
    per_worker = {"CPU": resources.cpus_per_worker}
    if resources.use_gpu:
        per_worker["GPU"] = resources.gpus_per_worker
    return ray.train.ScalingConfig(
        num_workers=resources.num_workers, use_gpu=resources.use_gpu, resources_per_worker=per_worker,
        placement_strategy=resources.placement_strategy,
    )


def run_config(job, session, run_name: str, callbacks=()) -> ray.train.RunConfig:
    """Where the run's checkpoints go (runs/<name>), how many are kept, and how often it is retried."""
    keep = job.checkpoint.keep if hasattr(job, "checkpoint") else None
    storage_path, filesystem = session.ray_storage()
    return ray.train.RunConfig(
        name=run_name, storage_path=storage_path, storage_filesystem=filesystem,
        failure_config=ray.train.FailureConfig(max_failures=job.max_failures),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=keep),
        callbacks=list(callbacks),
        logging_config=ray.train.LoggingConfig(log_level="WARNING"),  # progress lines come from our loop
    )


def build_trainer(job, inputs: TrainInputs, handle: RunHandle | None, session, run_name: str, callbacks=()) -> TorchTrainer:
    from sar_platform.worker.generator_task import train_generator

    datasets = {"train": inputs.shards.ray_dataset()} if job.data.loader == "ray_data" else None
    return TorchTrainer(
        train_generator,
        train_loop_config={"job": job, "inputs": inputs, "mlflow": handle},
        scaling_config=scaling_config(job.resources),
        run_config=run_config(job, session, run_name, callbacks),
        datasets=datasets,
    )


def finish(result, session, run_name: str, handle: RunHandle, outputs: dict) -> dict:
    """Record a finished Ray Train run: outputs.json beside it, the checkpoint location in MLflow."""
    if result.error is not None:
        handle.finish("FAILED")
        raise RuntimeError(f"{run_name} failed: {result.error}") from result.error
    outputs = {**outputs, "metrics": dict(result.metrics or {}), "mlflow_run_id": handle.run_id}
    if result.checkpoint is not None:
        outputs["checkpoint"] = session.checkpoint_uri(result.checkpoint.path)
        handle.set_tags({"sar.checkpoint": outputs["checkpoint"]})
    handle.finish()
    session.save_outputs(run_name, outputs)
    return outputs


def run(job, session, parent: RunHandle | None, run_name: str) -> dict:
    inputs = prepare_inputs(job, session)
    handle = session.open_run(f"{session.workspace.root}/{run_name}", run_name, job, parent)
    print(f"[sar] {run_name}: training {inputs.steps} steps on {job.resources.num_workers} worker(s)", flush=True)
    result = build_trainer(job, inputs, handle, session, run_name).fit()
    checkpoint = session.checkpoint_uri(result.checkpoint.path) if result.checkpoint else ""
    return finish(result, session, run_name, handle, {
        "kind": "train", "generator": f"{checkpoint}/generator.safetensors", "tokenizer": job.tokenizer,
    })
