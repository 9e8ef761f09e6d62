"""`sar run`: check the job, lock its runs, start (or reuse) MLflow, connect Ray, and hand the job
to its driver through the job-kind table.

Every MLflow run ends FINISHED, FAILED or KILLED: drivers finish their runs; whatever escapes a
job — an error, Ctrl-C, SIGTERM (what `ray job stop` sends a job's driver) — ends the runs this
process opened, and the runs nested under them, as FAILED (an error) or KILLED (an interruption),
in `ending_runs`, the one place that does it.

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
from sar_platform.driver import cluster_nodes, embedded_ray
from sar_platform.driver.placement import placement_problems
from sar_platform.driver.run_lock import hold_runs, in_use, live_holder
from sar_platform.driver.session import Session
from sar_platform.services.mlflow_server import ensure_server
from sar_platform.services.ray_env import quiet_packaging_logs, repository_runtime_env
from sar_platform.services.storage import Workspace
from sar_platform.services.tracking import Tracker
from sar_platform.spec.loader import Locator, SpecError

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the job stops, its runs are KILLED, its checkpoints stay."""

    signal_number = signal.SIGTERM


def _raise_terminated(signum, frame):
    raise Terminated()


@contextmanager
def sigterm_interrupts():
    """SIGTERM raises `Terminated` in the main thread while the block runs (Ray's own handler,
    installed by `ray.init`, would exit without ending the runs). Re-enter after `ray.init`."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def ending_runs(tracker: Tracker):
    """Whatever leaves the block ends the runs it left RUNNING: KILLED on Ctrl-C / SIGTERM, FAILED
    on any error; the exception goes on (the CLI turns it into an exit status)."""
    try:
        yield
    except BaseException as e:
        status = "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED"
        try:
            ended = tracker.end_open_runs(status)
        except Exception as tracking_error:  # noqa: BLE001 — the job's own error is the one to report
            print(f"[sar] could not mark the MLflow runs {status}: {tracking_error}", file=sys.stderr, flush=True)
        else:
            if ended:
                print(f"[sar] MLflow runs marked {status}: {', '.join(ended)}", file=sys.stderr, flush=True)
        raise


def preflight(job, workspace: Workspace, resume: bool, locator: Locator | None = None) -> None:
    """Refuse to overwrite earlier work before anything expensive starts."""
    if not resume:
        existing = [n for n in job.run_names() if workspace.exists(workspace.run_dir(n))]
        if live := [in_use(n, holder) for n in existing if (holder := live_holder(workspace, n))]:
            raise SpecError(live)
        if existing:
            raise SpecError([
                f"{workspace.run_dir(existing[0])} already exists: continue it with `sar run --resume`, "
                f"or give the job another name (runs found: {', '.join(existing)})"
            ])
    kinds.check_inputs(job, workspace, locator)


def connect_ray(address: str | None, num_cpus: int | None, env_vars: dict[str, str]):
    """Connect to a cluster, or start the embedded one (loopback only); returns the embedded one's
    reaper (None for a cluster)."""
    import ray

    runtime_env = repository_runtime_env(env_vars=env_vars)
    quiet_packaging_logs()
    if os.environ.get("SAR_RAY_JOB"):
        # Inside `sar submit`'s Ray Job, whose runtime env already ships the repository: add the
        # variables only (Ray merges them key by key; the job sets RAY_OVERRIDE_JOB_RUNTIME_ENV).
        # The job's cluster address goes along too: a worker or actor that looks its cluster up
        # ("auto") would otherwise fail on a machine that hosts several Ray clusters.
        runtime_env = {"env_vars": {**runtime_env["env_vars"],
                                    **({"RAY_ADDRESS": os.environ["RAY_ADDRESS"]} if "RAY_ADDRESS" in os.environ else {})}}
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        return None
    return embedded_ray.start(num_cpus, runtime_env, log_to_driver=True)


def alive_nodes() -> list[dict]:
    """The total resources of every node alive now."""
    import ray

    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def check_cluster(job, workspace: Workspace, tracking_uri: str, embedded_mlflow: bool,
                  wait_for_nodes_s: float | None = None) -> None:
    """Right after connecting, before any MLflow run is opened: resources the cluster can never give
    (driver/placement.py; on a cluster, waiting up to `wait_for_nodes_s` for nodes its node types
    can still bring, driver/cluster_nodes.py), and local storage or an embedded (loopback) MLflow
    server on a cluster whose nodes are other machines."""
    import ray

    problems = placement_problems(job, alive_nodes())
    if problems and wait_for_nodes_s is not None:
        from ray.autoscaler.sdk import request_resources

        problems = cluster_nodes.wait_for_nodes(job, problems, wait_for_nodes_s, alive_nodes, cluster_nodes.node_types(),
                                                lambda bundles: request_resources(bundles=bundles))
    here = ray.util.get_node_ip_address()
    remote = [n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive") and n["NodeManagerAddress"] != here]
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


DEFAULT_WAIT_FOR_NODES_S = 1800.0
"""How long a job on a cluster (`--address`) waits for nodes its node types can bring: GPU
instances take minutes to boot and join."""


def run_job(job, spec_text: str = "", address: str | None = None, resume: bool = False,
            num_cpus: int | None = None, locator: Locator | None = None,
            wait_for_nodes_s: float | None = None) -> dict[str, Any]:
    """Run a job tree; on a cluster (`address`) wait up to `wait_for_nodes_s` (default
    DEFAULT_WAIT_FOR_NODES_S) for nodes the cluster can still bring."""
    if address and wait_for_nodes_s is None:
        wait_for_nodes_s = DEFAULT_WAIT_FOR_NODES_S
    with sigterm_interrupts():
        workspace = Workspace.of(job.storage)
        preflight(job, workspace, resume, locator)
        with hold_runs([job.name, *job.run_names()], workspace):
            preflight(job, workspace, resume, locator)  # again: a run that finished while we waited
            return _run_locked(job, workspace, spec_text, address, resume, num_cpus, wait_for_nodes_s)


def _run_locked(job, workspace: Workspace, spec_text: str, address: str | None, resume: bool,
                num_cpus: int | None, wait_for_nodes_s: float | None) -> dict[str, Any]:
    import ray

    tracking_uri, embedded_mlflow = tracking_server(job, workspace)
    tracker = Tracker(tracking_uri, job.mlflow.experiment, str(workspace.mlflow_root()) if embedded_mlflow else "")
    print(f"[sar] MLflow: {tracker.runs_url()}", flush=True)
    # MLflow would print a "View run" link per finished run; the runner prints the experiment's once.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    # Tune's own Ctrl-C handler would end a sweep "successfully"; the interruption is ours to handle.
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    env = {TRACKING_URI_ENV: tracking_uri, "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
    started_ray, reaper = not ray.is_initialized(), None
    try:
        with ending_runs(tracker):
            if started_ray:
                reaper = connect_ray(address, num_cpus, env)
            with sigterm_interrupts():  # ray.init replaced the handler
                check_cluster(job, workspace, tracking_uri, embedded_mlflow, wait_for_nodes_s if address else None)
                session = Session(workspace, tracker, resume, kinds.ENTRIES, spec_text)
                outputs = session.run(job, parent=None, run_name=job.name)
    finally:
        if started_ray:
            embedded_ray.stop(reaper)
    print(f"[sar] done. MLflow runs: {tracker.runs_url()}", flush=True)
    return outputs
