"""MLflow bookkeeping: exactly one run per job / trial, found again by a key on retry or resume.

The driver opens runs (params = the run's own resolved spec, limited to the fields it reads,
logged once) and hands `RunHandle`s to Ray workers; only rank 0 logs through them. A run that
continues another run's checkpoint (post-training) logs on that run's step axis: its steps are
offset by the checkpoint's step, so one chart shows pretraining and post-training in order. Runs are looked up by the tag `sar.run_key` (storage path +
job name, or the trial id), so a retried worker group, a restarted trial or `sar run --resume`
continues the run instead of creating a duplicate.

`Tracker` is used in the `sar` process; `RunHandle` travels to Ray workers, which log through it.
"""
from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from sar_platform.services.ray_env import repository_root

RUN_KEY_TAG = "sar.run_key"
PARENT_TAG = "mlflow.parentRunId"


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


@dataclass(frozen=True)
class RunHandle:
    """What a Ray worker needs to log into an existing run (picklable, no client state)."""

    tracking_uri: str
    run_id: str
    step_offset: int = 0
    """Added to every step logged: the step of the checkpoint this run continues (0: none)."""

    def client(self) -> MlflowClient:
        return MlflowClient(self.tracking_uri)

    def global_step(self, step: int) -> int:
        return self.step_offset + step

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        ts = int(time.time() * 1000)
        items = [Metric(metric_key(k), float(v), ts, self.global_step(step)) for k, v in metrics.items()]
        client = self.client()
        for i in range(0, len(items), 1000):
            client.log_batch(self.run_id, metrics=items[i : i + 1000])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client().log_artifact(self.run_id, str(path), artifact_path)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.client().log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def finish(self, status: str = "FINISHED") -> None:
        self.client().set_terminated(self.run_id, status)


class Tracker:
    """Driver-side access to one experiment on one tracking server."""

    def __init__(self, tracking_uri: str, experiment: str):
        self.uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        found = self.client.get_experiment_by_name(experiment)
        self.experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)

    def runs_url(self) -> str:
        return f"{self.uri}/#/experiments/{self.experiment_id}/runs"

    def run_url(self, run_id: str) -> str:
        return f"{self.runs_url()}/{run_id}"

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
            return RunHandle(self.uri, run_id, step_offset), False
        all_tags = {RUN_KEY_TAG: run_key, "sar.git_commit": git_commit(), **(tags or {})}
        if parent is not None:
            all_tags[PARENT_TAG] = parent.run_id
        if description:
            all_tags["mlflow.note.content"] = description
        run = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags)
        handle = RunHandle(self.uri, run.info.run_id, step_offset)
        items = [Param(k, v[:6000]) for k, v in flatten(params or {}).items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(handle.run_id, params=items[i : i + 100])
        return handle, True

    def children(self, parent: RunHandle) -> list:
        return self.client.search_runs([self.experiment_id], f"tags.`{PARENT_TAG}` = '{parent.run_id}'")
