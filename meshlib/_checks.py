"""What every validated value shares: the error naming a field, and durations.

Below `_policy` and `_tls` so that both validate the same way: a policy holds a
`TLS`, and a `TLS`'s ``reload_interval`` is a duration like any policy's.
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from ._errors import ConfigError

__all__ = ["DURATION", "SECRET", "SECONDS_EXPECTED", "duration", "fail", "is_duration", "is_secret"]

#: The metadata of a field that holds seconds: a policy file may write it as a duration
#: string (``"250ms"``, ``"2s"``), and ``meshlib explain`` shows it as one.
DURATION: Mapping[str, bool] = types.MappingProxyType({"duration": True})

#: The metadata of a field that holds a secret (a key's password): a policy file may not
#: spell it, and nothing that shows a policy (explain, the status page) shows it.
SECRET: Mapping[str, bool] = types.MappingProxyType({"secret": True})

#: What `duration` says a field takes; the file reader spells it the file's way.
SECONDS_EXPECTED = "seconds (float or timedelta)"


def is_duration(spec: dataclasses.Field[Any]) -> bool:
    """Return whether the dataclass field `spec` holds seconds (it carries `DURATION`)."""
    return bool(spec.metadata.get("duration", False))


def is_secret(spec: dataclasses.Field[Any]) -> bool:
    """Return whether the dataclass field `spec` holds a secret (it carries `SECRET`)."""
    return bool(spec.metadata.get("secret", False))


def fail(owner: str, name: str, value: object, expected: str) -> ConfigError:
    """Return the error for field `owner.name`: ``expected EXPECTED, got VALUE``."""
    return ConfigError(
        f"expected {expected}, got {value!r}",
        field=f"{owner}.{name}",
        value=value,
        expected=expected,
    )


def duration(
    owner: str,
    name: str,
    value: object,
    *,
    optional: bool = False,
    positive: bool = False,
) -> float | None:
    """Return `value` as finite seconds, or raise a ConfigError naming the field."""
    if value is None and optional:
        return None
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        kind = SECONDS_EXPECTED + (" or None" if optional else "")
        raise fail(owner, name, value, kind)
    if not math.isfinite(seconds):
        raise fail(owner, name, value, "a finite number of seconds")
    if seconds < 0 or (positive and seconds == 0):
        raise fail(owner, name, value, "a positive duration" if positive else "a duration >= 0")
    return seconds
