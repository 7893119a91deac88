"""What ``meshlib explain`` and the status page say about a policy: readable lines.

`describe` renders a policy one line per layer; `explain` says which table of a policy
file applies to a destination and where each of its layers comes from.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Protocol

from ._config import MeshConfig, cluster_path, pattern_path
from ._patterns import PolicyTable, normalise_pattern
from ._policy import Policy
from ._schema import format_duration, layer_settings, settings_of, trim_number

__all__ = ["describe", "explain", "plural"]


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """Return ``"1 destination"`` or ``"3 destinations"``: a count with its noun agreed.

    Args:
        count: how many.
        noun: the singular.
        nouns: the plural, when it is not `noun` + ``s`` (``"retries"``).
    """
    return f"{count} {noun}" if count == 1 else f"{count} {nouns or noun + 's'}"


def _codes(codes: frozenset[int]) -> str:
    ordered = sorted(codes)
    runs: list[str] = []
    start = 0
    for index, code in enumerate(ordered):
        if index + 1 < len(ordered) and ordered[index + 1] == code + 1:
            continue  # inside a run
        first = ordered[start]
        runs.append(str(code) if first == code else f"{first}-{code}")
        start = index + 1
    return ", ".join(runs) or "none"


def _percent(share: float) -> str:
    return f"{trim_number(share * 100)}%"


def _retry(retry: Any) -> str:
    backoff = retry.backoff
    budget = retry.budget
    if budget is None:
        spend = "no retry budget"
    else:
        spend = (
            f"budget {_percent(budget.ratio)} of calls + {trim_number(budget.min_per_second)}/s "
            f"over {format_duration(budget.ttl)}"
        )
    attempts = plural(retry.attempts, "attempt")
    return (
        f"{attempts}; backoff {backoff.jitter} jitter {format_duration(backoff.base)}"
        f"..{format_duration(backoff.cap)}; on status {_codes(retry.on_status)}"
        f" for {', '.join(sorted(retry.methods))}; Retry-After up to "
        f"{format_duration(retry.retry_after_cap)}; {spend}"
    )


def _timeout(timeout: Any) -> str:
    total = "no total" if timeout.total is None else f"total {format_duration(timeout.total)}"
    attempt = (
        "no per-attempt bound"
        if timeout.attempt is None
        else f"attempt {format_duration(timeout.attempt)}"
    )
    header = "no deadline header" if timeout.header is None else f"header {timeout.header}"
    return f"{total}, {attempt}; {header}"


def _breaker(breaker: Any) -> str:
    trips = (
        f"opens at {_percent(breaker.failure_ratio)} failures of >= {breaker.min_calls} calls "
        f"over {format_duration(breaker.window)}"
    )
    if getattr(breaker, "consecutive", None) is not None:
        trips += f" or {breaker.consecutive} in a row"
    open_for = f"open {format_duration(breaker.open_for)}"
    if getattr(breaker, "max_open_for", None) is not None:
        open_for += f" doubling up to {format_duration(breaker.max_open_for)}"
    probes = plural(breaker.probes, "probe")
    return f"{trips}; {open_for}; {probes}; failures: {_codes(breaker.on_status)}"


def _bulkhead(bulkhead: Any) -> str:
    queue = "no queue" if bulkhead.max_queued == 0 else f"{bulkhead.max_queued} queued"
    return f"{bulkhead.max_concurrent} in flight, {queue}"


def _tracing(tracing: Any) -> str:
    targets = ", ".join(tracing.propagate_to) or "nowhere"
    headers = ", ".join(tracing.capture_headers) or "none"
    custom = [
        name
        for name in ("tracer_provider", "meter_provider")
        if getattr(tracing, name, None) is not None
    ]
    providers = f"own {' and '.join(custom)}" if custom else "global providers"
    return (
        f"context to {targets}; {plural(len(tracing.redact_query), 'query name')} redacted; "
        f"headers captured: {headers}; {providers}"
    )


def _tls(tls: Any) -> str:
    # Never the password: only whether the key needs one is the caller's business.
    files = f"cert {tls.cert}" + (f", key {tls.key}" if tls.key != tls.cert else "")
    parts = [files, f"ca {tls.ca}" if tls.ca is not None else "ca certifi"]
    if tls.reload:
        parts.append(f"reloaded every {format_duration(tls.reload_interval)}")
    if tls.subject_alt_names or tls.subject_alt_name_prefixes:
        names = [*tls.subject_alt_names, *(f"{p}*" for p in tls.subject_alt_name_prefixes)]
        parts.append(f"server is one of {', '.join(names)}")
    else:
        parts.append("server's host name checked")
    if tls.server_name is not None:
        parts.append(f"SNI {tls.server_name}")
    return "; ".join(parts)


def _header(name: str, match: Any) -> str:
    if isinstance(match, str):
        return f"{name}: {match}"
    kind = next(
        k
        for k in ("exact", "prefix", "suffix", "regex", "present")
        if getattr(match, k) is not None
    )
    value = getattr(match, kind)
    shown = {
        "exact": f"{name}: {value}",
        "prefix": f"{name}: {value}*",
        "suffix": f"{name}: *{value}",
        "regex": f"{name} ~ {value}",
        "present": f"{name} sent" if value else f"{name} not sent",
    }[kind]
    return f"not ({shown})" if match.invert else shown


def _path(path: Any) -> str:
    if isinstance(path, str):
        return f"path {path}*"
    if hasattr(path, "exact"):
        return f"path {path.exact}"
    return f"path ~ {path.regex}"


def _to(to: Any) -> str:
    if isinstance(to, str):
        return to
    total = sum(weight for _, weight in to)
    return ", ".join(f"{name} {_percent(weight / total)}" for name, weight in to)


def _routes(routes: Any) -> str:
    """Render routes in the order they are tried: what each takes, then ``-> where``."""
    shown: list[str] = []
    for route in routes:
        takes: list[str] = []
        if getattr(route, "path", None) is not None:
            takes.append(_path(route.path))
        if route.headers:
            takes.append(", ".join(_header(name, value) for name, value in route.headers))
        if route.weight is not None:
            share = _percent(route.weight)
            if route.headers or getattr(route, "path", None) is not None:
                share += " of those"
            if route.sticky is not None:
                share += f" (sticky on {route.sticky})"
            takes.append(share)
        shown.append(f"{' '.join(takes) or 'every request'} -> {_to(route.to)}")
    return "; ".join(shown) or "none"


def _fallback(fallback: Any) -> str:
    stale = (
        "no stale copies"
        if fallback.stale is None
        else (
            f"stale copies up to {format_duration(fallback.stale)} old"
            f" ({plural(fallback.max_entries, 'response')}, {fallback.max_bytes} bytes,"
            f" bodies up to {fallback.max_body} bytes"
            f"{', private ones too' if fallback.keep_private else ''})"
        )
    )
    static = (
        "no static answer"
        if fallback.status is None
        else (f"else {fallback.status} with {plural(len(fallback.content), 'byte')}")
    )
    return f"{stale}; {static}; on {', '.join(sorted(fallback.on))}"


def _is_record(value: Any) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def _generic(value: Any) -> str:
    """Render a layer this module has no words for: ``name value`` per setting."""
    if not _is_record(value):
        return _plain(value)
    parts: list[str] = []
    for name, setting in settings_of(type(value)).items():
        if not setting.in_file:
            continue
        item = getattr(value, name, None)
        if item is None:
            shown = "off"
        elif setting.duration and isinstance(item, int | float) and not isinstance(item, bool):
            shown = format_duration(item) if math.isfinite(item) else repr(item)
        elif _is_record(item):
            shown = f"({_generic(item)})"
        elif isinstance(item, tuple) and item and all(map(_is_record, item)):
            shown = "[" + "; ".join(f"({_generic(v)})" for v in item) + "]"
        else:
            shown = _plain(item)
        parts.append(f"{name} {shown}")
    return ", ".join(parts)


def _plain(value: Any) -> str:
    if isinstance(value, frozenset | set):
        if all(isinstance(v, int) for v in value):
            return _codes(frozenset(value))
        return ", ".join(sorted(map(str, value)))
    if isinstance(value, tuple | list):
        return ", ".join(map(str, value))
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


_DESCRIBERS = {
    "retry": _retry,
    "timeout": _timeout,
    "breaker": _breaker,
    "bulkhead": _bulkhead,
    "tracing": _tracing,
    "routes": _routes,
    "fallback": _fallback,
    "tls": _tls,
}


def describe(policy: Policy, origins: Mapping[str, str] | None = None) -> str:
    """Return a readable rendering of `policy`: one line per layer, ``off`` when None.

    Args:
        policy: the policy to show.
        origins: per layer, where it came from (`MeshConfig.layer_origins`), shown as
            ``(from ...)`` at the end of its line.
    """
    layers = list(layer_settings())
    width = max(map(len, layers))
    lines: list[str] = []
    for name in layers:
        value = getattr(policy, name, None)
        if value is None:
            text = "off"
        else:
            render = _DESCRIBERS.get(name, _generic)
            try:
                text = render(value)
            except Exception:  # a layer this release does not know how to spell
                text = repr(value)
        if origins is not None and name in origins:
            text += f"  (from {origins[name]})"
        lines.append(f"{name.ljust(width)}  {text}")
    return "\n".join(lines)


class _Lookup(Protocol):
    """What `explain` asks of a Mesh (or of a bare `PolicyTable`)."""

    def pattern_for(self, host: str, port: int | None = None) -> str | None: ...

    def policy_for(self, host: str, port: int | None = None) -> Policy: ...


def explain(
    config: MeshConfig, host: str, port: int | None = None, *, mesh: _Lookup | None = None
) -> str:
    """Return what ``meshlib explain`` shows for `host` (and `port`) under `config`.

    A `host` (without `port`) that is one of the file's clusters shows that
    cluster: ``NAME -> clusters."NAME"``.

    The first line names the table that applies, ``destinations."PATTERN"`` (as the file
    writes it) or ``default``; then `describe`'s lines for the effective policy,
    indented, each with the table its layer comes from. The pattern is the one
    `Mesh.pattern_for` picks, so this always agrees with what requests get.

    Args:
        config: a parsed policy file.
        host: the destination's host (an IPv6 literal without brackets).
        port: its port; None matches ``host`` and globs only, never ``host:port``.
        mesh: the Mesh built from `config`, if there is one; else its policy table is.
    """
    if port is None and host in config.clusters:
        lines = describe(
            config.clusters[host], config.layer_origins(host, cluster=True)
        ).splitlines()
        return "\n".join([f"{host} -> {cluster_path(host)}", *(f"  {line}" for line in lines)])
    if mesh is None:
        mesh = PolicyTable(config.default, config.destinations, config.clusters)
    found = mesh.pattern_for(host, port)
    written = {normalise_pattern(p): p for p in config.destinations}
    pattern = None if found is None else written.get(found, found)
    shown = f"[{host}]" if ":" in host else host
    target = shown if port is None else f"{shown}:{port}"
    where = "default" if pattern is None else pattern_path(pattern)
    policy = mesh.policy_for(host, port)
    lines = describe(policy, config.layer_origins(pattern)).splitlines()
    return "\n".join([f"{target} -> {where}", *(f"  {line}" for line in lines)])
