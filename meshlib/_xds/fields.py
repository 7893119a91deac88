"""What every translation module shares: the refusal, and protobuf fields read Envoy's way.

`Refused` is raised for a field that would change behaviour and that meshlib cannot
honour; the ADS client NACKs the resource with its message. `only` is how a
message's fields are checked: every field set must be one the translation reads
or knows to be harmless, so a field added to Envoy's API later is refused, never
ignored silently. Pure functions of protobuf messages; no grpc, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

__all__ = [
    "Refused",
    "fraction",
    "only",
    "seconds",
    "shown",
]

# FractionalPercent.DenominatorType: HUNDRED, TEN_THOUSAND, MILLION.
_DENOMINATORS = (100, 10_000, 1_000_000)


class Refused(Exception):
    """A resource that meshlib cannot honour as Envoy would; the ADS client NACKs it.

    Attributes:
        resource: the resource, by type and name (``Cluster orders``).
        field: the path of the field inside it (``lb_policy``,
            ``virtual_hosts[0].routes[2].match.query_parameters``).
        value: the value found, as shown in the message.
        reason: why it is refused.
    """

    def __init__(self, resource: str, field: str, value: object, reason: str) -> None:
        self.resource = resource
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"{resource}: {self.detail}")

    @property
    def detail(self) -> str:
        """The message without the resource: what a NACK says per resource name."""
        return f"{self.field}: {self.reason} (got {shown(self.value)})"


def shown(value: object) -> str:
    """Render a field's value for a message: enums by name, messages as one line."""
    if hasattr(value, "ListFields"):
        text = str(value).strip().replace("\n", "; ")
        return "{" + (text[:200] + "..." if len(text) > 200 else text) + "}"
    return repr(value)


def only(message: Any, resource: str, path: str, allowed: Iterable[str]) -> None:
    """Refuse any field set in `message` that is not in `allowed`.

    `allowed` holds the fields the caller reads, and those known not to change
    what a client does (stat prefixes, metadata, server-side settings).
    """
    known = frozenset(allowed)
    for spec, value in message.ListFields():
        if spec.name not in known:
            raise Refused(resource, _join(path, spec.name), value, "not supported by meshlib")


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def seconds(duration: Any) -> float:
    """Return a google.protobuf.Duration in seconds."""
    return float(duration.seconds) + float(duration.nanos) / 1e9


def fraction(percent: Any, resource: str, path: str) -> float:
    """Return an envoy.type.v3.FractionalPercent as a share between 0 and 1 (capped, as Envoy)."""
    denominator = percent.denominator
    if not 0 <= denominator < len(_DENOMINATORS):
        raise Refused(resource, f"{path}.denominator", denominator, "an unknown denominator")
    share = float(percent.numerator) / _DENOMINATORS[denominator]
    return min(1.0, share) if math.isfinite(share) else 1.0
