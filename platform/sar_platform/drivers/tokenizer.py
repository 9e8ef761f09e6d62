"""`tokenizer` jobs: train the multi-scale VQ tokenizer in a TorchTrainer."""
from __future__ import annotations

from ray.train.torch import TorchTrainer

from sar_platform.data import image_source
from sar_platform.drivers.train import finish, run_config, scaling_config
from sar_platform.tracking import RunHandle


def run(job, session, parent: RunHandle | None, run_name: str) -> dict:
    from sar_platform.worker.tokenizer_task import CHECKPOINT_FILE, train_tokenizer

    steps = job.optim.total_steps(len(image_source(job.data, job.model, "train")))
    handle = session.open_run(f"{session.workspace.root}/{run_name}", run_name, job, parent)
    print(f"[sar] {run_name}: training the tokenizer for {steps} steps", flush=True)
    trainer = TorchTrainer(
        train_tokenizer,
        train_loop_config={"job": job, "steps": steps, "mlflow": handle},
        scaling_config=scaling_config(job.resources),
        run_config=run_config(job, session, run_name),
    )
    result = trainer.fit()
    checkpoint = session.checkpoint_uri(result.checkpoint.path) if result.checkpoint else ""
    return finish(result, session, run_name, handle, {"kind": "tokenizer", "tokenizer": f"{checkpoint}/{CHECKPOINT_FILE}"})
