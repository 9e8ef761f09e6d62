"""Every written setting does something: a field written in a spec that the job never reads is
refused at load, and settings that cannot work together are refused before anything runs, each
at the field's file:line:col with the reason and the fix.

What a job reads depends on its choices (objective kind, sampling strategy, feature network, data
set, schedule, whether it evaluates): each spec section says so in `unread_fields()` and
`conflicts()`. Only what the YAML file itself writes is checked, so values filled in by a preset
or a default never trip it.

Validation runs in the `sar` process when a spec is loaded; workers only read the validated tree.
"""
from __future__ import annotations

from typing import Any, Iterator

from sar_platform.spec.common import FieldPath


def explicit_leaves(data: Any, path: FieldPath = ()) -> Iterator[FieldPath]:
    """The key paths of every value a YAML document writes (mappings walked, lists and scalars kept)."""
    if isinstance(data, dict) and data:
        for key, value in data.items():
            yield from explicit_leaves(value, (*path, key))
    elif path:
        yield path


def dotted(path: FieldPath) -> str:
    return ".".join(str(p) for p in path)


def locate(path: FieldPath, positions: dict) -> tuple[int, int]:
    """The (line, column) of a field, or of the nearest enclosing field the document has."""
    for n in range(len(path), -1, -1):
        if path[:n] in positions:
            return positions[path[:n]]
    return (1, 1)


def unread_problems(job, data: dict) -> list[tuple[FieldPath, str]]:
    """(written field, reason) for every field the spec writes that the job never reads."""
    unread = job.unread_fields()
    out = []
    for leaf in explicit_leaves(data):
        reason = next((unread[leaf[:n]] for n in range(len(leaf), 0, -1) if leaf[:n] in unread), None)
        if reason is not None:
            out.append((leaf, reason))
    return out


def read_spec(job) -> dict:
    """The job's resolved spec limited to the fields it reads (plus the objective preset's name when
    one was used), without the jobs inside it: what its MLflow run records, as params and as its
    `spec.yaml` (which validates as a spec of its own)."""
    unread = job.unread_fields()

    def prune(node: dict, path: FieldPath) -> dict:
        return {k: prune(v, (*path, k)) if isinstance(v, dict) else v for k, v in node.items() if (*path, k) not in unread}

    out = prune(job.model_dump(mode="json", exclude=set(job.inner_fields), exclude_none=True), ())
    if isinstance(out.get("objective"), dict) and not out["objective"].get("preset"):
        out["objective"].pop("preset", None)
    return out


def check_reads(job, data: dict, positions: dict, source: str) -> list[str]:
    """`file:line:col: field: problem` for unread written fields and conflicting settings."""
    problems = [*unread_problems(job, data), *job.conflicts()]
    return [f"{source}:{':'.join(map(str, locate(path, positions)))}: {dotted(path)}: {msg}" for path, msg in problems]
