"""Which destinations may receive context headers (deadline, and later trace context).

Only destinations inside the mesh do by default, so third-party APIs never
learn a caller's deadline or trace ids: loopback and private addresses,
single-label hosts, and the ``*.internal``, ``*.local`` and
``*.svc.cluster.local`` domains.
"""

from __future__ import annotations

import fnmatch
import ipaddress

__all__ = ["MESH_DOMAINS", "inside_mesh"]

MESH_DOMAINS = ("*.internal", "*.local", "*.svc.cluster.local")


def inside_mesh(host: str) -> bool:
    """Return whether `host` is inside the mesh by the default rule."""
    host = host.lower().rstrip(".").strip("[]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return address.is_private or address.is_loopback
    if "." not in host:
        return bool(host)  # a single-label name: localhost, orders, a Kubernetes service
    return any(fnmatch.fnmatchcase(host, pattern) for pattern in MESH_DOMAINS)
