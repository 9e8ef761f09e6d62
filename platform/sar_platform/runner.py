"""`sar run`: check the job, start (or reuse) MLflow, connect Ray, and hand the job to its driver."""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Any, Callable

from sar_platform.mlflow_server import ensure_server
from sar_platform.ray_env import repository_runtime_env
from sar_platform.spec.loader import SpecError
from sar_platform.storage import Workspace
from sar_platform.tracking import RunHandle, Tracker


@dataclass
class Session:
    """What every job driver needs: where things go, where they are tracked, and how to behave on
    finding earlier work (`resume`)."""

    workspace: Workspace
    tracker: Tracker
    resume: bool
    spec_text: str = ""

    def run_dir(self, run_name: str) -> str:
        return self.workspace.path("runs", run_name)

    def outputs(self, run_name: str) -> dict | None:
        return self.workspace.read_json(self.workspace.path("runs", run_name, "outputs.json"))

    def save_outputs(self, run_name: str, outputs: dict) -> None:
        self.workspace.write_json(self.workspace.path("runs", run_name, "outputs.json"), outputs)

    def checkpoint_uri(self, path: str) -> str:
        """A Ray Train checkpoint path (inside the storage filesystem) as a path or s3:// URI."""
        return path if self.workspace.is_local else f"s3://{path}"

    def ray_storage(self):
        fs, root = self.workspace.filesystem()
        return (root + "/runs", fs) if not self.workspace.is_local else (self.workspace.path("runs"), None)

    def open_run(self, run_key: str, name: str, job, parent: RunHandle | None, tags: dict | None = None) -> RunHandle:
        """The job's MLflow run (created once, found again on resume/retry), with the spec attached."""
        handle, created = self.tracker.open(
            run_key, name, params=job.model_dump(mode="json"), parent=parent, description=job.description,
            tags={"sar.job_kind": job.kind, "sar.spec_name": job.name, **(tags or {})},
        )
        if created and self.spec_text:
            handle.client().log_text(handle.run_id, self.spec_text, "spec.yaml")
        return handle


def run_names(job, prefix: str = "") -> list[str]:
    """Every Ray run directory a job will create (pipelines: one per step)."""
    name = f"{prefix}{job.name}"
    if job.kind == "pipeline":
        return [n for step in job.steps.values() for n in run_names(step, f"{name}.")]
    return [name]


def preflight(job, workspace: Workspace, resume: bool) -> None:
    """Refuse to overwrite earlier work before anything expensive starts."""
    if resume:
        return
    existing = [n for n in run_names(job) if workspace.exists(workspace.path("runs", n))]
    if existing:
        raise SpecError([
            f"{workspace.path('runs', existing[0])} already exists: continue it with `sar run --resume`, "
            f"or give the job another name (runs found: {', '.join(existing)})"
        ])
    from sar_platform.checks import check_inputs

    check_inputs(job, workspace)


def connect_ray(address: str | None, num_cpus: int | None, env_vars: dict[str, str]) -> None:
    import ray

    runtime_env = repository_runtime_env(env_vars=env_vars)
    if os.environ.get("SAR_RAY_JOB"):
        # Inside `sar submit`'s Ray Job, whose runtime env already ships the repository: add the
        # variables only (Ray merges them key by key; the job sets RAY_OVERRIDE_JOB_RUNTIME_ENV).
        runtime_env = {"env_vars": runtime_env["env_vars"]}
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
    else:
        # Everything on loopback: the embedded cluster serves this machine only.
        ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1", runtime_env=runtime_env,
                 log_to_driver=True, _node_ip_address="127.0.0.1")


def check_cluster(job, workspace: Workspace, tracking_uri: str) -> None:
    """Local storage and an embedded (loopback) MLflow server only work when every node is this machine."""
    import ray

    here = ray.util.get_node_ip_address()
    remote = [n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive") and n["NodeManagerAddress"] != here]
    if not remote:
        return
    problems = []
    if workspace.is_local:
        problems.append(f"storage.path {workspace.root} is a local folder but the cluster has other nodes ({remote[0]}): "
                        "use s3://... or a shared file system path")
    if job.mlflow.tracking_uri is None:
        problems.append(f"the embedded MLflow server ({tracking_uri}) is not reachable from other nodes: "
                        "set mlflow.tracking_uri to a server every node can reach")
    if problems:
        raise SpecError(problems)


DRIVER_MODULES = {"tokenizer": "tokenizer", "train": "train", "eval": "evaluate", "sweep": "sweep", "pipeline": "pipeline"}


def driver(kind: str) -> Callable:
    """The function that runs a job of this kind (drivers/<module>.py: run(job, session, parent, run_name))."""
    return importlib.import_module(f"sar_platform.drivers.{DRIVER_MODULES[kind]}").run


def run_job(job, spec_text: str = "", address: str | None = None, resume: bool = False,
            num_cpus: int | None = None) -> dict[str, Any]:
    import ray

    workspace = Workspace(job.storage.path, job.storage.s3_endpoint)
    preflight(job, workspace, resume)
    if job.mlflow.tracking_uri:
        tracking_uri = job.mlflow.tracking_uri
    else:
        print(f"[sar] starting (or reusing) the MLflow server in {workspace.mlflow_root()}", flush=True)
        tracking_uri = ensure_server(workspace.mlflow_root(), job.mlflow.port).uri
    tracker = Tracker(tracking_uri, job.mlflow.experiment)
    print(f"[sar] MLflow: {tracker.runs_url()}", flush=True)
    # MLflow would print a "View run" link per finished run; the runner prints the experiment's once.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    env = {"MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
    started_ray = not ray.is_initialized()
    if started_ray:
        connect_ray(address, num_cpus, env)
    try:
        check_cluster(job, workspace, tracking_uri)
        session = Session(workspace, tracker, resume, spec_text)
        outputs = driver(job.kind)(job, session, parent=None, run_name=job.name)
    finally:
        if started_ray:
            ray.shutdown()
    print(f"[sar] done. MLflow runs: {tracker.runs_url()}", flush=True)
    return outputs
