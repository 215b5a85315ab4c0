"""JSON contracts checked where they are read: one line naming the file and the field.

``model.json`` (the model card), a run's ``config.json`` and ``dataset.json`` are data that
travel with models and datasets and are edited by hand. :func:`validate_as` checks such a
dict against a dataclass's type hints with pydantic (numbers must be finite; NaN and
infinity are refused) and turns the first problem into a :class:`~medseg.errors.MedsegError`
such as ``model.json: field 'preprocessing.window.1': Input should be a valid number (got 'x')``.
:func:`read_json_object` (and :func:`read_json` for any JSON value) is the one place a JSON file
is read: a missing or unreadable file is a one-line error naming it.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, TypeVar

from .errors import MedsegError

T = TypeVar("T")


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """The JSON value in ``path``; a one-line error naming the file for a missing or unreadable one.

    NaN and infinity (which Python's json accepts but JSON does not) are refused.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MedsegError(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise MedsegError(f"{path}: is a folder, expected a {what}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MedsegError(f"{path}: unreadable {what} ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except ValueError as exc:
        raise MedsegError(f"{path}: unreadable {what} ({exc})") from None


def read_json_object(path: str | os.PathLike, what: str = "JSON file") -> dict[str, Any]:
    """A JSON object read from ``path`` (:func:`read_json`); a one-line error for a missing,
    unreadable or non-object file."""
    data = read_json(path, what)
    if not isinstance(data, dict):
        raise MedsegError(f"{Path(path)}: {what} is not a JSON object (found {type(data).__name__})")
    return data


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a valid JSON number")


def field_name(loc: tuple) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def short_repr(value: Any) -> str:
    """``repr(value)``, cut to 60 characters for a one-line message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def validate_as(cls: type[T], data: dict[str, Any], where: str | os.PathLike) -> T:
    """``cls(**data)`` after pydantic has checked every field against ``cls``'s type hints.

    Unknown keys are ignored (newer files stay readable); a wrong type, a non-finite number or
    a missing required field is a one-line :class:`MedsegError` naming ``where`` and the field.
    """
    from pydantic import ConfigDict, TypeAdapter, ValidationError

    if not isinstance(data, dict):
        raise MedsegError(f"{where}: expected a JSON object, found {type(data).__name__}")
    known = set(getattr(cls, "__dataclass_fields__", {}))
    clean = {k: v for k, v in data.items() if k in known}
    if not hasattr(cls, "__pydantic_config__"):
        cls.__pydantic_config__ = ConfigDict(allow_inf_nan=False)  # type: ignore[attr-defined]
    try:
        return TypeAdapter(cls).validate_python(clean)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        first = errors[0]
        if first["type"] == "missing":
            text = f"{where}: field '{field_name(first['loc'])}' is missing"
        else:
            text = f"{where}: field '{field_name(first['loc'])}': {first['msg']} (got {short_repr(first.get('input'))})"
        if len(errors) > 1:
            text += f" (and {len(errors) - 1} more problem(s))"
        raise MedsegError(text) from None


def finite_number(value: Any) -> bool:
    """True for an int or float (not a bool) that is finite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


__all__ = ["read_json", "read_json_object", "validate_as", "field_name", "finite_number", "short_repr"]
