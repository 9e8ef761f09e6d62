"""Reading YAML job specs: safe loading, validation, and errors that point at `file:line:column`.

Validation runs in the `sar` process when a spec is loaded; workers only read the validated tree.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from sar_platform.spec.typepaths import allowed_fields


class SpecError(Exception):
    """A spec that cannot be used; `str()` is the user-facing report (one line per problem)."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


def _positions(node: yaml.Node, path: tuple = (), out: dict | None = None) -> dict[tuple, tuple[int, int]]:
    """Map every key path in a composed YAML document to its (line, column), 1-based."""
    out = {} if out is None else out
    out.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = path + (key.value,)
            out[child] = (key.start_mark.line + 1, key.start_mark.column + 1)
            _positions(value, child, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _positions(item, path + (i,), out)
    return out


def _yaml_path(loc: tuple, positions: dict[tuple, Any]) -> tuple:
    """Drop the parts of a pydantic error location that are not in the YAML (union tags, dataclass
    names): keep each part only if the path extended by it exists in the document."""
    path: tuple = ()
    for part in loc:
        if path + (part,) in positions:
            path += (part,)
        elif isinstance(part, str) and part.isdigit() and path + (int(part),) in positions:
            path += (int(part),)
    return path


def format_errors(err: ValidationError, positions: dict, source: str, root) -> list[str]:
    problems = []
    for e in err.errors(include_url=False):
        loc = tuple(e["loc"])
        path = _yaml_path(loc, positions)
        line, col = positions.get(path, positions.get((), (1, 1)))
        dotted = ".".join(str(p) for p in path) or "<top level>"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            allowed = allowed_fields(root, loc[:-1])
            msg = f"unknown field '{loc[-1]}'" + (f"; allowed here: {', '.join(allowed)}" if allowed else "")
        elif e["type"] == "missing":
            msg = "required field is missing"
        problems.append(f"{source}:{line}:{col}: {dotted}: {msg}")
    return problems


def load_yaml(path: str | Path) -> tuple[Any, dict]:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise SpecError([f"{path}: cannot read spec ({e.strerror})"]) from e
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise SpecError([f"{where}: YAML syntax error: {getattr(e, 'problem', None) or e}"]) from e
    if not isinstance(data, dict):
        raise SpecError([f"{path}:1:1: a job spec is a YAML mapping with at least `kind` and `name`"])
    return data, _positions(node) if node is not None else {}


def validate(data: Any, root_type, positions: dict, source: str):
    try:
        return TypeAdapter(root_type).validate_python(data)
    except ValidationError as e:
        raise SpecError(format_errors(e, positions, source, root_type)) from e
