"""Settings declared once: a dataclass field carries its type, default and description.

    @dataclasses.dataclass(frozen=True)
    class Options:
        iters: int = setting(250, "Optimization steps per query.", minimum=1)

Everything else derives from the field: `add_arguments` builds the CLI's options
(type, default, choices, help), `schema_property` the JSON-schema property that
config/schemas/*.yaml must hold for it (the YAML cannot import Python, so
tests/test_settings_drift.py compares the two and fails when one changes alone).
No JAX or Snakemake import here.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any

_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string"}


@dataclasses.dataclass(frozen=True)
class Setting:
    """One declared setting: the field's name, type, default and description, and its bounds."""

    name: str
    type: type
    default: Any
    description: str
    choices: tuple | None = None
    minimum: float | None = None
    flag: str = ""  # the CLI option; default --name-with-dashes

    @property
    def option(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")


def setting(default, description: str, *, choices=None, minimum=None, flag: str = ""):
    """A dataclass field declaring a setting (see the module docstring)."""
    meta = {"description": " ".join(description.split()), "choices": tuple(choices) if choices else None,
            "minimum": minimum, "flag": flag}
    return dataclasses.field(default=default, metadata=meta)


def declared(cls, names: typing.Iterable[str] | None = None) -> list[Setting]:
    """The settings of dataclass `cls` (those in `names`, in that order; default all with a description)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names = list(names) if names is not None else [n for n, f in fields.items() if "description" in f.metadata]
    out = []
    for name in names:
        f = fields[name]
        if "description" not in f.metadata:
            raise ValueError(f"{cls.__name__}.{name} is not declared with nerflib.settings.setting(...)")
        out.append(Setting(name=name, type=hints[name], default=f.default, description=f.metadata["description"],
                           choices=f.metadata["choices"], minimum=f.metadata["minimum"], flag=f.metadata["flag"]))
    return out


def schema_property(s: Setting) -> dict:
    """The JSON-schema property of setting `s` (type, default, description; enum and minimum when bounded)."""
    prop = {"type": _JSON_TYPES[s.type], "default": s.default, "description": s.description}
    if s.choices:
        prop["enum"] = list(s.choices)
    if s.minimum is not None:
        prop["minimum"] = s.minimum
    return prop


def add_arguments(parser: argparse.ArgumentParser, settings: typing.Iterable[Setting]) -> None:
    """One option per setting: its type, default, choices and description (with the default) as help."""
    for s in settings:
        help_text = f"{s.description} (default: {s.default})".replace("%", "%%")
        if s.type is bool:
            parser.add_argument(s.option, dest=s.name, action=argparse.BooleanOptionalAction, default=s.default,
                                help=help_text)
        else:
            parser.add_argument(s.option, dest=s.name, type=s.type, default=s.default, choices=s.choices,
                                help=help_text)


def values(args: argparse.Namespace, settings: typing.Iterable[Setting]) -> dict:
    """{name: value} of `settings` from parsed `args`."""
    return {s.name: getattr(args, s.name) for s in settings}
