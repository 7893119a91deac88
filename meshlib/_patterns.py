"""Destination patterns and the policy table that matches requests against them.

A pattern is an exact host (``payments.internal``), a host and port
(``payments.internal:8443``) or a glob (``*.svc.cluster.local``); `normalise_pattern`
checks and normalises one the same way for code and files, and `normalise_host` is
the one place a request's host is put in the same form. A `PolicyTable` maps patterns
to policies: ``host:port``, then ``host``, then the longest matching glob, else the
default.
"""

from __future__ import annotations

import fnmatch
import re
import types
from collections.abc import Callable, Mapping

from ._errors import ConfigError
from ._policy import Policy, is_host, is_host_name

__all__ = [
    "PolicyTable",
    "check_clusters",
    "normalise_host",
    "normalise_pattern",
    "refuse_destination_layers",
]


def normalise_host(host: str) -> str:
    """Return `host` as patterns are compared with it: lower case, no trailing dot, no brackets."""
    return host.lower().rstrip(".").strip("[]")


# What a glob may hold besides a host name's characters; a [...] class may hold anything.
_GLOB_HOST = re.compile(r"[a-z0-9_.*?-]+")
_GLOB_CLASS = re.compile(r"\[[^\]]*\]")
_GLOB_PORT = re.compile(r"[0-9*?]+")


def _pattern_problem(text: str) -> str | None:
    """Return why the stripped, lowercased pattern `text` can never match, or None."""
    if "://" in text:
        scheme, _, rest = text.partition("://")
        return f"a host, not a URL (write {rest.partition('/')[0]!r}, without {scheme + '://'!r})"
    if "/" in text:
        return f"a host, not a path (write {text.partition('/')[0]!r})"
    if any(c.isspace() for c in text):
        return "a host without spaces"
    if not text.isascii():
        return "an ASCII host (write an internationalised name in its IDNA form, 'xn--...')"
    port: str | None
    if text.startswith("[") and ":" in text.partition("]")[0]:
        literal, bracket, rest = text[1:].partition("]")
        if not (bracket and is_host(literal)):  # with a ":", is_host wants an IPv6 address
            return "an IPv6 address in brackets, such as '[::1]' or '[::1]:8080'"
        if rest and not rest.startswith(":"):
            return "'[IPv6]' or '[IPv6]:port'"
        host, port = literal, rest[1:] if rest else None
    elif text.count(":") > 1:
        if not is_host(text):  # an IPv6 address without its brackets still matches
            return "one ':' before the port (IPv6 addresses in brackets: '[::1]:8080')"
        host, port = text, None
    else:
        host, colon, port_text = text.partition(":")
        port = port_text if colon else None
        if not host:
            return "a host before the port"
        if not _GLOB_HOST.fullmatch(_GLOB_CLASS.sub("a", host)):
            return "a host name: letters, digits, '-', '_' and dots, or a glob ('*', '?', '[...]')"
    if port is not None:
        if not _GLOB_PORT.fullmatch(port):
            return "a port between 1 and 65535 after ':'"
        if port.isdigit() and not 0 < int(port) < 65536:
            return "a port between 1 and 65535"
    return None


def normalise_pattern(pattern: str, field: str = "pattern", *, where: str | None = None) -> str:
    """Return `pattern` as a Mesh compares it: lower case, no trailing dot before ``:port``.

    Two patterns of one file that normalise alike are refused: the Mesh would keep one.
    The same rules apply to patterns in code and in files.

    Raises:
        ConfigError: the pattern can never match a request's destination (a URL, a
            path, spaces, a port that is not one), naming `field` (and `where`, the file).
    """
    text = pattern.strip().lower()
    problem = _pattern_problem(text)
    if problem is not None:
        raise ConfigError(
            f"expected {problem}, got {pattern!r}",
            where=where,
            field=field,
            value=pattern,
            expected=problem,
        )
    host, colon, port = text.rpartition(":")
    if colon and port.isdigit() and not host.endswith("]") and ":" not in host:
        return f"{host.rstrip('.')}:{port}"
    if colon and port.isdigit() and host.endswith("]"):
        return f"{host}:{port}"  # an IPv6 literal with a port: [::1]:8080
    return text.rstrip(".")


def refuse_destination_layers(policy: Policy, field: str, *, where: str | None = None) -> None:
    """Raise ConfigError if a policy that applies to every destination has endpoints or routes.

    Endpoints and routes describe one destination: as a default they would send
    every host's requests to the same addresses. The one rule for code (`Mesh`,
    `wrap`) and files (``[default]``).

    Args:
        policy: the policy that applies to every destination.
        field: how the caller names it (``"Mesh.default"``, ``"default"``).
        where: the file it comes from, if any.
    """
    for layer in ("endpoints", "routes"):
        value = getattr(policy, layer)
        if value is not None:
            raise ConfigError(
                "endpoints and routes belong to a destination "
                '(Mesh(destinations={...}) or [destinations."HOST"]), '
                f"not to a default policy; got {value!r}",
                where=where,
                field=f"{field}.{layer}",
                value=value,
            )


def check_clusters(
    destinations: Mapping[str, Policy],
    clusters: Mapping[str, Policy],
    cluster_field: Callable[[str], str],
    route_field: Callable[[str], str],
    *,
    where: str | None = None,
) -> None:
    """Raise ConfigError unless every cluster has endpoints (and no routes) and every
    route's name is a cluster or a host.

    The one rule for code (`Mesh`) and files: `cluster_field` and `route_field`
    say how the caller names a cluster's table and a destination's routes, `where`
    the file.
    """
    for name, policy in clusters.items():
        if policy.endpoints is None or policy.routes is not None:
            layer = "endpoints" if policy.endpoints is None else "routes"
            raise ConfigError(
                "a cluster is a set of endpoints: it needs endpoints, and its requests are "
                f"not routed again; got {layer} = {getattr(policy, layer)!r}",
                where=where,
                field=f"{cluster_field(name)}.{layer}",
                value=getattr(policy, layer),
            )
    for pattern, policy in destinations.items():
        for route in policy.routes or ():
            for name in route.names():
                if name not in clusters and not is_host_name(name):
                    raise ConfigError(
                        f"names no cluster and is not a host name: {name!r}",
                        where=where,
                        field=route_field(pattern),
                        value=name,
                    )


class PolicyTable:
    """An immutable map from destination patterns to policies, swapped whole on reload.

    Precedence: ``host:port``, then ``host``, then the longest matching glob,
    else the default. Clusters are looked up by their exact name.
    """

    __slots__ = ("clusters", "default", "destinations", "globs", "owners")

    def __init__(
        self,
        default: Policy,
        destinations: Mapping[str, Policy] | None,
        clusters: Mapping[str, Policy] | None = None,
        owners: Mapping[str, str] | None = None,
    ) -> None:
        """`owners`: a cluster that is a view of another (xDS's per-route views) uses
        that one's state and name."""
        if not isinstance(default, Policy):
            raise ConfigError(f"Mesh.default: expected a meshlib.Policy, got {default!r}")
        refuse_destination_layers(default, "Mesh.default")
        if destinations is not None and not isinstance(destinations, Mapping):
            raise ConfigError(
                "Mesh.destinations: expected a mapping of host pattern to meshlib.Policy, "
                f"got {type(destinations).__name__}"
            )
        table: dict[str, Policy] = {}
        given: dict[str, str] = {}
        for pattern, policy in (destinations or {}).items():
            if not isinstance(pattern, str) or not pattern.strip():
                raise ConfigError(f"Mesh.destinations: expected a host pattern, got {pattern!r}")
            if not isinstance(policy, Policy):
                raise ConfigError(
                    f"Mesh.destinations[{pattern!r}]: expected a meshlib.Policy, got {policy!r}"
                )
            normal = normalise_pattern(pattern, f"Mesh.destinations[{pattern!r}]")
            same = given.setdefault(normal, pattern)
            if same != pattern:
                raise ConfigError(
                    f"Mesh.destinations[{pattern!r}]: the same pattern as {same!r} (patterns "
                    "ignore case, surrounding spaces and a trailing dot); one would be lost"
                )
            table[normal] = policy
        if clusters is not None and not isinstance(clusters, Mapping):
            raise ConfigError(
                "Mesh.clusters: expected a mapping of cluster name to meshlib.Policy, "
                f"got {type(clusters).__name__}"
            )
        named: dict[str, Policy] = {}
        for name, policy in (clusters or {}).items():
            if not isinstance(name, str) or not name.strip() or name != name.strip():
                raise ConfigError(f"Mesh.clusters: expected a cluster name, got {name!r}")
            if not isinstance(policy, Policy):
                raise ConfigError(
                    f"Mesh.clusters[{name!r}]: expected a meshlib.Policy, got {policy!r}"
                )
            named[name] = policy
        check_clusters(
            table,
            named,
            lambda name: f"Mesh.clusters[{name!r}]",
            lambda pattern: f"Mesh.destinations[{pattern!r}].routes",
        )
        self.clusters: Mapping[str, Policy] = types.MappingProxyType(named)
        self.owners: Mapping[str, str] = types.MappingProxyType(dict(owners or {}))
        self.default = default
        self.destinations: Mapping[str, Policy] = types.MappingProxyType(table)
        # Longest first; sorted() is stable, so equal lengths keep the file's order.
        # A leading "[" is an IPv6 literal ([::1]:8080), not a glob's character class.
        self.globs = sorted(
            (p for p in table if "*" in p or "?" in p or "[" in p[1:]), key=len, reverse=True
        )

    def pattern_for(self, host: str, port: int | None = None) -> str | None:
        """Return the pattern that decides `host`'s policy, or None for the default."""
        host = normalise_host(host)
        named = f"[{host}]" if ":" in host else host  # IPv6 literals are written bracketed
        with_port = f"{named}:{port}" if port is not None else None
        destinations = self.destinations
        if with_port is not None and with_port in destinations:
            return with_port
        if host in destinations:
            return host
        if named in destinations:
            return named
        for pattern in self.globs:
            if fnmatch.fnmatchcase(host, pattern) or (
                with_port is not None and fnmatch.fnmatchcase(with_port, pattern)
            ):
                return pattern
        return None

    def policy_for(self, host: str, port: int | None = None) -> Policy:
        """Return the policy that applies to `host` (and `port`)."""
        pattern = self.pattern_for(host, port)
        return self.default if pattern is None else self.destinations[pattern]
