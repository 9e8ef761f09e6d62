"""`tokenizer` jobs: train the multi-scale VQ tokenizer in a TorchTrainer.

Runs in the `sar` process.
"""
from __future__ import annotations

from sar_platform.driver import ray_train
from sar_platform.driver.session import Session
from sar_platform.services.tracking import RunHandle


def run(job, session: Session, parent: RunHandle | None, run_name: str) -> dict:
    steps = job.optim.total_steps(len(job.data.images("train", job.model.image_size)))
    handle = session.open_run(run_name, job, parent)
    print(f"[sar] {run_name}: training the tokenizer for {steps} steps", flush=True)
    entry = session.worker(job.kind)
    result = ray_train.fit(entry, job, session, run_name, handle, steps=steps)
    return ray_train.finish(result, job, session, run_name, handle, entry)
