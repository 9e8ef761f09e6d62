"""Sweeps: setting spec fields by dotted path, checked against the train spec before any trial runs.

Validation runs in the `sar` process when a spec is loaded; workers only read the validated tree.
"""
from __future__ import annotations

import copy
from typing import Any

from pydantic import ValidationError

from sar_platform.spec.typepaths import field_exists


def set_path(data: dict, path: str, value: Any) -> dict:
    out = copy.deepcopy(data)
    node = out
    *parents, leaf = path.split(".")
    for part in parents:
        child = node.get(part)
        node[part] = child = dict(child) if isinstance(child, dict) else {}
        node = child
    node[leaf] = value
    return out


def trial_job(sweep, overrides: dict[str, Any], name: str | None = None):
    """The sweep's train job with `overrides` applied, validated like a spec file."""
    data = sweep.train.model_dump(mode="python", exclude_unset=True)
    for path, value in overrides.items():
        data = set_path(data, path, value)
    if name is not None:
        data["name"] = name
    return type(sweep.train).model_validate(data)


def check_field_read(path: str, trial) -> None:
    """A searched field the trial never reads would give identical trials under different labels."""
    parts = tuple(path.split("."))
    unread = trial.unread_fields()
    reason = next((unread[parts[:n]] for n in range(len(parts), 0, -1) if parts[:n] in unread), None)
    if reason is not None:
        raise ValueError(f"space.{path}: {reason}; the trials would be identical (set train so that {path} is read, "
                         "e.g. objective.kind: sar for objective.gamma)")


def check_sweep(sweep) -> None:
    """Every searched path names a field of the train spec and every candidate value validates."""
    for path, domain in sweep.space.items():
        if not field_exists(type(sweep.train), path):
            raise ValueError(f"space.{path}: the train spec has no field {path!r}")
        for value in domain.candidates():
            try:
                trial = trial_job(sweep, {path: value})
            except ValidationError as e:
                first = e.errors(include_url=False)[0]
                raise ValueError(f"space.{path}: value {value!r} is not valid: {first['msg']}") from None
            check_field_read(path, trial)
    if sweep.seeds is not None and "seed" in sweep.space:
        raise ValueError("give seeds either as `seeds` or in `space.seed`, not both")
    if not sweep.space and not sweep.seeds:
        raise ValueError("a sweep needs a search `space`, `seeds`, or both")
