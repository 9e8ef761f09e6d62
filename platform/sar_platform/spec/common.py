"""Spec pieces every job kind shares: resources, storage, MLflow, and step references.

Validation runs in the `sar` process when a spec is loaded; workers only read the validated tree.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
STEP_REF = re.compile(r"^step:((?:[A-Za-z0-9][A-Za-z0-9_.-]*/)?[A-Za-z0-9][A-Za-z0-9_.-]*)(?:@(best|last))?$")
"""`step:<name>` (the step's last checkpoint), `step:<name>@last` (the same, said explicitly) or
`step:<name>@best` (the checkpoint its selection rule, `eval.select`, chose). `step:<pipeline>/<name>`
names a step of another pipeline that finished in the same workspace (several pipelines continue one
base without training it again)."""


def external_run(ref: str) -> str | None:
    """The run name (`<pipeline>.<step>`) of a reference to another pipeline's step; None for a
    reference to a step of the same pipeline."""
    target = STEP_REF.match(ref).group(1)
    return target.replace("/", ".", 1) if "/" in target else None


def step_output(outputs: dict[str, dict], ref: str) -> dict:
    """What the step a reference names produced, as the reference sees it: `@best` sees the best
    checkpoint in place of the last one."""
    name, which = STEP_REF.match(ref).groups()
    produced = outputs[name]
    if which != "best":
        return produced
    best = produced.get("selection")
    if best is None:
        raise ValueError(f"{ref}: step {name} recorded no best checkpoint (it has no eval.select rule); "
                         f"use step:{name}@last")
    if "checkpoint" not in best:  # never the last checkpoint in its place
        raise ValueError(f"{ref}: step {name} has no best checkpoint to take: {best.get('missing') or best['why']}")
    return {**produced, **best}


def reference_choice(outputs: dict[str, dict], ref: str) -> str:
    """Which checkpoint a reference took and why, in one line (a tag of the run that uses it)."""
    name, which = STEP_REF.match(ref).groups()
    produced = outputs[name]
    if which == "best":
        return f"the best checkpoint of step {name} by its rule: {produced['selection']['why']}"
    said = "last" if which == "last" else "last (a bare step:<name> takes the last)"
    chosen = f"the {said} checkpoint of step {name}"
    if "selection" in produced:
        chosen += f"; its rule would choose: {produced['selection']['why']}"
    return chosen


class StrictModel(BaseModel):
    """Unknown keys are errors everywhere; specs are immutable once validated; no number is
    infinite or NaN (the embedded sar_core dataclasses inherit this)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True, allow_inf_nan=False)


SEED_MAX = 2**31 - 1
Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]
"""Seeds feed torch, numpy and Python generators (each derives further seeds from it)."""


Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=100)]

FieldPath = tuple
"""A field's place in a job spec, key by key: ("objective", "rollout", "top_k")."""
Unread = dict
"""FieldPath -> why the job never reads that field (and what would make it count)."""


def prefixed(prefix: FieldPath, fields: dict) -> dict:
    """`fields` (FieldPath or dotted keys) placed under `prefix`."""
    return {(*prefix, *(k if isinstance(k, tuple) else tuple(k.split(".")))): v for k, v in fields.items()}


def absolute_if_local(value: str) -> str:
    """Relative local paths are resolved once, at load time, against the directory `sar` runs in
    (or $SAR_BASE_DIR: `sar submit` sets it to the submitter's directory), so that Ray workers and
    job drivers, whose working directories differ, see the same files."""
    if "://" in value or STEP_REF.match(value):
        return value
    if value.startswith("step:"):
        raise ValueError(f"{value!r} is not a step reference: write step:<name>, step:<name>@best or step:<name>@last")
    base = Path(os.environ.get("SAR_BASE_DIR", "."))
    return str((base / Path(value).expanduser()).resolve())


PathOrURI = Annotated[str, AfterValidator(absolute_if_local)]
"""A local path (made absolute), an s3:// URI, or `step:<name>` (the output of a pipeline step)."""


class Resources(StrictModel):
    num_workers: int = Field(1, ge=1, le=4096)
    """Ray Train workers: one per device (GPU), or CPU processes."""
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    """0 trains on CPU with gloo; > 0 uses CUDA, nccl and bf16 autocast (see `precision`)."""
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_worker > 0


class Storage(StrictModel):
    path: PathOrURI = Field("workspace", validate_default=True)
    """Where runs, checkpoints and shards go: a local folder (default ./workspace) or s3://bucket/prefix.
    Multi-node clusters need shared storage (S3 or a shared file system)."""
    s3_endpoint: str | None = None
    """An S3-compatible endpoint (MinIO, Ceph, ...) for s3:// paths, e.g. http://127.0.0.1:9000."""


class MLflowSpec(StrictModel):
    tracking_uri: str | None = None
    """None: $MLFLOW_TRACKING_URI when set (the cluster configs set it on the head to the cluster's
    server), else the embedded local server (127.0.0.1, SQLite + local artifacts under the workspace)."""
    experiment: Name = "sar-platform"
    port: int = Field(5055, ge=0, le=65535)
    """Port of the embedded server (0: any free port). Ignored when a tracking URI is set."""


class JobCommon(StrictModel):
    """Fields every job kind has."""

    name: Name
    description: str = ""
    seed: Seed = 0
    resources: Resources = Resources()
    storage: Storage = Storage()
    mlflow: MLflowSpec = MLflowSpec()
    max_failures: int = Field(0, ge=-1)
    """Worker-group failures Ray Train retries from the latest checkpoint (-1: forever)."""

    references: ClassVar[dict[str, str]] = {}
    """Fields that may hold `step:<name>[@best|@last]` -> the output of the named step they take."""
    inner_fields: ClassVar[tuple[str, ...]] = ()
    """Fields holding the jobs inside this one (their runs record them, this one's does not)."""

    def summary(self) -> str:
        """One line saying what the job is (the description of its MLflow run)."""
        return self.kind

    def step_references(self) -> list[tuple[str, str]]:
        """(field path, `step:<name>`) of every field that refers to an earlier pipeline step."""
        return [(field, value) for field in self.references
                if isinstance(value := getattr(self, field), str) and STEP_REF.match(value)]

    def resolve(self, outputs: dict[str, dict]):
        """This job with every `step:<name>` replaced by what that step produced (`outputs`: the
        outputs.json of each finished step, by step name)."""
        update = {}
        for field, ref in self.step_references():
            key, produced = self.references[field], step_output(outputs, ref)
            if key not in produced:
                raise ValueError(f"step {self.name}: {field}: {ref} produced no {key} (it produced {sorted(produced)})")
            update[field] = produced[key]
        return self.model_copy(update=update)

    def reference_tags(self, outputs: dict[str, dict]) -> dict[str, str]:
        """Tags of this job's run saying which checkpoint each `step:` reference took and why
        (`sar.ref.<field>`: the reference as written, `sar.ref.<field>.chosen`: what it chose)."""
        tags = {}
        for field, ref in self.step_references():
            tags[f"sar.ref.{field}"] = ref
            tags[f"sar.ref.{field}.chosen"] = reference_choice(outputs, ref)
        return tags

    def unread_fields(self) -> Unread:
        """Fields this job never reads (recursively, for the jobs inside it) -> why. Written
        explicitly in a spec, such a field is refused at load (spec/reads.py)."""
        out: Unread = {}
        if self.mlflow.tracking_uri is not None:
            out[("mlflow", "port")] = "is not read with mlflow.tracking_uri set (no embedded server is started)"
        if "://" not in self.storage.path:
            out[("storage", "s3_endpoint")] = "is only read with an s3:// storage.path"
        return out

    def conflicts(self) -> list[tuple[FieldPath, str]]:
        """Settings that cannot work together (checked at load, without running): (field, problem)."""
        return []

    def run_names(self, prefix: str = "") -> list[str]:
        """Every run directory the job creates under the workspace's runs/ (known before it starts)."""
        return [f"{prefix}{self.name}"]

    def inner_jobs(self) -> list[tuple[str, "JobCommon"]]:
        """(field prefix, job) of the jobs this one contains (a pipeline's steps, a sweep's train)."""
        return []
