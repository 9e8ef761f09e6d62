"""Following a path of field names down the declared types of the spec tree (pydantic models,
stdlib dataclasses, Optional / Annotated / discriminated unions, dicts and lists).

The loader uses it to list the allowed fields beside an unknown one; sweeps use it to check that a
searched path names a field of the train spec.

Validation runs in the `sar` process when a spec is loaded; workers only read the validated tree.
"""
from __future__ import annotations

import dataclasses
import types
import typing

from pydantic import BaseModel

UNIONS = (typing.Union, types.UnionType)


def field_names(tp) -> list[str] | None:
    """The field names of a model or dataclass type (None for any other type)."""
    tp = unwrap(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return list(tp.model_fields)
    if dataclasses.is_dataclass(tp):
        return [f.name for f in dataclasses.fields(tp)]
    return None


def unwrap(tp):
    """Strip Annotated[...] and Optional[...] down to the type that has fields."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in UNIONS and type(None) in typing.get_args(tp) and len(typing.get_args(tp)) == 2:
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        else:
            return tp


def child_type(tp, key):
    """The declared type one step down the location `key`, or None where it cannot be followed."""
    tp = unwrap(tp)
    origin = typing.get_origin(tp)
    if origin in UNIONS:
        for arg in typing.get_args(tp):  # discriminated unions: the tag names the member
            names = field_names(arg)
            if names and "kind" in names and isinstance(key, str):
                kind = unwrap(arg).model_fields["kind"].annotation if issubclass(unwrap(arg), BaseModel) else None
                if kind is not None and key in typing.get_args(kind):
                    return arg
        return None
    if origin is dict:
        return typing.get_args(tp)[1]
    if origin in (list, tuple):
        return typing.get_args(tp)[0] if typing.get_args(tp) else None
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        field = tp.model_fields.get(key)
        return field.annotation if field else None
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        return hints.get(key)
    return None


def allowed_fields(root, loc: tuple) -> list[str] | None:
    """The fields allowed at a validation error's location (where an unknown key was found)."""
    tp = root
    for part in loc:
        nxt = child_type(tp, part)
        if nxt is None:
            # a union tag or a dict key we could not follow: stay at this level
            continue
        tp = nxt
    return field_names(tp)


def field_exists(root_type, path: str) -> bool:
    """Whether the dotted `path` (e.g. objective.rollout.top_p) names a field under `root_type`."""
    tp = root_type
    for part in path.split("."):
        names = field_names(tp)
        if names is None or part not in names:
            return False
        tp = child_type(tp, part)
    return True
