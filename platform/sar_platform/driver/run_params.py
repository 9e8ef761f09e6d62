"""What a job's MLflow run records as params and what as tags.

Params are what the run computes with: the settings its job reads (spec/reads.py) and the
architecture of the generator it trains or scores, also when that comes from a checkpoint
(`init_from`, `generator`) rather than the spec, so that every tf and sar run can be compared on
its model. Where and how a job runs (workers, storage, tracking server, retries, checkpoint and
log cadence) and the
locations of its checkpoints do not change its result: they become `sar.infra.*` and
`sar.input.*` tags, and the full resolved spec stays the run's `spec.yaml` artifact.

Runs in the `sar` process.
"""
from __future__ import annotations

from sar_core.checkpoint import config_to_dict, read_header
from sar_platform.services.storage import Workspace
from sar_platform.services.tracking import flatten

INFRASTRUCTURE = ("resources", "storage", "mlflow", "max_failures", "checkpoint", "log")
"""Top-level spec fields that say where and how a job runs and what it keeps, not what it computes."""
NAMING = ("name", "description")
"""The run's own name and description already: not params."""
ARCHITECTURE_FROM = {"train": "init_from", "eval": "generator"}
"""Job kind -> the field naming the generator checkpoint whose header holds the architecture when
the spec has no `model` (post-training, scoring)."""


def architecture(job, workspace: Workspace) -> dict:
    """`{"model": {...}}`: the generator configuration the job trains or scores ({} for other kinds)."""
    field = ARCHITECTURE_FROM.get(job.kind)
    path = getattr(job, field, None) if field else None
    if getattr(job, "model", None) is not None or not path:
        return {}
    _, config, _ = read_header(workspace.local_copy(path))
    return {"model": config_to_dict(config)}


def split_record(job, spec: dict, workspace: Workspace) -> tuple[dict, dict[str, str]]:
    """(params, tags) of a job's run, from its resolved spec (`read_spec`)."""
    checkpoints = {f for f in job.references if isinstance(spec.get(f), str)}
    params = {k: v for k, v in spec.items() if k not in (*INFRASTRUCTURE, *NAMING) and k not in checkpoints}
    params.update(architecture(job, workspace))
    tags = {f"sar.infra.{k}": v for k, v in flatten({k: spec[k] for k in INFRASTRUCTURE if k in spec}).items()}
    tags.update({f"sar.input.{f}": spec[f] for f in sorted(checkpoints)})
    return params, tags
