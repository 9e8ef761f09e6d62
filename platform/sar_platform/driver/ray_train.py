"""The Ray Train plumbing every driver shares: how many workers with which resources, where a run's
checkpoints go, fitting a TorchTrainer around a worker entry point, and turning the result into the
run's outputs (outputs.json, the MLflow run's status and checkpoint tag).

A run that fails ends FAILED in MLflow and raises `JobFailed` naming the cause (the workers' own
error, e.g. a non-finite loss at a step); before a run continues from its checkpoints, damaged ones
are set aside (`run_checkpoints`).

Runs in the `sar` process (and in Tune trial functions).
"""
from __future__ import annotations

import threading

import ray.train
from ray.train.torch import TorchTrainer

from sar_platform.driver.run_checkpoints import set_aside_damaged
from sar_platform.driver.session import JobFailed, Session, WorkerEntry
from sar_platform.services.selection import CHECKPOINT_SCORE
from sar_platform.services.tracking import RunHandle


def scaling_config(resources) -> ray.train.ScalingConfig:
    per_worker = {"CPU": resources.cpus_per_worker}
    if resources.use_gpu:
        per_worker["GPU"] = resources.gpus_per_worker
    return ray.train.ScalingConfig(
        num_workers=resources.num_workers, use_gpu=resources.use_gpu, resources_per_worker=per_worker,
        placement_strategy=resources.placement_strategy,
    )


def checkpoint_config(job) -> ray.train.CheckpointConfig:
    """The newest `checkpoint.keep` checkpoints; under a selection rule (`eval.select`), the `keep`
    latest best ones by the rule and the latest (to resume from), so the best one is never deleted."""
    keep = job.checkpoint.keep if hasattr(job, "checkpoint") else None
    select = getattr(getattr(job, "eval", None), "select", None)
    if select is None:
        return ray.train.CheckpointConfig(num_to_keep=keep)
    return ray.train.CheckpointConfig(num_to_keep=keep, checkpoint_score_attribute=CHECKPOINT_SCORE,
                                      checkpoint_score_order="max")


def run_config(job, session: Session, run_name: str) -> ray.train.RunConfig:
    """Where the run's checkpoints go (runs/<name>), which are kept, and how often it is retried."""
    storage_path, filesystem = session.workspace.ray_storage()
    return ray.train.RunConfig(
        name=run_name, storage_path=storage_path, storage_filesystem=filesystem,
        failure_config=ray.train.FailureConfig(max_failures=job.max_failures),
        checkpoint_config=checkpoint_config(job),
        callbacks=list(session.callbacks),
        logging_config=ray.train.LoggingConfig(log_level="WARNING"),  # progress lines come from our loop
    )


def failure_message(error: BaseException) -> str:
    """The workers' own errors behind a Ray Train failure, one line per distinct message."""
    failures = getattr(error, "worker_failures", None)
    causes = list(failures.values()) if failures else [getattr(error, "controller_failure", None) or error]
    lines = []
    for cause in causes:
        cause = getattr(cause, "cause", None) or cause  # a RayTaskError carries the user's exception
        text = f"{type(cause).__name__}: {cause}".strip().splitlines()
        line = next((ln for ln in reversed(text) if ln.strip()), type(cause).__name__)
        if line not in lines:
            lines.append(line)
    return "\n  ".join(lines)


def _fit_waiting_interruptibly(trainer: TorchTrainer):
    """`trainer.fit()` in a helper thread, the caller waiting for it: Ctrl-C and SIGTERM stay ours
    (on the main thread Ray Train installs a SIGINT handler that ends the run as if it had failed,
    and leaves that handler behind)."""
    outcome: dict = {}

    def target():
        try:
            outcome["result"] = trainer.fit()
        except BaseException as e:  # noqa: BLE001 — handed to the waiting thread
            outcome["error"] = e

    thread = threading.Thread(target=target, name="ray-train-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.5)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def fit(entry: WorkerEntry, job, session: Session, run_name: str, handle: RunHandle, datasets: dict | None = None,
        **inputs):
    """Run `entry` on the job's workers and wait for it. Each worker receives the job, its run's
    name, the MLflow run to log into (`mlflow`, rank 0 logs) and `inputs`. Raises JobFailed (the run FAILED)."""
    for line in set_aside_damaged(session.workspace, run_name):
        print(f"[sar] {line}", flush=True)
    trainer = TorchTrainer(entry.fn, train_loop_config={"job": job, "run_name": run_name, "mlflow": handle, **inputs},
                           scaling_config=scaling_config(job.resources), run_config=run_config(job, session, run_name),
                           datasets=datasets)
    try:
        result = _fit_waiting_interruptibly(trainer)
    except ray.train.TrainingFailedError as e:
        handle.finish("FAILED")
        raise JobFailed(f"{run_name} failed:\n  {failure_message(e)}") from e
    if result.error is not None:
        handle.finish("FAILED")
        raise JobFailed(f"{run_name} failed:\n  {failure_message(result.error)}") from result.error
    return result


def finish(result, job, session: Session, run_name: str, handle: RunHandle, entry: WorkerEntry,
           outputs: dict | None = None) -> dict:
    """Record a finished Ray Train run: outputs.json beside it (the job's kind, `outputs`, the model
    file of the last checkpoint, the final metrics), the checkpoint location in MLflow.

    The final metrics are the last checkpoint's report with what rank 0 returned on top (the
    final evaluation, which runs after the final checkpoint is saved)."""
    outputs = {"kind": job.kind, **(outputs or {})}
    checkpoint = session.checkpoint_uri(result.checkpoint.path) if result.checkpoint is not None else None
    if checkpoint is not None and entry.output is not None:
        outputs[entry.output] = f"{checkpoint}/{entry.checkpoint_file}"
    returned = result.return_value if isinstance(result.return_value, dict) else {}
    outputs.update(metrics={**(result.metrics or {}), **returned}, mlflow_run_id=handle.run_id)
    if checkpoint is not None:
        outputs["checkpoint"] = checkpoint
        handle.set_tags({"sar.checkpoint": checkpoint})
    session.save_outputs(run_name, outputs)
    handle.finish()
    return outputs
