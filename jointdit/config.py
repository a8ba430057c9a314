"""Build (nested, frozen) config dataclasses from plain dicts such as a params.yaml section."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "") -> T:
    """cls(**data), recursing into dataclass fields; unknown keys are an error naming them."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ValueError(
            f"{where or cls.__name__}: unknown keys {unknown}; known: {sorted(fields)}"
        )
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = from_dict(hint, value, f"{where}.{name}" if where else name)
        elif (typing.get_origin(hint) is tuple and isinstance(value, list)) or (
            isinstance(hint, types.UnionType) and isinstance(value, list)
        ):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)
