"""`sar run`: check the job, start (or reuse) MLflow, connect Ray, and hand the job to its driver
through the job-kind table.

Runs in the `sar` process (or the driver of a `sar submit` Ray Job).
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Any

from sar_platform import kinds
from sar_platform.driver.placement import placement_problems
from sar_platform.driver.session import Session
from sar_platform.services.mlflow_server import ensure_server
from sar_platform.services.ray_env import repository_runtime_env
from sar_platform.services.storage import Workspace
from sar_platform.services.tracking import RUN_KEY_TAG, Tracker
from sar_platform.spec.loader import SpecError

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"


def preflight(job, workspace: Workspace, resume: bool) -> None:
    """Refuse to overwrite earlier work before anything expensive starts."""
    if resume:
        return
    existing = [n for n in job.run_names() if workspace.exists(workspace.run_dir(n))]
    if existing:
        raise SpecError([
            f"{workspace.run_dir(existing[0])} already exists: continue it with `sar run --resume`, "
            f"or give the job another name (runs found: {', '.join(existing)})"
        ])
    kinds.check_inputs(job, workspace)


def connect_ray(address: str | None, num_cpus: int | None, env_vars: dict[str, str]) -> None:
    import ray

    runtime_env = repository_runtime_env(env_vars=env_vars)
    if os.environ.get("SAR_RAY_JOB"):
        # Inside `sar submit`'s Ray Job, whose runtime env already ships the repository: add the
        # variables only (Ray merges them key by key; the job sets RAY_OVERRIDE_JOB_RUNTIME_ENV).
        # The job's cluster address goes along too: a worker or actor that looks its cluster up
        # ("auto") would otherwise fail on a machine that hosts several Ray clusters.
        runtime_env = {"env_vars": {**runtime_env["env_vars"],
                                    **({"RAY_ADDRESS": os.environ["RAY_ADDRESS"]} if "RAY_ADDRESS" in os.environ else {})}}
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
    else:
        # Everything on loopback: the embedded cluster serves this machine only.
        ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1", runtime_env=runtime_env,
                 log_to_driver=True, _node_ip_address="127.0.0.1")


def alive_nodes() -> list[dict]:
    """The total resources of every node alive now."""
    import ray

    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def check_cluster(job, workspace: Workspace, tracking_uri: str, embedded_mlflow: bool) -> None:
    """Right after connecting, before any MLflow run is opened: resources the cluster can never give
    (driver/placement.py), and local storage or an embedded (loopback) MLflow server on a cluster
    whose nodes are other machines."""
    import ray

    here = ray.util.get_node_ip_address()
    remote = [n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive") and n["NodeManagerAddress"] != here]
    problems = placement_problems(job, alive_nodes())
    if remote and workspace.is_local:
        problems.append(f"storage.path {workspace.root} is a local folder but the cluster has other nodes ({remote[0]}): "
                        "use s3://... or a shared file system path")
    if remote and embedded_mlflow:
        problems.append(f"the embedded MLflow server ({tracking_uri}) is not reachable from other nodes: "
                        "set mlflow.tracking_uri (or $MLFLOW_TRACKING_URI on the head) to a server every node can reach")
    if problems:
        raise SpecError([f"{job.name}: {p}" for p in problems])


def tracking_server(job, workspace: Workspace) -> tuple[str, bool]:
    """(tracking URI, whether it is the embedded server): the spec's mlflow.tracking_uri, else
    $MLFLOW_TRACKING_URI (the cluster configs set it on the head to the cluster's server, see
    cluster/mlflow-server.sh), else the workspace's embedded server, started if needed."""
    if job.mlflow.tracking_uri:
        return job.mlflow.tracking_uri, False
    if os.environ.get(TRACKING_URI_ENV):
        return os.environ[TRACKING_URI_ENV], False
    print(f"[sar] starting (or reusing) the MLflow server in {workspace.mlflow_root()}", flush=True)
    return ensure_server(workspace.mlflow_root(), job.mlflow.port).uri, True


# --- issue 12 stand-in for issue 11's run-state handling (honest run states on Ctrl-C / SIGTERM) ---
# The smallest path `sar jobs stop` needs: Ray's job stop sends SIGTERM to the job's driver; here it
# interrupts the job like Ctrl-C and every run of the job still RUNNING (the job's, its steps', its
# trials') ends KILLED. Issue 11's `ending_runs` / `sigterm_interrupts` replace this block.
class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C."""


def _raise_terminated(signum, frame):
    raise Terminated()


@contextmanager
def killed_on_sigterm(tracker: Tracker, run_key_prefix: str):
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main else None  # after ray.init, which sets its own
    try:
        yield
    except KeyboardInterrupt:
        escaped = run_key_prefix.replace("'", "\\'")
        running = tracker.client.search_runs(
            [tracker.experiment_id], f"tags.`{RUN_KEY_TAG}` LIKE '{escaped}%' AND attributes.status = 'RUNNING'")
        for run in running:
            tracker.client.set_terminated(run.info.run_id, "KILLED")
        print(f"[sar] interrupted: {len(running)} MLflow run(s) marked KILLED", file=sys.stderr, flush=True)
        raise
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
# --- end of the issue 12 stand-in ---


def run_job(job, spec_text: str = "", address: str | None = None, resume: bool = False,
            num_cpus: int | None = None) -> dict[str, Any]:
    import ray

    workspace = Workspace.of(job.storage)
    preflight(job, workspace, resume)
    tracking_uri, embedded_mlflow = tracking_server(job, workspace)
    tracker = Tracker(tracking_uri, job.mlflow.experiment)
    print(f"[sar] MLflow: {tracker.runs_url()}", flush=True)
    # MLflow would print a "View run" link per finished run; the runner prints the experiment's once.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    env = {TRACKING_URI_ENV: tracking_uri, "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
    started_ray = not ray.is_initialized()
    if started_ray:
        connect_ray(address, num_cpus, env)
    try:
        with killed_on_sigterm(tracker, f"{workspace.root}/{job.name}"):
            check_cluster(job, workspace, tracking_uri, embedded_mlflow)
            session = Session(workspace, tracker, resume, kinds.ENTRIES, spec_text)
            outputs = session.run(job, parent=None, run_name=job.name)
    finally:
        if started_ray:
            ray.shutdown()
    print(f"[sar] done. MLflow runs: {tracker.runs_url()}", flush=True)
    return outputs
