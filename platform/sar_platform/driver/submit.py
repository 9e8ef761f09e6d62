"""`sar submit`: run a job spec as a Ray Job on an existing cluster (Ray Jobs API).

The repository travels as the job's working_dir (so the code is the submitter's; Ray leaves out what
git ignores), the spec's validated text travels in the job's environment, and the job's driver is
`sar run SPEC --submitted --address auto` on the head node. Before anything is sent,
every file the job reads or writes must be somewhere the cluster sees: an s3:// URI, or a path
under a shared file system that every node mounts at the same place (`--shared-path`, or
$SAR_SHARED_PATHS). A path that only exists on the submitter's machine is refused by field.

Nothing from the submitter's environment travels with the job: the cluster's nodes have their own
(S3 credentials from their environment or instance role, the MLflow server, Ray's token).

Runs in the `sar` process (the submitter's machine).
"""
from __future__ import annotations

import dataclasses
import os
import shlex
import sys
import types
import typing
import uuid
from pathlib import Path

from pydantic import BaseModel

from sar_core.eval.config import MetricConfig
from sar_platform.driver import jobs
from sar_platform.services.ray_env import repository_runtime_env
from sar_platform.spec.common import STEP_REF, absolute_if_local

SHARED_PATHS_ENV = "SAR_SHARED_PATHS"
SUBMITTED_SPEC_ENV = "SAR_SUBMITTED_SPEC"
"""Where `sar submit` puts the spec text it validated, for `sar run --submitted` on the cluster."""
# Linux caps one environment string at 128 KiB; the spec is one.
MAX_SUBMITTED_SPEC_BYTES = 96 * 1024


def _resolves_paths(metadata) -> bool:
    return any(getattr(m, "func", None) is absolute_if_local for m in metadata)


def _is_path_type(tp) -> bool:
    """Whether a declared type is PathOrURI, or an Optional of it."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _resolves_paths(typing.get_args(tp)[1:])
    return origin in (typing.Union, types.UnionType) and any(_is_path_type(a) for a in typing.get_args(tp))


def _is_path_field(field) -> bool:
    """pydantic keeps a PathOrURI field's validator in its metadata, an Optional one's in its type."""
    return _resolves_paths(field.metadata) or _is_path_type(field.annotation)


def _metric_files(metrics: MetricConfig, prefix: str) -> list[tuple[str, str]]:
    """The files a metrics config reads: Inception weights (unless a URL) and a reference .npz."""
    found = []
    if metrics.inception_weights and not metrics.inception_weights.startswith(("http://", "https://")):
        found.append((f"{prefix}inception_weights", absolute_if_local(metrics.inception_weights.removeprefix("file://"))))
    if metrics.reference_is_npz:
        found.append((f"{prefix}reference", absolute_if_local(metrics.reference)))
    return found


def file_fields(value, prefix: str = "") -> list[tuple[str, str]]:
    """(field path, value) of every path or URI in a validated job tree."""
    if isinstance(value, MetricConfig):
        return _metric_files(value, prefix)
    if isinstance(value, BaseModel):
        found = []
        for name, field in type(value).model_fields.items():
            child = getattr(value, name)
            if isinstance(child, str) and _is_path_field(field):
                found.append((f"{prefix}{name}", child))
            else:
                found += file_fields(child, f"{prefix}{name}.")
        return found
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [f for d in dataclasses.fields(value) for f in file_fields(getattr(value, d.name), f"{prefix}{d.name}.")]
    if isinstance(value, dict):
        return [f for k, v in value.items() for f in file_fields(v, f"{prefix}{k}.")]
    return []


def unseen_paths(job, shared: list[str]) -> list[str]:
    """A problem per local path of the job that is not under a shared path (each path once)."""
    roots = [Path(p).resolve() for p in shared]
    problems, seen = [], set()
    for field, value in file_fields(job):
        if "://" in value or STEP_REF.match(value) or value in seen:
            continue
        seen.add(value)
        if not any(Path(value).is_relative_to(root) for root in roots):
            problems.append(
                f"{field}: {value} is a path on this machine, which the cluster's nodes cannot see: use an s3:// URI, "
                "or a shared file system that every node mounts at the same path, named with --shared-path PREFIX "
                f"(or ${SHARED_PATHS_ENV}; shared now: {', '.join(map(str, roots)) or 'none'})")
    return problems


def shared_paths(given: list[str] | None) -> list[str]:
    """--shared-path values, then $SAR_SHARED_PATHS (os.pathsep-separated)."""
    from_env = [p for p in os.environ.get(SHARED_PATHS_ENV, "").split(os.pathsep) if p]
    return [*(given or []), *from_env]


def submit_job(job, spec_path: Path, address: str | None, resume: bool = False, wait: bool = True,
               shared: list[str] | None = None, wait_for_nodes_s: float | None = None) -> int:
    """Check, submit and (with `wait`) follow the job; exit status 2 for what is refused, 130 when
    Ctrl-C detaches (the job goes on on the cluster)."""
    from sar_platform.spec.loader import read_text

    text = read_text(spec_path)
    problems = unseen_paths(job, shared_paths(shared))
    if len(text.encode()) > MAX_SUBMITTED_SPEC_BYTES:
        problems.append(f"{len(text.encode()) // 1024} KiB of YAML: a submitted spec travels in the job's environment, "
                        f"which holds at most {MAX_SUBMITTED_SPEC_BYTES // 1024} KiB; shorten it (a job spec is a page)")
    if problems:
        for p in problems:
            print(f"sar submit: {job.name}: {p}", file=sys.stderr)
        return jobs.EXIT_BAD_INPUT
    client = jobs.connect(address)
    submission_id = f"sar-{job.name}-{uuid.uuid4().hex[:8]}"
    try:
        send(client, job, spec_path, text, submission_id, resume, wait_for_nodes_s)
    except KeyboardInterrupt:
        print(f"\n[sar] interrupted while submitting {submission_id}: it may have reached the cluster; "
              f"`sar jobs status {submission_id}` tells.\n{jobs.detach_hint(submission_id, address)}", file=sys.stderr)
        return jobs.EXIT_INTERRUPTED
    print(f"[sar] submitted {submission_id} to {client.get_address()}\n"
          f"[sar] follow it: sar jobs logs {submission_id} --follow; stop it: sar jobs stop {submission_id}", flush=True)
    if not wait:
        return 0
    try:
        status = jobs.follow(client, submission_id)
    except KeyboardInterrupt:
        print(f"\n{jobs.detach_hint(submission_id, address)}", file=sys.stderr)
        return jobs.EXIT_INTERRUPTED
    for run in jobs.run_urls(client.get_job_logs(submission_id)):
        print(f"[sar] MLflow run {run}")
    print(f"[sar] {submission_id}: {status}")
    return 0 if status == "SUCCEEDED" else 1


def send(client, job, spec_path: Path, text: str, submission_id: str, resume: bool, wait_for_nodes_s: float | None) -> None:
    """Submit the job: the repository as working_dir, the spec text in the environment, the driver
    `sar run --submitted` on the head."""

    entrypoint = f"python -m sar_platform.cli run {shlex.quote(str(spec_path))} --submitted --address auto"
    entrypoint += " --resume" if resume else ""
    entrypoint += f" --wait-for-nodes {wait_for_nodes_s:g}" if wait_for_nodes_s is not None else ""
    env = {"SAR_BASE_DIR": os.getcwd(), "SAR_RAY_JOB": "1", "RAY_OVERRIDE_JOB_RUNTIME_ENV": "1", SUBMITTED_SPEC_ENV: text}
    client.submit_job(entrypoint=entrypoint, runtime_env=repository_runtime_env(env_vars=env, forward=False),
                      submission_id=submission_id,
                      metadata={"sar.spec": str(spec_path), "sar.job": job.name, "sar.kind": job.kind})
