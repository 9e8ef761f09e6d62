"""Reading YAML job specs: safe loading, validation, and errors that point at `file:line:column`.

Loading is bounded whatever the file holds: at most `MAX_SPEC_BYTES` of UTF-8 text, nesting at most
`MAX_DEPTH` levels, and at most `MAX_NODES` values once every alias is expanded (a "billion laughs"
file of a few hundred bytes is refused before anything is expanded). Duplicate keys, control
characters, non-UTF-8 bytes and integers beyond `MAX_INT` are errors with a location.

Validation runs in the `sar` process when a spec is loaded; workers only read the validated tree.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from sar_platform.spec.typepaths import allowed_fields

MAX_SPEC_BYTES = 1 << 20
"""A job spec is a page of YAML; a megabyte is far beyond any real one."""
MAX_DEPTH = 64
"""Nesting levels (mappings and lists); specs use fewer than ten."""
MAX_NODES = 20_000
"""Values in the document with every alias expanded."""
MAX_INT = 2**31 - 1
"""Every integer a spec holds (seeds, steps, sizes) fits the 32-bit range the code derives seeds from."""

MERGE_TAG = "tag:yaml.org,2002:merge"
# YAML's printable set (YAML 1.1, 5.1): tab, newlines and everything printable; the rest is refused.
NON_PRINTABLE = re.compile("[^\x09\x0A\x0D\x20-\x7E\x85\xA0-\uD7FF\uE000-\uFFFD\U00010000-\U0010FFFF]")


class SpecError(Exception):
    """A spec that cannot be used; `str()` is the user-facing report (one line per problem)."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


Position = tuple[int, int]


@dataclass(frozen=True)
class Locator:
    """Where each field of a loaded spec is written: `where("optim.batch_size")` -> `file:line:col`."""

    source: str
    positions: dict[tuple, Position]

    def where(self, dotted: str) -> str:
        """The location of the longest prefix of the dotted field path written in the file."""
        path: tuple = ()
        for part in dotted.split("."):
            step = int(part) if part.isdigit() and path + (int(part),) in self.positions else part
            if path + (step,) not in self.positions:
                break
            path += (step,)
        line, col = self.positions.get(path, self.positions.get((), (1, 1)))
        return f"{self.source}:{line}:{col}"

    def writes(self, dotted: str) -> bool:
        """Whether the file itself writes the field at this dotted path (not a default or a preset)."""
        path = tuple(int(p) if p.isdigit() else p for p in dotted.split("."))
        return path in self.positions


class _LimitError(yaml.MarkedYAMLError):
    """A limit of `_BoundedLoader` exceeded, at the node where it happened."""


class _BoundedLoader(yaml.SafeLoader):
    """The safe loader, composing at most MAX_DEPTH levels deep (PyYAML's composer recurses)."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _LimitError(problem=f"nesting deeper than {MAX_DEPTH} levels",
                                  problem_mark=self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _mark(node: yaml.Node) -> Position:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_expanded_size(root: yaml.Node, where: str) -> None:
    """Refuse documents whose aliases expand beyond MAX_NODES values (or refer to themselves),
    counting shared nodes once each (memoized, iterative: no expansion, no recursion)."""
    size: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    in_progress: set[int] = set()
    while stack:
        node, children_done = stack.pop()
        if id(node) in size:
            continue
        if children_done:
            in_progress.discard(id(node))
            size[id(node)] = 1 + sum(size[id(c)] for c in _children(node))
            if size[id(node)] > MAX_NODES:
                line, col = _mark(node)
                raise SpecError([f"{where}:{line}:{col}: this value expands (through YAML aliases) to more than "
                                 f"{MAX_NODES:,} values; a job spec is far smaller — write it out or use fewer aliases"])
            continue
        if id(node) in in_progress:
            line, col = _mark(node)
            raise SpecError([f"{where}:{line}:{col}: a YAML alias refers to a value that contains it"])
        in_progress.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in size)


def _check_mapping(node: yaml.MappingNode, where: str) -> None:
    """Duplicate keys are errors (YAML would silently keep the last one)."""
    seen: dict[str, Position] = {}
    for key, _ in node.value:
        if key.tag == MERGE_TAG or not isinstance(key, yaml.ScalarNode):
            continue
        if key.value in seen:
            line, col = _mark(key)
            raise SpecError([f"{where}:{line}:{col}: duplicate key '{key.value}' (first at line {seen[key.value][0]}); "
                             "YAML would silently keep only the last one — merge the two"])
        seen[key.value] = _mark(key)


def _nearest(positions: dict[tuple, Position], path: tuple) -> Position:
    """The position of `path`, or of its longest prefix written in the file."""
    while path and path not in positions:
        path = path[:-1]
    return positions.get(path, (1, 1))


def _check_integers(data: Any, positions: dict[tuple, Position], where: str) -> None:
    """Every integer within ±MAX_INT (walks the constructed, size-checked document)."""
    stack: list[tuple[Any, tuple]] = [(data, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, dict):
            stack.extend((v, path + (k,)) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, path + (i,)) for i, v in enumerate(value))
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
            line, col = _nearest(positions, path)
            shown = str(value) if len(str(value)) < 24 else f"{str(value)[:8]}...({len(str(value))} digits)"
            raise SpecError([f"{where}:{line}:{col}: {'.'.join(map(str, path))}: integer {shown} is out of range: "
                             f"integers in a spec (seeds, steps, sizes) must lie within ±{MAX_INT}"])


def _positions(root: yaml.Node, where: str) -> dict[tuple, Position]:
    """Map every key path of the (alias-expanded, size-checked) document to its (line, column),
    checking for duplicate keys on the way. Merged keys (`<<: *base`) sit at the merging mapping's
    path, explicit keys taking precedence."""
    out: dict[tuple, Position] = {}
    stack: list[tuple[yaml.Node, tuple]] = [(root, ())]
    while stack:
        node, path = stack.pop()
        out.setdefault(path, _mark(node))
        if isinstance(node, yaml.SequenceNode):
            stack.extend((item, path + (i,)) for i, item in enumerate(node.value))
        elif isinstance(node, yaml.MappingNode):
            _check_mapping(node, where)
            merges, explicit = [], []
            for key, value in node.value:
                if key.tag == MERGE_TAG:
                    merges += value.value if isinstance(value, yaml.SequenceNode) else [value]
                elif isinstance(key, yaml.ScalarNode):
                    out.setdefault(path + (key.value,), _mark(key))
                    explicit.append((value, path + (key.value,)))
            # Depth-first from a stack: what is pushed last is visited (with all below it) first, so
            # the explicit keys' subtrees claim their positions before merged ones could.
            stack.extend((m, path) for m in merges)
            stack.extend(reversed(explicit))
    return out


def _location_of(text: str, index: int) -> Position:
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1


def read_text(path: Path) -> str:
    """The spec's text: at most MAX_SPEC_BYTES of UTF-8 without control characters."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_SPEC_BYTES + 1)
    except OSError as e:
        raise SpecError([f"{path}: cannot read spec ({e.strerror})"]) from e
    return checked_text(raw, path)


def checked_text(raw: bytes, path: str | Path) -> str:
    """`raw` as spec text, refused (naming `path`) unless it is at most MAX_SPEC_BYTES of UTF-8
    without control characters."""
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError([f"{path}: larger than {MAX_SPEC_BYTES // 1024} KiB; a job spec is a page of YAML"])
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        offset = e.start - (3 if raw.startswith(b"\xef\xbb\xbf") else 0)
        line, col = _location_of(raw.decode("utf-8-sig", errors="replace"), max(offset, 0))
        raise SpecError([f"{path}:{line}:{col}: not UTF-8 text (byte 0x{raw[e.start]:02x}); save the spec as UTF-8"]) from e
    if bad := NON_PRINTABLE.search(text):
        line, col = _location_of(text, bad.start())
        raise SpecError([f"{path}:{line}:{col}: control character U+{ord(bad.group()):04X} is not allowed in YAML; "
                         "remove it (a spec is plain text)"])
    return text


def load_yaml(path: str | Path, text: str | None = None) -> tuple[Any, dict]:
    """(data, key path -> (line, column)) of a spec file (or of `text`, the file's content sent
    elsewhere), with every limit above checked."""
    path = Path(path)
    text = read_text(path) if text is None else checked_text(text.encode(), path)
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            _check_expanded_size(node, str(path))
            positions = _positions(node, str(path))
            data = loader.construct_document(node)
            _check_integers(data, positions, str(path))
        else:
            positions, data = {}, None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise SpecError([f"{where}: YAML syntax error: {getattr(e, 'problem', None) or e}"]) from e
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise SpecError([f"{path}:1:1: a job spec is a YAML mapping with at least `kind` and `name`"])
    return data, positions


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


def validate(data: Any, root_type, positions: dict, source: str):
    try:
        return TypeAdapter(root_type).validate_python(data)
    except ValidationError as e:
        raise SpecError(format_errors(e, positions, source, root_type)) from e
    except (TypeError, ArithmeticError) as e:  # a config class's own check that is not a ValueError
        raise SpecError([f"{source}:1:1: {type(e).__name__}: {e}"]) from e
