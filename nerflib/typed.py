"""Typed dataclass fields from YAML, JSON and the command line: type checks with the fix, dict round trip.

`check_type` / `check_fields` say which field has the wrong type or an unknown name (with a
"did you mean") before anything runs; `to_dict` / `from_dict_of` turn nested frozen
dataclasses into plain JSON and back. `nerflib.configs` uses them for `Config`; the workflow's
parse-time checks and `localize.Options` too.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any

__all__ = ["check_type", "check_fields", "did_you_mean", "to_dict", "from_dict_of"]


def _type_name(hint) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def check_type(name: str, value, hint) -> None:
    """Raise ValueError unless `value` (from YAML/JSON/the command line) fits the field type `hint`.

    int fields take integers only (400, not 400.0 or "400"); float fields take any number; a
    string that reads as a number gets a hint (YAML 1.1 reads `1e-3` as text: write 1.0e-3).
    """
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return check_type(name, value, arg)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(errors[0] if len(errors) == 1 else
                         f"{name} must be one of {', '.join(_type_name(a) for a in args)}, got {value!r}")
    if hint is Any or isinstance(hint, typing.TypeVar):
        return
    fits = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
    }
    if hint in fits:
        if fits[hint](value):
            return
        hint_text = ""
        if isinstance(value, str):
            try:
                float(value)
                hint_text = (" (a number written as text: YAML reads 1e-3 as text, write 1.0e-3; "
                             "or remove the quotes)")
            except ValueError:
                pass
        elif hint is int and isinstance(value, float) and value.is_integer():
            hint_text = f" (write {int(value)}, without the decimal point)"
        raise ValueError(f"{name} must be {'an' if hint is int else 'a'} {hint.__name__}, got "
                         f"{value!r} ({type(value).__name__}){hint_text}")
    if origin is tuple or hint is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{name} must be a list, got {value!r} ({type(value).__name__})")
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            for i, item in enumerate(value):
                check_type(f"{name}[{i}]", item, args[0])
        elif args:
            if len(args) != len(value):
                raise ValueError(f"{name} must be a list of {len(args)} items, got {len(value)}: {value!r}")
            for i, (item, arg) in enumerate(zip(value, args)):
                check_type(f"{name}[{i}]", item, arg)
        return
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(value, (dict, hint)):
            raise ValueError(f"{name} must be a mapping of {hint.__name__} fields, got {value!r}")


def check_fields(cls, values: dict, *, what: str) -> None:
    """Names (with a 'did you mean') and types of `values` as fields of dataclass `cls`."""
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    for key, value in values.items():
        if key not in hints or key not in known:
            raise ValueError(f"unknown {what} {key!r}{did_you_mean(key, known)}; known: {', '.join(sorted(known))}")
        check_type(key, value, hints[key])


def did_you_mean(name: str, known) -> str:
    """' (did you mean 'x' or 'y'?)' for the closest known names, or '' when none is close."""
    close = difflib.get_close_matches(name, list(known), n=2, cutoff=0.4)  # 0.4: 'lr' still finds 'lr_init'
    return f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""


def to_dict(cfg) -> dict:
    """Plain JSON-able dict (nested dataclasses -> dicts, tuples -> lists)."""

    def plain(v):
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        return v

    return plain(cfg)


def _convert(value, hint):
    """Rebuild `value` (from JSON) as type `hint`: dataclasses, tuples, optionals."""
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _convert(value, args[0]) if len(args) == 1 else value
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return from_dict_of(hint, value)
    if origin is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(x, args[0]) for x in value)
        if args:
            return tuple(_convert(x, a) for x, a in zip(value, args))
        return tuple(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, list):  # Any-typed: keep JSON lists hashable
        return tuple(_convert(x, Any) for x in value)
    return value


def from_dict_of(cls, d: dict):
    """Dataclass `cls` from a dict (e.g. read from JSON): nested dataclasses and tuples rebuilt, unknown names refused."""
    if not isinstance(d, dict):
        raise ValueError(f"{cls.__name__} must be read from a dict, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {', '.join(unknown)}")
    return cls(**{k: _convert(v, hints[k]) for k, v in d.items()})
