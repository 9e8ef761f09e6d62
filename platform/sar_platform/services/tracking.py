"""MLflow bookkeeping: exactly one run per job / trial, found again by a key on retry or resume.

The driver opens runs (params = the run's own resolved spec, limited to the fields it reads,
logged once) and hands `RunHandle`s to Ray workers; only rank 0 logs through them. A run that
continues another run's checkpoint (post-training) logs on that run's step axis: its steps are
offset by the checkpoint's step, so one chart shows pretraining and post-training in order. Runs are looked up by the tag `sar.run_key` (storage path +
job name, or the trial id), so a retried worker group, a restarted trial or `sar run --resume`
continues the run instead of creating a duplicate.

Tracking never stops training: every client call is retried with backoff on transient errors
(`RetryingClient`), and training metrics wait in a `MetricOutbox` until the checkpoint that makes
them final is reported — so a restarted worker or a resumed run never logs a step twice — and for as
long as the server is away (they travel inside every checkpoint meanwhile).

`Tracker` is used in the `sar` process; `RunHandle` travels to Ray workers, which log through it.
"""
from __future__ import annotations

import functools
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

# MLflow's HTTP client retries a refused connection for minutes by default (7 tries, backoff 2);
# the retries below are ours, bounded, and a training loop keeps its metrics instead of waiting.
# Set before MLflow reads them; users' own settings win.
for _key, _value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2"), ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
                     ("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")):
    os.environ.setdefault(_key, _value)

from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from sar_platform.services.mlflow_server import recorded_uri
from sar_platform.services.ray_env import repository_root

RUN_KEY_TAG = "sar.run_key"
PARENT_TAG = "mlflow.parentRunId"
DESCRIPTION_TAG = "mlflow.note.content"
"""The run's description in the MLflow UI (markdown)."""
EXPERIMENT_KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
"""The experiment type MLflow 3 records (its UI's "experiment type" setting): model training, not GenAI."""
MODEL_TRAINING_VIEW = "?workflowType=machine_learning"
"""MLflow 3.17's UI picks GenAI or model-training pages by a switch it remembers per browser (GenAI
at first); a link carrying this query opens the model-training pages whatever the switch says."""
STEP_METRIC = "step"
"""Logged with every training report (its value: the step); what a resumed run's outbox checks."""
METRICS_PER_REQUEST = 1000  # MLflow's log_batch limit
PERMANENT_ERRORS = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS", "BAD_REQUEST",
                    "PERMISSION_DENIED", "UNAUTHENTICATED", "INVALID_STATE", "ENDPOINT_NOT_FOUND"}
"""MLflow error codes that a retry cannot fix; anything else (refused connections, timeouts, 5xx,
client-side glitches such as the usage-telemetry race) is retried."""


def transient(error: BaseException) -> bool:
    if isinstance(error, MlflowException):
        return error.error_code not in PERMANENT_ERRORS
    return isinstance(error, (OSError, ConnectionError, TimeoutError)) or type(error).__module__.startswith(
        ("requests", "urllib3"))


def with_retries(call: Callable[[], Any], what: str, attempts: int = 5, first_delay: float = 1.0) -> Any:
    """`call()`, retried with exponential backoff (1, 2, 4, ... s) while it fails transiently."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception as e:  # noqa: BLE001 — classified just below
            if not transient(e) or attempt == attempts - 1:
                raise
            delay = first_delay * 2**attempt
            print(f"[sar] MLflow {what} failed ({type(e).__name__}: {str(e)[:200]}); retrying in {delay:.0f}s",
                  file=sys.stderr, flush=True)
            time.sleep(delay)


class RetryingClient:
    """An MlflowClient whose every method call goes through `with_retries`, each attempt on a
    client for the server's URI at that moment (`uri()`)."""

    def __init__(self, uri: Callable[[], str], attempts: int = 5):
        self._uri, self._attempts = uri, attempts

    def __getattr__(self, name: str):
        attr = getattr(MlflowClient(self._uri()), name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args, **kwargs):
            return with_retries(lambda: getattr(MlflowClient(self._uri()), name)(*args, **kwargs), name, self._attempts)

        return call


def current_uri(tracking_uri: str, server_root: str) -> str:
    """`tracking_uri`, or for the workspace's embedded server (`server_root`) the URI it was last
    started on: restarted by `sar ui` while a job runs, it may have moved to another port."""
    return (recorded_uri(server_root) if server_root else None) or tracking_uri


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(value)
    return out


def metric_key(name: str) -> str:
    """MLflow accepts letters, digits and `_ - . / space` in metric names."""
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", name)


def git_commit(repo: Path | None = None) -> str:
    repo = repo or repository_root()
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if out.returncode != 0:
        return "unknown"
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def environment() -> dict[str, str]:
    """The software a job ran with: Python, the OS, the packages that compute or record its result,
    and the code's git commit (the top-level run's `environment.json`)."""
    import einops
    import mlflow
    import numpy
    import pydantic
    import ray
    import safetensors
    import torch

    env = {"python": platform.python_version(), "platform": platform.platform(), "git_commit": git_commit()}
    env.update({m.__name__: m.__version__ for m in (torch, ray, mlflow, numpy, einops, pydantic, safetensors)})
    env["cuda"] = torch.version.cuda or "none"
    return env


ENV_TAG = "sar.env."
"""Prefix of the tags that say what a run ran on (software and hardware of the process computing it)."""


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what the platform reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def environment_tags(workers: int | None = None) -> dict[str, str]:
    """`sar.env.*` tags for the software and hardware of this process: library versions, CUDA, the
    accelerator's model and how many this node has, the CPU model, its threads and torch's. Set by
    the driver when it opens a run, then by rank 0 of the workers that compute it (their node's)."""
    import mlflow
    import ray
    import torch

    cuda = torch.cuda.is_available()
    tags = {"python": platform.python_version(), "torch": torch.__version__, "ray": ray.__version__,
            "mlflow": mlflow.__version__, "cuda": torch.version.cuda or "none",
            "device": torch.cuda.get_device_name(0) if cuda else "cpu",
            "devices_per_node": str(torch.cuda.device_count() if cuda else 0),
            "cpu": cpu_model(), "cpu_threads": str(os.cpu_count() or 0), "torch_threads": str(torch.get_num_threads())}
    if workers is not None:
        tags["workers"] = str(workers)
    return {ENV_TAG + k: v for k, v in tags.items()}


def ran_on(tags: Mapping[str, str]) -> str:
    """One line from a run's `sar.env.*` tags: `2 x NVIDIA A100 (8 per node), AMD EPYC 7763 (128 threads, torch 16), torch 2.13.0, CUDA 12.8`."""
    get = lambda k: tags.get(ENV_TAG + k)  # noqa: E731
    if get("torch") is None:
        return "not recorded"
    device = get("device") or "?"
    if device != "cpu":
        device += f" ({get('devices_per_node')} per node)"
    workers = f"{get('workers')} worker(s) on " if get("workers") else ""
    return (f"{workers}{device}, {get('cpu')} ({get('cpu_threads')} threads, torch {get('torch_threads')}), "
            f"torch {get('torch')}, CUDA {get('cuda')}, Ray {get('ray')}")


@dataclass(frozen=True)
class RunHandle:
    """What a Ray worker needs to log into an existing run (picklable, no client state)."""

    tracking_uri: str
    run_id: str
    step_offset: int = 0
    """Added to every step logged: the step of the checkpoint this run continues (0: none)."""
    server_root: str = ""
    """The workspace's embedded MLflow server folder, where its current port is recorded ("": another server)."""

    def client(self, attempts: int = 5) -> RetryingClient:
        return RetryingClient(lambda: current_uri(self.tracking_uri, self.server_root), attempts)

    def global_step(self, step: int) -> int:
        return self.step_offset + step

    def log_metrics(self, metrics: Mapping[str, float], step: int, attempts: int = 5) -> None:
        """One step's metrics; with the `step` metric in the last request, so that a step whose
        `step` arrived arrived whole (what `last_logged_step` relies on)."""
        ts = int(time.time() * 1000)
        items = sorted((Metric(metric_key(k), float(v), ts, self.global_step(step)) for k, v in metrics.items()),
                       key=lambda m: m.key == STEP_METRIC)
        client = self.client(attempts)
        for i in range(0, len(items), METRICS_PER_REQUEST):
            client.log_batch(self.run_id, metrics=items[i : i + METRICS_PER_REQUEST])

    def last_logged_step(self, attempts: int = 5) -> int:
        """The last training step (this run's own count) whose metrics reached the run (0: none)."""
        history = self.client(attempts).get_metric_history(self.run_id, STEP_METRIC)
        return int(max((m.value for m in history), default=0))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client().log_artifact(self.run_id, str(path), artifact_path)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.client().log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def finish(self, status: str = "FINISHED") -> None:
        self.client().set_terminated(self.run_id, status)


class MetricOutbox:
    """Training metrics on their way to one run (rank 0 of a training loop).

    `add` holds a report's metrics; `commit` (once a checkpoint covering them is reported) makes
    them final; `flush` sends the final ones in step order and keeps whatever the server did not
    take. `pending()` (held and unsent) is saved in every checkpoint and `restore`d on resume,
    where the steps the run already has are dropped: no step reaches MLflow twice, none is lost."""

    def __init__(self, handle: RunHandle | None, attempts: int = 3):
        self.handle, self.attempts = handle, attempts
        self.held: list[tuple[int, dict[str, float]]] = []
        self.unsent: list[tuple[int, dict[str, float]]] = []
        self.logged_until: int | None = None
        """The last step the run had before this process (learnt on the first flush): training
        reports up to it arrived earlier, from a timeline that a restart repeated."""

    def add(self, step: int, metrics: Mapping[str, float]) -> None:
        self.held.append((step, dict(metrics)))

    def commit(self) -> None:
        self.unsent += self.held
        self.held = []

    def pending(self) -> list[tuple[int, dict[str, float]]]:
        return [*self.unsent, *self.held]

    def restore(self, entries) -> None:
        """Metrics a checkpoint carried: final (its steps are at or before the checkpoint)."""
        self.unsent = [(int(step), dict(metrics)) for step, metrics in entries]

    def flush(self) -> bool:
        """Send every final step; True when none is left (the server may be away: kept for later)."""
        if self.handle is None:
            self.unsent = []
            return True
        try:
            if self.logged_until is None:
                self.logged_until = self.handle.last_logged_step(self.attempts)
            while self.unsent:
                step, metrics = self.unsent[0]
                if STEP_METRIC not in metrics or step > self.logged_until:  # training reports carry `step`
                    self.handle.log_metrics(metrics, step, self.attempts)
                self.unsent.pop(0)
        except Exception as e:  # noqa: BLE001 — tracking never stops training
            if not transient(e):
                raise
            print(f"[sar] MLflow unreachable ({type(e).__name__}); {len(self.unsent)} report(s) kept and sent later",
                  file=sys.stderr, flush=True)
            return False
        return True

    def flush_patiently(self, patience: float = 300.0) -> bool:
        """`flush`, retried for up to `patience` seconds (the end of a run: nothing else to do)."""
        deadline, delay = time.monotonic() + patience, 5.0
        while not self.flush():
            if time.monotonic() + delay > deadline:
                return False
            time.sleep(delay)
            delay = min(2 * delay, 60.0)
        return True


def runs_url(uri: str, experiment_id: str) -> str:
    """The experiment's runs table, on the model-training pages."""
    return f"{uri}/#/experiments/{experiment_id}/runs{MODEL_TRAINING_VIEW}"


def run_url(uri: str, experiment_id: str, run_id: str) -> str:
    """The run's page (overview, params, metrics, description, artifacts), on the model-training pages."""
    return f"{uri}/#/experiments/{experiment_id}/runs/{run_id}{MODEL_TRAINING_VIEW}"


class Tracker:
    """Driver-side access to one experiment on one tracking server."""

    def __init__(self, tracking_uri: str, experiment: str, server_root: str = ""):
        self.uri, self.server_root = tracking_uri, server_root
        self.client = RetryingClient(lambda: current_uri(tracking_uri, server_root))
        self.opened: list[RunHandle] = []
        """Runs opened through this tracker (`end_open_runs` closes what they leave RUNNING)."""
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            self.experiment_id = self.client.create_experiment(experiment, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING})
        else:
            self.experiment_id = found.experiment_id
            if found.tags.get(EXPERIMENT_KIND_TAG) != MODEL_TRAINING:  # made before the tag, or by hand
                self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)

    def runs_url(self) -> str:
        return runs_url(self.uri, self.experiment_id)

    def run_url(self, run_id: str) -> str:
        return run_url(self.uri, self.experiment_id, run_id)

    def find(self, run_key: str) -> str | None:
        escaped = run_key.replace("'", "\\'")
        runs = self.client.search_runs([self.experiment_id], f"tags.`{RUN_KEY_TAG}` = '{escaped}'", max_results=2)
        return runs[0].info.run_id if runs else None

    def open(
        self,
        run_key: str,
        name: str,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        parent: RunHandle | None = None,
        description: str = "",
        step_offset: int = 0,
    ) -> tuple[RunHandle, bool]:
        """The run for `run_key`: reopened if it exists (params untouched), else created."""
        run_id = self.find(run_key)
        if run_id is not None:
            self.client.update_run(run_id, status="RUNNING")
            handle = RunHandle(self.uri, run_id, step_offset, self.server_root)
            self.opened.append(handle)
            return handle, False
        all_tags = {RUN_KEY_TAG: run_key, "sar.git_commit": git_commit(), **environment_tags(), **(tags or {})}
        if parent is not None:
            all_tags[PARENT_TAG] = parent.run_id
        if description:
            all_tags[DESCRIPTION_TAG] = description
        run = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags)
        handle = RunHandle(self.uri, run.info.run_id, step_offset, self.server_root)
        self.opened.append(handle)
        items = [Param(k, v[:6000]) for k, v in flatten(params or {}).items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(handle.run_id, params=items[i : i + 100])
        return handle, True

    def children(self, parent: RunHandle) -> list:
        return self.client.search_runs([self.experiment_id], f"tags.`{PARENT_TAG}` = '{parent.run_id}'")

    def end_open_runs(self, status: str) -> list[str]:
        """Mark every run opened here, and every run nested under one (a sweep's trials run in
        other processes), that is still RUNNING as `status` (FAILED or KILLED). Returns their names."""
        ended, seen = [], set()
        queue = [h.run_id for h in self.opened]
        while queue:
            run_id = queue.pop()
            if run_id in seen:
                continue
            seen.add(run_id)
            run = self.client.get_run(run_id)
            if run.info.status == "RUNNING":
                self.client.set_terminated(run_id, status)
                ended.append(run.info.run_name)
            queue += [r.info.run_id for r in self.client.search_runs([self.experiment_id], f"tags.`{PARENT_TAG}` = '{run_id}'")]
        return ended
