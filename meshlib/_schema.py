"""How a policy file spells Python values: durations, and the settings of each class.

The schema is read off the classes themselves (`dataclasses.fields`, their type hints
and metadata, or a constructor's signature), so a layer added to `Policy` is readable
from a file as soon as it exists. A field holds seconds when it is marked so
(`meshlib._checks.DURATION`).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from ._checks import is_duration, is_secret
from ._policy import Policy

__all__ = [
    "Setting",
    "format_duration",
    "layer_settings",
    "parse_duration",
    "settings_of",
    "trim_number",
]

_DURATION_PART = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float | None:
    """Return the seconds a duration string stands for, or None if it is not one.

    A duration string is one or more ``<number><unit>`` parts, units ``h``, ``m``,
    ``s`` and ``ms``: ``"250ms"``, ``"2s"``, ``"1.5m"``, ``"1m30s"``. A bare number
    in a string (``"30"``) is not a duration string: write the number itself.
    """
    position, seconds, end = 0, 0.0, len(text.rstrip())
    while position < end:
        part = _DURATION_PART.match(text, position)
        if part is None:
            return None
        seconds += float(part[1]) * _UNIT_SECONDS[part[2]]
        position = part.end()
    return seconds if position else None


def format_duration(seconds: float) -> str:
    """Return `seconds` the way an operator writes it: ``50ms``, ``2.5s``, ``5m``, ``1h``.

    The result reads back with `parse_duration`.
    """
    if seconds == 0:
        return "0s"
    if seconds < 1:
        return f"{trim_number(seconds * 1000)}ms"
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{trim_number(seconds / 3600)}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{trim_number(seconds / 60)}m"
    return f"{trim_number(seconds)}s"


def trim_number(number: float) -> str:
    return f"{number:.3f}".rstrip("0").rstrip(".")


@dataclass(frozen=True, slots=True)
class Setting:
    """How the file writes one keyword argument of a layer (or of a nested value)."""

    name: str
    required: bool
    table: type | None  # a settings class whose value is written as a table
    many: bool  # a tuple of `table` values, written as an array of tables
    optional: bool  # None is allowed: ``false`` in a file (or JSON's null)
    duration: bool  # seconds; strings such as "250ms" are accepted too
    takes_bool: bool
    takes_str: bool
    in_file: bool  # False for Python objects (``Any``) and secrets, which a file may not spell
    # Several settings classes (``str | PathExact | PathRegex``): a table is the one
    # whose settings hold its keys.
    choices: tuple[type, ...] = ()
    secret: bool = False  # a password: never read from a file, never shown


# The hint of a setting whose type could not be resolved: its value is passed as is.
_UNKNOWN = object()


def _is_settings_class(hint: object) -> bool:
    """Tell whether values of `hint` are written as tables: a dataclass, or a meshlib class."""
    if not isinstance(hint, type):
        return False
    if dataclasses.is_dataclass(hint):
        return True
    return hint.__module__.startswith("meshlib.") and "__init__" in vars(hint)


def _setting(
    name: str, hint: object, required: bool, duration: bool, secret: bool = False
) -> Setting:
    members: tuple[object, ...] = (hint,)
    if typing.get_origin(hint) is typing.Annotated:
        members = (typing.get_args(hint)[0],)
    if typing.get_origin(members[0]) in (typing.Union, types.UnionType):
        members = typing.get_args(members[0])
    optional = type(None) in members
    table: type | None = None
    choices: list[type] = []
    many = takes_bool = takes_str = False
    for member in members:
        origin = typing.get_origin(member)
        if origin is Literal:
            takes_str = takes_str or any(isinstance(v, str) for v in typing.get_args(member))
            takes_bool = takes_bool or any(isinstance(v, bool) for v in typing.get_args(member))
        elif origin is tuple:
            args = typing.get_args(member)
            if len(args) == 2 and args[1] is Ellipsis and _is_settings_class(args[0]):
                table, many = args[0], True
        elif _is_settings_class(member):
            assert isinstance(member, type)
            table = member
            choices.append(member)
        elif member is bool:
            takes_bool = True
        elif member is str or member is _UNKNOWN:
            takes_str = True
    in_file = hint is not Any and not secret
    return Setting(
        name,
        required,
        table,
        many,
        optional,
        duration,
        takes_bool,
        takes_str,
        in_file,
        tuple(choices) if len(choices) > 1 else (),
        secret,
    )


_SETTINGS: dict[type, dict[str, Setting]] = {}


def settings_of(cls: type) -> dict[str, Setting]:
    """Return the keyword arguments `cls` takes, public ones only, in declaration order."""
    found = _SETTINGS.get(cls)
    if found is None:
        # Two threads may both read a class the first time: the same answer, no harm.
        found = _SETTINGS[cls] = _read_settings(cls)
    return found


def _read_settings(cls: type) -> dict[str, Setting]:
    target: Any = cls if dataclasses.is_dataclass(cls) else vars(cls).get("__init__", cls)
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # a hint that names something only a type checker imports
        hints = {}
    found: dict[str, Setting] = {}
    if dataclasses.is_dataclass(cls):
        for spec in dataclasses.fields(cls):
            if not spec.init or spec.name.startswith("_"):
                continue
            required = (
                spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING
            )
            hint = hints.get(spec.name, _UNKNOWN)
            found[spec.name] = _setting(
                spec.name, hint, required, is_duration(spec), is_secret(spec)
            )
        return found
    for parameter in list(inspect.signature(cls).parameters.values()):
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if parameter.name.startswith("_") or parameter.kind is parameter.POSITIONAL_ONLY:
            continue
        required = parameter.default is parameter.empty
        # A class that is not a dataclass has no field metadata: no durations.
        found[parameter.name] = _setting(
            parameter.name, hints.get(parameter.name, _UNKNOWN), required, False
        )
    return found


def layer_settings() -> dict[str, Setting]:
    return settings_of(Policy)
