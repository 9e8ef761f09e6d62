"""What every job driver works with: the workspace, the MLflow experiment, whether to resume, and the
worker-side code it launches.

Drivers never import `worker/`: `kinds.py` hands them the worker entry points and Ray-task bodies
(`Entries`) through the session, together with `run_job`, which runs a nested job (a pipeline's
step, a sweep's trial) through the job-kind table.

Runs in the `sar` process (and in Tune trial functions, which rebuild a session for their trial).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import yaml

from sar_core.eval.directions import directions_line
from sar_platform.driver.jobs import RUN_LINE
from sar_platform.driver.run_params import split_record
from sar_platform.services.storage import Workspace
from sar_platform.services.tracking import RunHandle, Tracker, environment
from sar_platform.spec.reads import read_spec


class JobFailed(RuntimeError):
    """A job that ran and failed (its MLflow run is FAILED); `str()` says why, for the user.
    `sar` exits with status 1 and no traceback."""


@dataclass(frozen=True)
class WorkerEntry:
    """A Ray Train worker function and what the checkpoints it reports hold."""

    fn: Callable[[dict], None]
    checkpoint_file: str | None = None
    """The model file inside every checkpoint (None: the worker reports no checkpoints)."""
    output: str | None = None
    """The outputs.json key that names that file (what `step:<name>` references take)."""


@dataclass(frozen=True)
class Entries:
    """The worker-side code drivers launch, and the way to run a job of any kind."""

    workers: Mapping[str, WorkerEntry]
    """Job kind -> the Ray Train worker its driver runs."""
    encode_shards: Callable[..., None]
    """Ray task body: (job, shard folder, workspace) -> None; encodes a train job's token shards."""
    prepare_eval_assets: Callable[..., str]
    """Ray task body: (job, image size, workspace) -> description; caches the feature network and real features."""
    run_job: Callable[..., dict]
    """(job, session, parent, run_name) -> outputs: runs a job through the job-kind table."""


@dataclass(frozen=True)
class Session:
    workspace: Workspace
    tracker: Tracker
    resume: bool
    """Continue earlier runs (and reuse finished pipeline steps) instead of refusing to start."""
    entries: Entries
    spec_text: str = ""
    run_tags: Mapping[str, str] = field(default_factory=dict)
    """Tags of every MLflow run this session opens (a sweep trial's id and parameters)."""
    callbacks: tuple = ()
    """Ray Train callbacks of every run this session starts (a sweep trial's Tune reporting)."""

    def run(self, job, parent: RunHandle | None, run_name: str) -> dict:
        """Run a job of any kind (a pipeline's step, a sweep's trial) under `run_name`."""
        return self.entries.run_job(job, self, parent, run_name)

    def worker(self, kind: str) -> WorkerEntry:
        return self.entries.workers[kind]

    def run_key(self, run_name: str) -> str:
        """What finds a run's MLflow run again on retry or resume: the workspace and the run's name."""
        return f"{self.workspace.root}/{run_name}"

    def outputs(self, run_name: str) -> dict | None:
        """A finished run's outputs.json (None while it has not finished)."""
        return self.workspace.read_json(self.workspace.outputs_path(run_name))

    def save_outputs(self, run_name: str, outputs: dict) -> None:
        self.workspace.write_json(self.workspace.outputs_path(run_name), outputs)

    def checkpoint_uri(self, path: str) -> str:
        """A Ray Train checkpoint path (inside the storage filesystem) as a path or s3:// URI."""
        return path if self.workspace.is_local else f"s3://{path}"

    def open_run(self, run_name: str, job, parent: RunHandle | None, step_offset: int = 0, origin: str = "") -> RunHandle:
        """The job's MLflow run (created once, found again on resume/retry). Params: the fields of the
        job's own resolved spec it reads and its generator's architecture, without infrastructure
        (tags, driver/run_params.py); `spec.yaml`: that spec whole; the run's description says in one line
        what it is (`origin`: where its starting checkpoint came from); the top-level run also keeps
        the spec file as submitted and the software environment. `step_offset`: the step of the checkpoint the run continues."""
        spec = read_spec(job)
        params, record_tags = split_record(job, spec, self.workspace)
        summary = job.summary() + (f"; from {origin}" if origin else "")
        handle, created = self.tracker.open(
            self.run_key(run_name), run_name, params=params, parent=parent, step_offset=step_offset,
            description=summary + (f"\n\n{job.description}" if job.description else ""),
            tags={"sar.job_kind": job.kind, "sar.spec_name": job.name, "sar.summary": summary,
                  "sar.step_offset": str(step_offset), "sar.better": directions_line(), **record_tags, **self.run_tags},
        )
        if created:
            client = handle.client()
            client.log_text(handle.run_id, yaml.safe_dump(spec, sort_keys=False), "spec.yaml")
            if parent is None:
                client.log_dict(handle.run_id, environment(), "environment.json")
                if self.spec_text:
                    client.log_text(handle.run_id, self.spec_text, "submitted.yaml")
        if parent is None:  # one link per `sar run`; `sar submit` / `sar jobs status` pick it up (driver/jobs.py)
            print(f"{RUN_LINE}{run_name}: {self.tracker.run_url(handle.run_id)}", flush=True)
        return handle

    def trial_state(self) -> dict[str, Any]:
        """What a Tune trial function needs to rebuild this session in its own process (picklable)."""
        return {"workspace": self.workspace, "spec_text": self.spec_text, "entries": self.entries,
                "run_tags": dict(self.run_tags)}

    @classmethod
    def for_trial(cls, state: dict[str, Any], tracker: Tracker, run_tags: Mapping[str, str], callbacks: tuple) -> Session:
        """A trial's session: it always resumes (a restarted trial continues its run); its runs carry
        the sweep's session tags and the trial's own."""
        return cls(state["workspace"], tracker, resume=True, entries=state["entries"], spec_text=state["spec_text"],
                   run_tags={**state.get("run_tags", {}), **run_tags}, callbacks=callbacks)
