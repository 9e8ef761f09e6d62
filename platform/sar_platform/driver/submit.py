"""`sar submit`: run a job spec as a Ray Job on an existing cluster (Ray Jobs API).

The repository travels as the job's working_dir (so the spec and the code are the submitter's),
and the job's driver is `sar run SPEC --address auto` on the head node.

Runs in the `sar` process (the submitter's machine).
"""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

from sar_platform.services.ray_env import repository_root, repository_runtime_env

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def submit_job(job, spec_path: Path, address: str, resume: bool = False, wait: bool = True, poll_s: float = 2.0) -> int:
    from ray.job_submission import JobSubmissionClient

    repo = repository_root()
    spec = spec_path.resolve()
    if not spec.is_relative_to(repo):
        print(f"sar submit: {spec_path} must lie inside the repository ({repo}, e.g. in jobs/): "
              "the repository is what the cluster receives")
        return 2
    entrypoint = f"python -m sar_platform.cli run {spec.relative_to(repo)} --address auto" + (" --resume" if resume else "")
    env = {"SAR_BASE_DIR": os.getcwd(), "SAR_RAY_JOB": "1", "RAY_OVERRIDE_JOB_RUNTIME_ENV": "1"}
    client = JobSubmissionClient(address)
    submission_id = f"sar-{job.name}-{uuid.uuid4().hex[:8]}"
    client.submit_job(entrypoint=entrypoint, runtime_env=repository_runtime_env(repo, env), submission_id=submission_id)
    print(f"[sar] submitted {submission_id} to {address}")
    if not wait:
        return 0
    seen = 0
    while True:
        status = str(client.get_job_status(submission_id).value)
        logs = client.get_job_logs(submission_id)
        print(logs[seen:], end="", flush=True)
        seen = len(logs)
        if status in TERMINAL:
            print(f"[sar] {submission_id}: {status}")
            return 0 if status == "SUCCEEDED" else 1
        time.sleep(poll_s)
