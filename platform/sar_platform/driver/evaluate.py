"""`eval` jobs: score a generator checkpoint on the cluster's workers (each generates its share).

Runs in the `sar` process.
"""
from __future__ import annotations

from sar_platform.driver import ray_train
from sar_platform.driver.inputs import checkpoint_origin, ensure_eval_assets
from sar_platform.driver.session import Session
from sar_platform.services.tracking import RunHandle


def run(job, session: Session, parent: RunHandle | None, run_name: str) -> dict:
    ensure_eval_assets(job, session)
    step, origin = checkpoint_origin(job.generator, session)
    handle = session.open_run(run_name, job, parent, step_offset=step, origin=origin)  # metrics at the checkpoint's step
    print(f"[sar] {run_name}: scoring {job.generator} ({job.eval.metrics.num_samples} samples)", flush=True)
    entry = session.worker(job.kind)
    result = ray_train.fit(entry, job, session, run_name, handle)
    return ray_train.finish(result, job, session, run_name, handle, entry,
                            {"generator": job.generator, "tokenizer": job.tokenizer})
