"""What the status page shows: one snapshot of a Mesh, as plain JSON-ready data.

Everything here reads counts the layers keep anyway (the breaker's window, the
retry budget's, the bulkhead's slots, the endpoint pool), each under that
layer's own lock for a few additions, never across I/O; the latency sketch is
the only extra, and only once a status page watches the Mesh. Nothing here
changes any state.

The shape is versioned (`VERSION`) and documented in docs/status.md; fields
may be added, never renamed or removed, within a version.

Over 400 lines because it is one shape read from every layer's state; split
by layer, the versioned shape docs/status.md documents would have no one home.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import httpx

from ._explain import describe
from ._policy import NEVER_RECORDED, SENSITIVE_QUERY, Policy
from ._runtime import runtime
from ._schema import format_duration, parse_duration, settings_of
from ._sketch import SKETCH
from ._telemetry import redact_url

if TYPE_CHECKING:
    from ._mesh import Mesh
    from ._plan import Plan

__all__ = [
    "COLUMNS",
    "ORDER",
    "VERSION",
    "cells",
    "policy_toml",
    "scrub",
    "snapshot",
    "table_toml",
    "text_table",
]

VERSION = 1

#: Statuses from the most to the least urgent: the page lists destinations in this order.
ORDER = ("failing", "recovering", "degraded", "healthy", "idle")

_URL = re.compile(r"\bhttps?://[^\s'\"<>]+", re.IGNORECASE)
# Below this success rate over the breaker's window a destination is degraded.
_DEGRADED_BELOW = 0.99
_DESTINATION_ONLY = ("endpoints", "routes")


def scrub(text: str) -> str:
    """Return `text` with every URL in it redacted as telemetry redacts ``url.full``."""

    def redact(found: re.Match[str]) -> str:
        try:
            return redact_url(httpx.URL(found[0]), SENSITIVE_QUERY)
        except Exception:  # not a URL httpx can parse: hide it whole
            return "[url]"

    return _URL.sub(redact, text)


def _iso(wall: float) -> str:
    moment = datetime.datetime.fromtimestamp(wall, tz=datetime.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _rate(count: int, window: float) -> float:
    return round(count / window, 3) if window > 0 else 0.0


def snapshot(mesh: Mesh) -> dict[str, Any]:
    """Return the Mesh's status: its policy source and every destination in use.

    Destinations come sorted by urgency (`ORDER`), then by name.
    """
    now = runtime.clock.now()
    wall = datetime.datetime.now(tz=datetime.UTC).timestamp()  # wall-clock ok: shown as a date
    source = _source(mesh._source)
    rows: dict[tuple[str, int | None], dict[str, Any]] = {}
    for plan in mesh._cached_plans():  # least recently used first: the newest plan wins
        requested = None if plan.requested is None else id(plan.requested)
        rows[(plan.label, requested)] = _destination(mesh, plan, now, wall, source)
    destinations = sorted(rows.values(), key=lambda d: (ORDER.index(d["status"]), d["name"]))
    seen: dict[str, int] = {}
    for row in destinations:  # a destination used with several client policies: one row each
        count = seen[row["name"]] = seen.get(row["name"], 0) + 1
        row["key"] = row["name"] if count == 1 else f"{row['name']} #{count}"
    return {
        "version": VERSION,
        "generated_at": _iso(wall),
        "pid": os.getpid(),
        "source": source,
        "latency_sketch": SKETCH,
        "destinations": destinations,
    }


def _source(source: Any) -> dict[str, Any] | None:
    if source is None:
        return None
    location = getattr(source, "url", None) or getattr(source, "path", None) or str(source)
    refused = getattr(source, "refused", None)
    version = getattr(source, "version", None)
    loaded = getattr(source, "loaded_at", None)
    return {
        "kind": source.kind,
        "location": scrub(str(location)),
        "version": version[:12] if isinstance(version, str) else None,
        "loaded_at": _iso(loaded) if isinstance(loaded, float) else None,
        "interval": getattr(source, "interval", None),
        "failing": bool(getattr(source, "failing", False)),
        "last_refusal": None
        if refused is None
        else {"at": _iso(refused[0]), "reason": scrub(refused[1])},
    }


def _destination(
    mesh: Mesh, plan: Plan, now: float, wall: float, source: dict[str, Any] | None
) -> dict[str, Any]:
    destination = plan.destination
    origin: dict[str, str | None]
    if plan.cluster is not None:
        policy = mesh.clusters.get(plan.cluster, plan.policy)
        origin = {"from": "cluster", "pattern": plan.cluster}
    elif plan.requested is not None:
        policy, origin = plan.requested, {"from": "client", "pattern": None}
    else:
        port = destination.port if destination.scheme != "function" else None
        pattern = mesh.pattern_for(destination.host, port)
        policy = mesh.policy_for(destination.host, port)
        origin = {"from": "default" if pattern is None else "pattern", "pattern": pattern}
    if plan.requested is None and source is not None:
        origin |= {"source": source["location"], "version": source["version"]}
    else:
        origin |= {"source": None, "version": None}
    breaker = budget = bulkhead = latency = endpoints = None
    if plan.breaker is not None:
        b = plan.breaker.snapshot(now)
        window = plan.breaker.settings.window
        breaker = {
            "state": b.state,
            "since": round(b.since, 3),
            "changed_at": _iso(wall - b.since),
            "window": window,
            "calls": b.calls,
            "successes": b.calls - b.failures,
            "failures": b.failures,
            "retry_after": round(b.retry_after, 3),
            "trips": b.trips,
        }
    if plan.budget is not None:
        settings = plan.budget.settings
        calls, retries = plan.budget.snapshot(now)
        allowed = settings.ratio * calls + settings.min_per_second * settings.ttl
        budget = {
            "window": settings.ttl,
            "requests": calls,
            "retries": retries,
            "requests_per_second": _rate(calls, settings.ttl),
            "retries_per_second": _rate(retries, settings.ttl),
            "left": max(0, math.floor(allowed - retries)),
        }
    if plan.bulkhead is not None:
        h = plan.bulkhead.snapshot()
        bulkhead = {
            "in_flight": h.in_flight,
            "queued": h.queued,
            "max_concurrent": h.max_concurrent,
            "max_queued": h.max_queued,
        }
    if plan.sketch is not None:
        count, p50, p99 = plan.sketch.summary(now)
        latency = {
            "window": plan.sketch.window,
            "count": count,
            "p50": None if p50 is None else round(p50, 6),
            "p99": None if p99 is None else round(p99, 6),
        }
    if plan.endpoints is not None:
        endpoints = [
            {
                "address": e.address,
                "state": "ejected" if e.ejected else "in use",
                "ejected_for": round(e.ejected_for, 3),
                "ejections": e.ejections,
                "in_flight": e.in_flight,
                "failures_in_a_row": e.failures_in_a_row,
                "latency": round(e.latency, 6),
                "weight": e.weight,
            }
            for e in plan.endpoints.snapshot(now)
        ]
    row: dict[str, Any] = {
        "name": plan.label,
        "kind": "function"
        if destination.scheme == "function"
        else "cluster"
        if plan.cluster is not None
        else "http",
        "policy": origin,
        "breaker": breaker,
        "budget": budget,
        "bulkhead": bulkhead,
        "latency": latency,
        "endpoints": endpoints,
    }
    row |= _summary(row)
    row["effective"], row["described"] = _rendered(
        policy, origin["pattern"], plan.requested is not None, plan.cluster is not None
    )
    return row


@functools.lru_cache(maxsize=512)
def _rendered(
    policy: Policy, pattern: str | None, client: bool, cluster: bool = False
) -> tuple[str, str]:
    # Destinations share a few policies: each is written out once, not once per poll.
    shown = redacted(policy)
    return policy_toml(shown, pattern, client=client, cluster=cluster), describe(shown)


def redacted(policy: Policy) -> Policy:
    """Return `policy` with the values of route header matches on credentials redacted."""
    routes = policy.routes
    if not routes or not any(
        name in NEVER_RECORDED for route in routes for name, _ in route.matchers()
    ):
        return policy
    return policy.replace(
        routes=tuple(
            dataclasses.replace(
                route,
                headers=tuple(
                    (name, "REDACTED" if name in NEVER_RECORDED else value)
                    for name, value in route.matchers()
                ),
            )
            if route.headers
            else route
            for route in routes
        )
    )


def _summary(row: Mapping[str, Any]) -> dict[str, Any]:
    """Derive the headline figures and the status (with its reason) from a row."""
    breaker, budget, latency = row["breaker"], row["budget"], row["latency"]
    success_rate = None
    if breaker is not None and breaker["calls"]:
        success_rate = round(breaker["successes"] / breaker["calls"], 4)
    if budget is not None:
        rps, retries = budget["requests_per_second"], budget["retries_per_second"]
    elif breaker is not None:
        rps, retries = _rate(breaker["calls"], breaker["window"]), None
    elif latency is not None:
        rps, retries = _rate(latency["count"], latency["window"]), None
    else:
        rps = retries = None
    ejected = sum(1 for e in row["endpoints"] or () if e["state"] == "ejected")
    reasons: list[str] = []
    status = "healthy"
    if breaker is not None and breaker["state"] == "open":
        status = "failing"
        wait = breaker["retry_after"]
        probe = f"next probe in {_seconds(wait)}" if wait >= 0.001 else "probe on the next call"
        reasons.append(f"breaker open, {probe}")
    elif breaker is not None and breaker["state"] == "half_open":
        status = "recovering"
        reasons.append("breaker half-open, probing")
    if success_rate is not None and success_rate < _DEGRADED_BELOW:
        reasons.append(f"{success_rate:.0%} success over {_seconds(breaker['window'])}")
    if ejected:
        reasons.append(f"{ejected} of {len(row['endpoints'])} endpoints ejected")
    if budget is not None and budget["left"] == 0:
        reasons.append("retry budget spent")
    bulkhead = row["bulkhead"]
    if bulkhead is not None and bulkhead["queued"]:
        reasons.append(f"{bulkhead['queued']} calls queued")
    if status == "healthy" and reasons:
        status = "degraded"
    counted = (
        (breaker["calls"] if breaker else 0)
        + (budget["requests"] if budget else 0)
        + (latency["count"] if latency else 0)
        + (bulkhead["in_flight"] if bulkhead else 0)
    )
    if status == "healthy" and not counted:
        status = "idle"
    return {
        "status": status,
        "reason": "; ".join(reasons),
        "success_rate": success_rate,
        "requests_per_second": rps,
        "retries_per_second": retries,
    }


def _seconds(value: float) -> str:
    return format_duration(round(value, 3))


# -- the effective policy, as the policy file writes it ---------------------------------


def table_toml(
    default: Policy,
    destinations: Mapping[str, Policy],
    clusters: Mapping[str, Policy] | None = None,
) -> str:
    """Return a Mesh's whole table as a policy file: ``[default]``, each pattern, each cluster."""
    parts = [policy_toml(redacted(default), None)]
    parts += [policy_toml(redacted(p), pattern) for pattern, p in destinations.items()]
    parts += [policy_toml(redacted(p), name, cluster=True) for name, p in (clusters or {}).items()]
    return "\n".join(parts)


def policy_toml(
    policy: Policy, pattern: str | None, *, client: bool = False, cluster: bool = False
) -> str:
    """Return `policy` as a policy file table that reads back to the same Policy.

    Every layer is written out, so what is in force is explicit: ``false`` when
    it is off, ``true`` when it has its own defaults, else the settings that
    differ from them. Settings a file cannot spell (tracer providers) are named
    in a comment. Values of Authorization and Cookie headers are never written.
    """
    if client:
        header = "# the client's own policy (wrap / Transport), not the Mesh's table\n[default]"
    elif pattern is None:
        header = "[default]"
    elif cluster:
        header = f"[clusters.{json.dumps(pattern, ensure_ascii=False)}]"
    else:
        header = f"[destinations.{json.dumps(pattern, ensure_ascii=False)}]"
    lines = [header]
    for name, setting in settings_of(Policy).items():
        value = getattr(policy, name, None)
        if value is None and name in _DESTINATION_ONLY and (pattern is None or client):
            continue  # [default] may not name them at all
        lines.append(f"{name} = {_toml(value, setting.duration)}")
        if value is not None and _is_record(value):
            in_code = [
                n
                for n, s in settings_of(type(value)).items()
                if not s.in_file and not s.secret and getattr(value, n, None) is not None
            ]
            if in_code:
                lines.append(f"# {name}: {', '.join(in_code)} set in code")
    return "\n".join(lines) + "\n"


def _is_record(value: object) -> bool:
    return hasattr(value, "__dataclass_fields__") and not isinstance(value, type)


def _toml(value: Any, duration: bool = False, header: str | None = None) -> str:
    if value is None or value is False:
        return "false"
    if value is True:
        return "true"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if duration and math.isfinite(value):
            text = format_duration(value)
            if parse_duration(text) == value:
                return json.dumps(text)
        return repr(value) if math.isfinite(value) else json.dumps(str(value))
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bytes):  # Fallback.content: a file writes it as text
        return json.dumps(value.decode("utf-8", "backslashreplace"), ensure_ascii=False)
    if _is_record(value):
        defaults = _defaults(type(value))
        items = [
            f"{_key(n)} = {_toml(getattr(value, n), s.duration, n)}"
            for n, s in settings_of(type(value)).items()
            if s.in_file and (n not in defaults or getattr(value, n) != defaults[n])
        ]
        return "{ " + ", ".join(items) + " }" if items else "true"
    if isinstance(value, frozenset | set):
        return "[" + ", ".join(_toml(v) for v in sorted(value)) + "]"
    if isinstance(value, tuple | list):
        if header in ("headers", "to") and all(isinstance(v, tuple) and len(v) == 2 for v in value):
            # A route's header matches and weighted names: tables, as the file writes them.
            pairs = [
                f"{_key(k)} = {_toml('REDACTED' if k.lower() in NEVER_RECORDED else v)}"
                for k, v in value
            ]
            return "{ " + ", ".join(pairs) + " }"
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))


def _defaults(cls: type) -> dict[str, Any]:
    """Return the settings of `cls` that have a default, with it."""
    found: dict[str, Any] = {}
    for spec in dataclasses.fields(cls):
        if spec.default is not dataclasses.MISSING:
            found[spec.name] = spec.default
        elif spec.default_factory is not dataclasses.MISSING:
            found[spec.name] = spec.default_factory()
    return found


def _key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)


# -- the table's cells, shared by the page and the terminal -----------------------------

#: The overview's columns, in order.
COLUMNS = (
    "destination",
    "status",
    "breaker",
    "success",
    "req/s",
    "retries/s",
    "p50",
    "p99",
    "budget left",
    "bulkhead",
    "endpoints",
    "policy",
)


def _latency(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 0.001:
        return f"{seconds * 1e6:.0f}µs"
    if seconds < 1:
        return f"{seconds * 1000:.3g}ms"
    return f"{seconds:.3g}s"


def _ago(seconds: float) -> str:
    if seconds < 1:
        return "<1s"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.0f}h"


def cells(row: Mapping[str, Any]) -> dict[str, str]:
    """Return one destination's overview cells as text, keyed by `COLUMNS`."""
    breaker, budget, bulkhead = row["breaker"], row["budget"], row["bulkhead"]
    latency, endpoints, origin = row["latency"] or {}, row["endpoints"], row["policy"]
    if breaker is None:
        breaker_text = "off"
    else:
        breaker_text = f"{breaker['state'].replace('_', '-')} for {_ago(breaker['since'])}"
    if endpoints is None:
        endpoints_text = "-"
    else:
        used = sum(1 for e in endpoints if e["state"] == "in use")
        endpoints_text = f"{used}/{len(endpoints)} in use"
    if origin["from"] == "pattern":
        policy_text = json.dumps(origin["pattern"], ensure_ascii=False)
    else:
        policy_text = origin["from"]
    rate, retries = row["requests_per_second"], row["retries_per_second"]
    return {
        "destination": row["key"],
        "status": row["status"],
        "breaker": breaker_text,
        "success": "-" if row["success_rate"] is None else f"{row['success_rate']:.1%}",
        "req/s": "-" if rate is None else f"{rate:g}",
        "retries/s": "-" if retries is None else f"{retries:g}",
        "p50": _latency(latency.get("p50")),
        "p99": _latency(latency.get("p99")),
        "budget left": "-" if budget is None else str(budget["left"]),
        "bulkhead": "-"
        if bulkhead is None
        else f"{bulkhead['in_flight']} in flight, {bulkhead['queued']} queued",
        "endpoints": endpoints_text,
        "policy": policy_text,
    }


def text_table(rows: Iterable[Mapping[str, str]]) -> list[str]:
    """Lay out rows of `cells` as aligned text lines under the `COLUMNS` headings."""
    rows = list(rows)
    widths = {c: max([len(c), *(len(r[c]) for r in rows)]) for c in COLUMNS}
    out = ["  ".join(c.ljust(widths[c]) for c in COLUMNS).rstrip()]
    out += ["  ".join(r[c].ljust(widths[c]) for c in COLUMNS).rstrip() for r in rows]
    return out
