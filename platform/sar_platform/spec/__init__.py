"""Job specs: YAML -> one validated, immutable tree (pydantic v2; sar_core's config dataclasses are
embedded as they are, so every model/objective/sampling field is validated by the class that uses it).

Validation runs in the `sar` process when a spec is loaded; workers only read the validated tree.
"""
from __future__ import annotations

from pathlib import Path

from pydantic import TypeAdapter

from sar_platform.spec.jobs import (DataSpec, EvalJob, EvalSpec, Job, PipelineJob, SweepJob, TokenizerJob,
                                    TrainJob)
from sar_platform.spec.loader import Locator, SpecError, load_yaml, validate
from sar_platform.spec.reads import check_reads


def load_job(path: str | Path):
    """Read and validate a job spec; raises SpecError with `file:line:col: field: problem` lines
    (including written fields the job never reads and settings that cannot work together)."""
    return load_located_job(path)[0]


def load_located_job(path: str | Path, text: str | None = None):
    """(job, Locator): the job and where each of its fields is written, for checks made later
    (inputs on disk, data sizes) to point at the field at fault. `text`: the spec's content when it
    does not come from the file at `path` (a submitted job's)."""
    data, positions = load_yaml(path, text)
    job = validate(data, Job, positions, str(path))
    problems = check_reads(job, data, positions, str(path))
    if problems:
        raise SpecError(problems)
    return job, Locator(str(path), positions)


def job_schema() -> dict:
    return TypeAdapter(Job).json_schema()


__all__ = ["DataSpec", "EvalJob", "EvalSpec", "Job", "Locator", "PipelineJob", "SpecError", "SweepJob", "TokenizerJob",
           "TrainJob", "job_schema", "load_job", "load_located_job"]
