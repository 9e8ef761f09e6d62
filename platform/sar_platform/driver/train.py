"""`train` jobs: pre-tokenize the data once, then run the generator's training loop in a TorchTrainer;
with a selection rule, record the best checkpoint it chose (driver/selection.py).

Runs in the `sar` process (and, for a sweep's trials, in their Tune trial functions).
"""
from __future__ import annotations

from sar_platform.driver import ray_train
from sar_platform.driver.inputs import prepare_train_inputs, train_datasets
from sar_platform.driver.selection import record_selection
from sar_platform.driver.session import Session
from sar_platform.services.tracking import RunHandle


def run(job, session: Session, parent: RunHandle | None, run_name: str) -> dict:
    inputs = prepare_train_inputs(job, session)
    handle = session.open_run(run_name, job, parent, step_offset=inputs.step_offset, origin=inputs.origin)
    print(f"[sar] {run_name}: training {inputs.steps} steps on {job.resources.num_workers} worker(s)", flush=True)
    entry = session.worker(job.kind)
    result = ray_train.fit(entry, job, session, run_name, handle, datasets=train_datasets(job, inputs), inputs=inputs)
    outputs = {"tokenizer": job.tokenizer}
    if job.eval.select is not None:
        outputs["selection"] = record_selection(job, result, session, run_name, handle, entry)
    return ray_train.finish(result, job, session, run_name, handle, entry, outputs)
