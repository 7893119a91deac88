"""Which destinations may receive context headers: trace context and the deadline.

By default only destinations inside the mesh do, so third-party APIs never
learn a caller's deadline or trace ids. `Tracing.propagate_to` lists
patterns: host globs (``*.partner.example``), IP networks (``10.0.0.0/8``)
and ``"mesh"``, the built-in rule: loopback and private addresses,
single-label hosts, and the ``*.internal``, ``*.local`` and
``*.svc.cluster.local`` domains.
"""

from __future__ import annotations

import fnmatch
import ipaddress
from collections.abc import Iterable

from ._patterns import normalise_host

__all__ = ["MESH_DOMAINS", "inside_mesh", "propagates"]

MESH_DOMAINS = ("*.internal", "*.local", "*.svc.cluster.local")


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def inside_mesh(host: str) -> bool:
    """Return whether `host` is inside the mesh by the built-in rule."""
    host = normalise_host(host)
    address = _address(host)
    if address is not None:
        return address.is_private or address.is_loopback
    if "." not in host:
        return bool(host)  # a single-label name: localhost, orders, a Kubernetes service
    return any(fnmatch.fnmatchcase(host, pattern) for pattern in MESH_DOMAINS)


def propagates(host: str, patterns: Iterable[str]) -> bool:
    """Return whether `host` matches one of `patterns` (globs, IP networks or "mesh")."""
    host = normalise_host(host)
    address = _address(host)
    for pattern in patterns:
        if pattern == "mesh":
            if inside_mesh(host):
                return True
        elif "/" in pattern:
            try:
                network = ipaddress.ip_network(pattern, strict=False)
            except ValueError:
                continue  # validated by Tracing; an odd pattern matches nothing
            if address is not None and address in network:
                return True
        elif fnmatch.fnmatchcase(host, pattern):
            return True
    return False
