"""The runtime environment that ships this repository to Ray workers, and running a function as a
Ray task. Used by the `sar` process (connecting to Ray, `sar submit`, launching tasks)."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from sar_core import paths
from sar_platform.services.hold_points import ENV as HOLD_ENV

# The MLflow client settings the `sar` process runs with (telemetry, HTTP retries) hold in workers too.
MLFLOW_CLIENT_ENV_VARS = ("MLFLOW_DISABLE_TELEMETRY", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
                          "MLFLOW_HTTP_REQUEST_TIMEOUT")
# Never upload environments, outputs or caches; the repository itself is a few hundred kB.
WORKING_DIR_EXCLUDES = [".venv/", ".git/", "workspace/", "**/__pycache__/", "*.egg-info/", ".pytest_cache/", ".whl/"]


def not_upload_chatter(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR or record.filename not in ("packaging.py", "working_dir.py")


def quiet_packaging_logs() -> None:
    """Keep Ray's upload chatter off the user's console: an INFO line per package it pushes, and a
    warning per default-excluded folder (`.git`, `.venv`) that WORKING_DIR_EXCLUDES leaves out on
    purpose. `ray.init` hands its own logger to the upload code, so the filter goes by the file a
    record comes from; errors still show. (One filter object: adding it again is a no-op.)"""
    for name in ("ray._private.worker", "ray._private.runtime_env.packaging", "ray._private.runtime_env.working_dir"):
        logging.getLogger(name).addFilter(not_upload_chatter)


def repository_root() -> Path:
    return Path(__file__).resolve().parents[3]


def repository_runtime_env(repo: str | Path | None = None, env_vars: dict[str, str] | None = None,
                           forward: bool = True) -> dict:
    """working_dir = the repository (job specs and data paths resolve in it; there is no
    `platform/__init__.py`, so the standard library's `platform` stays importable there), the two
    packages as py_modules, plus env vars. `forward`: also pass on this process's data, MLflow and
    Ray-auth variables (a driver to its workers; never `sar submit` to a cluster, whose nodes have
    their own)."""
    # Plain prints from workers: Ray Train's print patch would show every progress line twice.
    env = {"RAY_CHDIR_TO_TRIAL_DIR": "0", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}
    for key in ("RAY_AUTH_MODE", *paths.DATA_ENV_VARS, "MLFLOW_TRACKING_URI", *MLFLOW_CLIENT_ENV_VARS, HOLD_ENV) if forward else ():
        if key in os.environ:
            env[key] = os.environ[key]
    env.update(env_vars or {})
    repo = Path(repo or repository_root())
    return {
        "working_dir": str(repo),
        # The packages travel too, so nodes without an install of this repository can import them.
        "py_modules": [str(repo / "sar_core"), str(repo / "platform" / "sar_platform")],
        "excludes": WORKING_DIR_EXCLUDES,
        "env_vars": env,
    }


def run_task(fn, *args, num_cpus: float = 1, num_gpus: float = 0):
    """Run `fn(*args)` as a Ray task and wait for it, scheduled on the cluster at large.

    Inside a Tune trial the caller runs in the trial's placement group, which would capture the task
    and could never fit it (a trial reserves almost nothing: its TorchTrainer asks for the workers);
    `placement_group=None` opts the task out of that capture."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    remote = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus)(fn).options(
        scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=None))
    return ray.get(remote.remote(*args))
