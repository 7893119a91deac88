"""Policy values: frozen, validated when built, compared and hashed by value.

A `Policy` holds one value per layer; ``None`` switches a layer off. Every
field of every layer has a default, and ``Policy()`` equals `STANDARD`.

Every layer's value in one module, over 800 lines: each class is short, but carries its
validation and a docstring users read; one place lets a reader compare the layers and
lets the policy file's schema (`meshlib._schema`) find them all.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import ipaddress
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, cast, get_args

from ._checks import DURATION, duration
from ._checks import fail as _fail
from ._errors import ConfigError
from ._tls import TLS

__all__ = [
    "STANDARD",
    "Backoff",
    "Breaker",
    "Budget",
    "Bulkhead",
    "Ejection",
    "Endpoints",
    "Fallback",
    "Faults",
    "HeaderMatch",
    "Hedge",
    "PathExact",
    "PathRegex",
    "Policy",
    "Retry",
    "Route",
    "Timeout",
    "Tracing",
]

Jitter = Literal["full", "equal", "decorrelated", "none"]
JITTERS: frozenset[str] = frozenset(get_args(Jitter))

#: Methods RFC 9110 calls idempotent: safe to send twice.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
#: Statuses that say "try again": timeout, too many requests, gateway trouble.
RETRYABLE_STATUSES: frozenset[int] = frozenset({408, 429, 502, 503, 504})


#: RFC 9110's token: what a method or a header name may be made of.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# A host name as httpx sends it: ASCII labels (IDNA already applied), dots between.
_HOST_NAME = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\.?")

T = TypeVar("T")


def is_token(value: object) -> bool:
    """Return whether `value` is an RFC 9110 token (a method or a header name)."""
    return isinstance(value, str) and _TOKEN.fullmatch(value) is not None


def is_host(host: str) -> bool:
    """Return whether `host` can be a request's host: a DNS name or an IP address.

    IPv6 addresses are given without their brackets.
    """
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return False
        return True
    return _HOST_NAME.fullmatch(host) is not None


def did_you_mean(name: str, choices: list[str]) -> str:
    """Return `` (did you mean 'x'?)`` for the choice closest to `name`, or ``""``."""
    close = difflib.get_close_matches(name, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _unknown_name(owner: str, kind: str, name: str, choices: list[str]) -> ConfigError:
    """Return the error for a keyword `owner` does not take, naming the closest choice."""
    listed = "layers" if kind == "layer" else "allowed"
    return ConfigError(
        f"unknown {kind} {name!r}; {listed}: {', '.join(choices)}{did_you_mean(name, choices)}",
        field=owner,
        value=name,
    )


def _known_keywords(kind: str) -> Callable[[type[T]], type[T]]:
    """Make an unknown keyword argument to a policy class a ConfigError with a did-you-mean.

    The dataclass's own ``__init__`` would raise a bare TypeError that names
    nothing close; this says which names exist, as `Policy.replace` does.
    """

    def decorate(cls: type[T]) -> type[T]:
        init = cls.__init__
        names = [f.name for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]
        known = frozenset(names)

        @functools.wraps(init)  # the signature shown stays the dataclass's
        def __init__(self: T, *args: Any, **kwargs: Any) -> None:
            if not known.issuperset(kwargs):
                name = next(k for k in kwargs if k not in known)
                raise _unknown_name(cls.__name__, kind, name, names)
            init(self, *args, **kwargs)

        type.__setattr__(cls, "__init__", __init__)
        return cls

    return decorate


def _number(owner: str, name: str, value: object, *, minimum: float = 0.0) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _fail(owner, name, value, "a number")
    if not math.isfinite(value) or value < minimum:
        raise _fail(owner, name, value, f"a finite number >= {minimum:g}")
    return float(value)


def _set(obj: object, name: str, value: object) -> None:
    # Normalising a field of a frozen dataclass in __post_init__ is the one
    # place a write is allowed.
    object.__setattr__(obj, name, value)


@_known_keywords("setting")
@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff between attempts: ``min(cap, base * 2**(n-1))``, then jitter.

    Args:
        base: the ceiling of the first wait, in seconds.
        cap: the largest wait, in seconds; at least `base`.
        jitter: ``"full"`` (uniform in [0, ceiling]), ``"equal"`` (half fixed, half
            random), ``"decorrelated"`` (uniform in [base, 3 × previous wait], capped)
            or ``"none"`` (the ceiling itself).
    """

    base: float = field(default=0.05, metadata=DURATION)
    cap: float = field(default=1.0, metadata=DURATION)
    jitter: Jitter = "full"

    def __post_init__(self) -> None:
        _set(self, "base", duration("Backoff", "base", self.base))
        _set(self, "cap", duration("Backoff", "cap", self.cap))
        if self.cap < self.base:
            raise _fail("Backoff", "cap", self.cap, f"a cap >= base ({self.base!r})")
        if not isinstance(self.jitter, str) or self.jitter not in JITTERS:
            raise _fail("Backoff", "jitter", self.jitter, f"one of {sorted(JITTERS)}")


@_known_keywords("setting")
@dataclass(frozen=True, slots=True)
class Budget:
    """A retry budget per destination (Finagle's and Linkerd's).

    Retries may be at most `ratio` of the calls seen in the last `ttl` seconds,
    plus a reserve of ``min_per_second * ttl`` so a quiet destination can still retry.

    Args:
        ratio: retries allowed per call, 0.2 meaning one retry per five calls.
        min_per_second: the reserve's rate.
        ttl: the window, in seconds, over which calls and retries are counted.
    """

    ratio: float = 0.2
    min_per_second: float = 10.0
    ttl: float = field(default=10.0, metadata=DURATION)

    def __post_init__(self) -> None:
        _set(self, "ratio", _number("Budget", "ratio", self.ratio))
        _set(self, "min_per_second", _number("Budget", "min_per_second", self.min_per_second))
        _set(self, "ttl", duration("Budget", "ttl", self.ttl, positive=True))


@_known_keywords("setting")
@dataclass(frozen=True, slots=True)
class Retry:
    """When and how often to try a call again.

    Args:
        attempts: the most attempts of one call, the first included (>= 1).
        backoff: the waits between attempts.
        on_status: response statuses that are retried (idempotent requests only).
        methods: methods considered idempotent, each an RFC 9110 token (letters,
            digits and ``!#$%&'*+-.^_`|~``), stored upper-cased; other requests are
            retried only on connection failures or when they carry an
            ``Idempotency-Key`` header.
        retry_after_cap: the longest ``Retry-After`` honoured, in seconds; 0
            ignores the header (the backoff applies, as for a value of zero).
        budget: the retry budget per destination, or None for no budget.
        on_error: which transport errors are retried: ``"all"``, connection
            failures (for any request) and the errors after which the server
            may have seen the request, such as resets and timeouts (for
            idempotent, replayable requests); ``"connect"``, connection
            failures only; ``"none"``, none (only statuses are retried).
    """

    attempts: int = 3
    backoff: Backoff = field(default_factory=Backoff)
    on_status: frozenset[int] = RETRYABLE_STATUSES
    methods: frozenset[str] = IDEMPOTENT_METHODS
    retry_after_cap: float = field(default=30.0, metadata=DURATION)
    budget: Budget | None = field(default_factory=Budget)
    on_error: Literal["all", "connect", "none"] = "all"

    def __post_init__(self) -> None:
        if not isinstance(self.attempts, int) or isinstance(self.attempts, bool):
            raise _fail("Retry", "attempts", self.attempts, "an int >= 1")
        if self.attempts < 1:
            raise _fail(
                "Retry", "attempts", self.attempts, "an int >= 1 (it counts the first call)"
            )
        if not isinstance(self.backoff, Backoff):
            raise _fail("Retry", "backoff", self.backoff, "a meshlib.Backoff")
        _set(self, "on_status", _statuses(self.on_status))
        _set(self, "methods", _methods(self.methods))
        _set(self, "retry_after_cap", duration("Retry", "retry_after_cap", self.retry_after_cap))
        if self.budget is not None and not isinstance(self.budget, Budget):
            raise _fail("Retry", "budget", self.budget, "a meshlib.Budget or None")
        if self.on_error not in ("all", "connect", "none"):
            raise _fail("Retry", "on_error", self.on_error, "one of 'all', 'connect', 'none'")


class StatusCodes(frozenset[int]):
    """A set of HTTP status codes that shows runs as ranges: ``{429, 500-599}``."""

    def __repr__(self) -> str:
        parts: list[str] = []
        codes = sorted(self)
        start = previous = codes[0] if codes else 0
        for code in [*codes[1:], None]:
            if code is not None and code == previous + 1:
                previous = code
                continue
            parts.append(str(start) if start == previous else f"{start}-{previous}")
            if code is not None:
                start = previous = code
        return "{" + ", ".join(parts) + "}" if codes else "{}"


def _statuses(value: object, owner: str = "Retry") -> frozenset[int]:
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise _fail(owner, "on_status", value, "a collection of HTTP status codes")
    codes = list(value)
    for code in codes:
        if not isinstance(code, int) or isinstance(code, bool) or not 100 <= code <= 599:
            raise _fail(owner, "on_status", code, "HTTP status codes between 100 and 599")
    return StatusCodes(codes)


def _methods(value: object) -> frozenset[str]:
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise _fail("Retry", "methods", value, "a collection of HTTP method names")
    methods = set()
    for method in value:
        if not is_token(method):
            raise _fail(
                "Retry", "methods", method, "HTTP method names (RFC 9110 tokens such as 'GET')"
            )
        # httpx upper-cases every request's method: a name kept in lower case would never match.
        methods.add(method.upper())
    return frozenset(methods)


@_known_keywords("setting")
@dataclass(frozen=True, slots=True)
class Timeout:
    """Time bounds for a call.

    Args:
        total: bounds the whole call, every attempt and every wait included;
            None leaves only an enclosing `meshlib.deadline` (if any).
        attempt: bounds one attempt; at most `total`. None: no per-attempt bound.
        header: the request header that tells destinations inside the mesh
            how many whole milliseconds are left; None sends none.
    """

    total: float | None = field(default=30.0, metadata=DURATION)
    attempt: float | None = field(default=None, metadata=DURATION)
    header: str | None = "x-envoy-expected-rq-timeout-ms"

    def __post_init__(self) -> None:
        _set(self, "total", duration("Timeout", "total", self.total, optional=True, positive=True))
        _set(
            self,
            "attempt",
            duration("Timeout", "attempt", self.attempt, optional=True, positive=True),
        )
        if self.header is not None and not (
            isinstance(self.header, str) and _TOKEN.fullmatch(self.header)
        ):
            raise _fail("Timeout", "header", self.header, "an HTTP header name or None")
        if self.header is not None:
            _set(self, "header", self.header.lower())
        if self.total is not None and self.attempt is not None and self.attempt > self.total:
            raise _fail("Timeout", "attempt", self.attempt, f"at most total ({self.total!r})")


#: What a breaker counts as a failed response: overload and server errors.
BREAKER_STATUSES: frozenset[int] = frozenset({429, *range(500, 600)})


def _count(owner: str, name: str, value: object, *, minimum: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise _fail(owner, name, value, f"an int >= {minimum}")
    return value


@_known_keywords("setting")
@dataclass(frozen=True, slots=True)
class Breaker:
    """A circuit breaker per destination: stop calling a line that is down.

    Closed, it counts outcomes over a sliding `window`; when at least
    `min_calls` were seen and the share of failures reaches `failure_ratio`
    (or `consecutive` failures arrive in a row, when set), it opens. Open, it
    fails calls at once with `CircuitOpen` for `open_for` seconds, then lets
    `probes` calls through (half-open): all succeeding closes it, a failure
    opens it again. Failures are connection errors, timeouts and responses
    with a status in `on_status`; other 4xx and cancellation never count.

    Args:
        failure_ratio: the share of failed calls that opens the breaker (0-1].
        min_calls: calls the window must hold before the ratio is judged.
        window: seconds of history the ratio is computed over.
        open_for: seconds the breaker stays open after a trip.
        probes: calls admitted while half-open; all must succeed to close.
        consecutive: failures in a row that open the breaker whatever the
            ratio (for low-traffic destinations); None: off.
        max_open_for: with consecutive trips, the open period doubles each
            time (with ±10% jitter) up to this; None keeps it at `open_for`.
        on_status: response statuses that count as failures.
    """

    failure_ratio: float = 0.5
    min_calls: int = 20
    window: float = field(default=30.0, metadata=DURATION)
    open_for: float = field(default=5.0, metadata=DURATION)
    probes: int = 1
    consecutive: int | None = None
    max_open_for: float | None = field(default=None, metadata=DURATION)
    on_status: frozenset[int] = BREAKER_STATUSES

    def __post_init__(self) -> None:
        ratio = _number("Breaker", "failure_ratio", self.failure_ratio)
        if not 0 < ratio <= 1:
            raise _fail("Breaker", "failure_ratio", self.failure_ratio, "a number in (0, 1]")
        _set(self, "failure_ratio", ratio)
        _count("Breaker", "min_calls", self.min_calls)
        _set(self, "window", duration("Breaker", "window", self.window, positive=True))
        _set(self, "open_for", duration("Breaker", "open_for", self.open_for, positive=True))
        _count("Breaker", "probes", self.probes)
        if self.consecutive is not None:
            _count("Breaker", "consecutive", self.consecutive)
        longest = duration("Breaker", "max_open_for", self.max_open_for, optional=True)
        if longest is not None and longest < self.open_for:
            raise _fail(
                "Breaker",
                "max_open_for",
                self.max_open_for,
                f"at least open_for ({self.open_for!r})",
            )
        _set(self, "max_open_for", longest)
        _set(self, "on_status", _statuses(self.on_status, "Breaker"))


@_known_keywords("setting")
@dataclass(frozen=True, slots=True)
class Bulkhead:
    """A limit on calls in flight per destination, so one slow upstream cannot take every worker.

    Args:
        max_concurrent: calls in flight at once.
        max_queued: calls that may wait for a slot (each no longer than its
            deadline); beyond that, `BulkheadFull` at once. 0: no queue.
    """

    max_concurrent: int = 1000
    max_queued: int = 0

    def __post_init__(self) -> None:
        _count("Bulkhead", "max_concurrent", self.max_concurrent)
        _count("Bulkhead", "max_queued", self.max_queued, minimum=0)


#: Query parameters whose values never reach telemetry (OpenTelemetry's list and more).
SENSITIVE_QUERY: frozenset[str] = frozenset(
    {
        "awsaccesskeyid",
        "signature",
        "sig",
        "x-goog-signature",
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
        "token",
        "access_token",
        "id_token",
        "refresh_token",
        "api_key",
        "apikey",
        "key",
        "password",
        "passwd",
        "secret",
        "client_secret",
        "code",
    }
)
#: Headers never recorded, whatever capture_headers says.
NEVER_RECORDED = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})


@_known_keywords("setting")
@dataclass(frozen=True, slots=True)
class Tracing:
    """Telemetry for each call: OpenTelemetry spans and metrics, and context propagation.

    Args:
        propagate_to: destinations that may receive trace context (traceparent,
            tracestate, baggage) and the deadline header: host globs
            (``*.partner.example``), IP networks (``10.0.0.0/8``) or ``"mesh"``,
            the built-in rule (loopback, private addresses, single-label hosts,
            ``*.internal``, ``*.local``, ``*.svc.cluster.local``). ``()``: none.
        tracer_provider: an OpenTelemetry TracerProvider (anything with
            ``get_tracer()``); None uses the global one.
        meter_provider: an OpenTelemetry MeterProvider (anything with
            ``get_meter()``); None uses the global one.
        redact_query: query parameter names (any case) whose values are
            replaced by ``REDACTED`` in ``url.full`` and logs.
        capture_headers: request and response headers recorded on spans as
            ``http.request.header.<name>`` / ``http.response.header.<name>``;
            Authorization, Proxy-Authorization, Cookie and Set-Cookie never are.
    """

    propagate_to: tuple[str, ...] = ("mesh",)
    tracer_provider: Any = None
    meter_provider: Any = None
    redact_query: frozenset[str] = SENSITIVE_QUERY
    capture_headers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        patterns = self.propagate_to
        if isinstance(patterns, str) or not isinstance(patterns, Iterable):
            raise _fail("Tracing", "propagate_to", patterns, "a tuple of host patterns")
        for pattern in patterns:
            if not isinstance(pattern, str) or not pattern.strip():
                raise _fail("Tracing", "propagate_to", pattern, "host patterns (strings)")
        _set(self, "propagate_to", tuple(p.strip().lower() for p in patterns))
        # Duck-typed, as OpenTelemetry's own API is: anything that hands out tracers or meters.
        for name, kind, method in (
            ("tracer_provider", "TracerProvider", "get_tracer"),
            ("meter_provider", "MeterProvider", "get_meter"),
        ):
            provider = getattr(self, name)
            if provider is not None and not callable(getattr(provider, method, None)):
                raise _fail(
                    "Tracing", name, provider, f"an OpenTelemetry {kind} (with {method}()) or None"
                )
        names = self.redact_query
        if isinstance(names, str) or not isinstance(names, Iterable):
            raise _fail("Tracing", "redact_query", names, "a collection of query names")
        _set(self, "redact_query", frozenset(str(name).lower() for name in names))
        headers = self.capture_headers
        if isinstance(headers, str) or not isinstance(headers, Iterable):
            raise _fail("Tracing", "capture_headers", headers, "a tuple of header names")
        for name in headers:
            if not isinstance(name, str) or not _TOKEN.fullmatch(name):
                raise _fail("Tracing", "capture_headers", name, "HTTP header names")
        _set(
            self,
            "capture_headers",
            tuple(n.lower() for n in headers if n.lower() not in NEVER_RECORDED),
        )


def _address(
    owner: str, value: object, name: str = "addresses", *, port_required: bool = False
) -> tuple[str, int | None]:
    """Split ``host:port`` (``[v6]:port``) or raise ConfigError; the port may be left out
    unless `port_required`."""
    expected = "'host:port' strings" if port_required else "'host' or 'host:port' strings"
    if not isinstance(value, str) or not value.strip():
        raise _fail(owner, name, value, expected)
    text = value.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else None
        if (rest and port_text is None) or ":" not in host:
            raise _fail(owner, name, value, "an IPv6 address in brackets: '[::1]:8080'")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    elif ":" in text:
        raise _fail(owner, name, value, "IPv6 addresses in brackets: '[::1]:8080'")
    else:
        host, port_text = text, None
    if not host:
        raise _fail(owner, name, value, "'host:port' with a host")
    if not is_host(host):
        raise _fail(
            owner, name, value, "a host name (letters, digits, '-', '_', dots) or an IP address"
        )
    if port_text is None and port_required:
        raise _fail(owner, name, value, "'host:port' with a port (an endpoint is an address)")
    port = None
    if port_text is not None:
        if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
            raise _fail(owner, name, value, "a port between 1 and 65535")
        port = int(port_text)
    return host.lower(), port


@_known_keywords("setting")
@dataclass(frozen=True, slots=True)
class Ejection:
    """Leave out an endpoint that keeps failing (outlier ejection, Envoy's and Linkerd's).

    An endpoint with `consecutive` failures in a row (connection errors,
    timeouts, 5xx; a success resets the count) is left out for ``base × k``
    seconds on its k-th ejection, capped at `cap`. At most `max_share` of the
    endpoints are out at once (at least one, when there are two or more,
    unless `at_least_one` is False); if all are out, all are used.

    Args:
        consecutive: failures in a row that eject an endpoint.
        base: seconds out on the first ejection; ``base × k`` on the k-th.
        cap: the longest ejection, in seconds.
        max_share: the share of the endpoints that may be out at once.
        at_least_one: True: one endpoint may be out even when `max_share` of
            the pool is less than one. False: Envoy's rule, an endpoint is
            ejected only while the share out, itself included, stays within
            `max_share` (with Envoy's 10 %, none of fewer than ten endpoints).
    """

    consecutive: int = 5
    base: float = field(default=30.0, metadata=DURATION)
    cap: float = field(default=300.0, metadata=DURATION)
    max_share: float = 0.5
    at_least_one: bool = True

    def __post_init__(self) -> None:
        _count("Ejection", "consecutive", self.consecutive)
        _set(self, "base", duration("Ejection", "base", self.base, positive=True))
        _set(self, "cap", duration("Ejection", "cap", self.cap, positive=True))
        if self.cap < self.base:
            raise _fail("Ejection", "cap", self.cap, f"a cap >= base ({self.base!r})")
        share = _number("Ejection", "max_share", self.max_share)
        if share > 1:
            raise _fail("Ejection", "max_share", self.max_share, "a share between 0 and 1")
        _set(self, "max_share", share)
        if not isinstance(self.at_least_one, bool):
            raise _fail("Ejection", "at_least_one", self.at_least_one, "true or false")


BALANCERS = ("p2c", "round_robin")


@_known_keywords("setting")
@dataclass(frozen=True, slots=True)
class Endpoints:
    """The addresses a destination's requests go to, and how to choose among them.

    The Host header, the TLS server name, ``response.url`` and the breaker
    stay the destination's. A retry prefers another endpoint.

    Args:
        addresses: ``host:port`` strings (IPv6 as ``[::1]:8080``), each with
            its port; no duplicates, at least one. Or a mapping of such
            addresses to relative positive weights
            (``{"10.0.1.1:8080": 3, "10.0.1.2:8080": 1}``): each endpoint then
            takes a share of the requests in proportion to its weight.
        balance: ``"p2c"`` (two distinct healthy endpoints at random, the less
            loaded most likely wins: requests in flight weighted by peak-EWMA
            time to response headers; equal endpoints share evenly, see
            docs/traffic.md) or ``"round_robin"``. With weights, p2c draws its
            two candidates in proportion to weight and compares requests in
            flight per unit of weight; round robin is smooth weighted round
            robin.
        ejection: outlier ejection, or None to keep every endpoint in.
        weights: the weights as a sequence in the order of `addresses` (the
            form they are stored in), when `addresses` is not a mapping.

    Attributes:
        weights: each address's weight, in order, or None when all are equal
            (``{"a:1": 2, "b:1": 2}`` is the same as ``["a:1", "b:1"]``).
    """

    addresses: tuple[str, ...] | Mapping[str, float]
    balance: Literal["p2c", "round_robin"] = "p2c"
    ejection: Ejection | None = field(default_factory=Ejection)
    weights: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        addresses: object = self.addresses
        weights: object = self.weights
        named = "weights"  # the field a bad weight came in
        if isinstance(addresses, Mapping):
            if weights is not None:
                raise _fail(
                    "Endpoints",
                    "weights",
                    weights,
                    "None when addresses is a mapping of addresses to weights",
                )
            weights, addresses, named = tuple(addresses.values()), tuple(addresses), "addresses"
        if isinstance(addresses, str) or not isinstance(addresses, Iterable):
            raise _fail("Endpoints", "addresses", addresses, "a list of 'host:port' strings")
        addresses = tuple(addresses)
        parsed = [_address("Endpoints", a, port_required=True) for a in addresses]
        if not parsed:
            raise _fail("Endpoints", "addresses", list(addresses), "at least one address")
        seen: set[tuple[str, int | None]] = set()
        for address, key in zip(addresses, parsed, strict=True):
            if key in seen:
                raise _fail("Endpoints", "addresses", address, "no duplicate addresses")
            seen.add(key)
        _set(self, "addresses", tuple(a.strip() for a in addresses))
        _set(self, "weights", _weights(weights, len(addresses), named))
        if self.balance not in BALANCERS:
            raise _fail("Endpoints", "balance", self.balance, f"one of {list(BALANCERS)}")
        if self.ejection is not None and not isinstance(self.ejection, Ejection):
            raise _fail("Endpoints", "ejection", self.ejection, "a meshlib.Ejection or None")

    def parsed(self) -> tuple[tuple[str, int], ...]:
        """Return each address as (host, port)."""
        return tuple(
            cast(tuple[str, int], _address("Endpoints", a, port_required=True))
            for a in self.addresses
        )

    def weighted(self) -> tuple[tuple[str, float], ...]:
        """Return each address with its weight (1 for each when all are equal)."""
        weights = self.weights or (1.0,) * len(self.addresses)
        return tuple(zip(self.addresses, weights, strict=True))


def _weights(value: object, count: int, name: str) -> tuple[float, ...] | None:
    """Return endpoint weights as stored: positive floats, or None when all are equal."""
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise _fail("Endpoints", name, value, "a list of positive numbers, one per address")
    weights = tuple(value)
    for weight in weights:
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            raise _fail("Endpoints", name, weight, "positive weights (numbers)")
        if not math.isfinite(weight) or weight <= 0:
            raise _fail("Endpoints", name, weight, "positive weights (numbers)")
    if len(weights) != count:
        raise _fail(
            "Endpoints", "weights", list(weights), f"one weight per address ({count} addresses)"
        )
    if len(set(weights)) == 1:
        return None  # all equal: every endpoint alike, the unweighted balancers
    return tuple(float(weight) for weight in weights)


def _regex(owner: str, name: str, value: object) -> re.Pattern[str]:
    """Compile `value`, or raise a ConfigError naming the field and the value."""
    if not isinstance(value, str):
        raise _fail(owner, name, value, "a regular expression (a string)")
    try:
        return re.compile(value)
    except re.error as exc:
        raise _fail(owner, name, value, f"a regular expression ({exc})") from exc


def _path_text(owner: str, name: str, value: object) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise _fail(owner, name, value, "a path starting with '/'")
    return value


@_known_keywords("setting")
@dataclass(frozen=True, slots=True)
class PathExact:
    """Match a request's path exactly, without its query (Envoy's route ``path``).

    The path is compared as sent (percent-encoding kept) and case-sensitively.
    A policy file writes it ``path = { exact = "/x" }``.
    """

    exact: str

    def __post_init__(self) -> None:
        _path_text("PathExact", "exact", self.exact)

    def matches(self, path: str) -> bool:
        """Return whether `path` (without the query) is this one."""
        return path == self.exact


@_known_keywords("setting")
@dataclass(frozen=True, slots=True)
class PathRegex:
    """Match a request's whole path, without its query, against a regular expression.

    As Envoy's route ``safe_regex``: the expression must match the entire path
    (``^`` and ``$`` are implied), as sent (percent-encoding kept). Python's
    `re` syntax; for the expressions RE2 accepts, they mean the same. A policy
    file writes it ``path = { regex = "^/v[0-9]+/.*" }``.
    """

    regex: str
    _compiled: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _set(self, "_compiled", _regex("PathRegex", "regex", self.regex))

    def matches(self, path: str) -> bool:
        """Return whether the regex matches all of `path` (without the query)."""
        return self._compiled.fullmatch(path) is not None


_HEADER_KINDS = ("exact", "prefix", "suffix", "regex", "present")


@_known_keywords("setting")
@dataclass(frozen=True, slots=True)
class HeaderMatch:
    """How one request header must look for a route to take the request (Envoy's HeaderMatcher).

    Exactly one of `exact`, `prefix`, `suffix`, `regex` and `present` is given.
    A header sent several times is matched as its values joined by ``,``, as
    Envoy joins them. A header that is absent matches only ``present=False``
    (or, inverted, ``present=True``): with `invert`, an absent header still
    does not match `exact`, `prefix`, `suffix` or `regex`, as in Envoy. A
    policy file writes it as a table: ``headers = { x-user = { prefix = "beta-" } }``.

    Args:
        exact: the value, whole and case-sensitive.
        prefix: what the value starts with.
        suffix: what the value ends with.
        regex: a regular expression the whole value must match.
        present: True: the header is sent (any value); False: it is not.
        invert: take the requests that do not match instead.
    """

    exact: str | None = None
    prefix: str | None = None
    suffix: str | None = None
    regex: str | None = None
    present: bool | None = None
    invert: bool = False
    _compiled: re.Pattern[str] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        given = [name for name in _HEADER_KINDS if getattr(self, name) is not None]
        if len(given) != 1:
            raise ConfigError(
                f"expected exactly one of {', '.join(_HEADER_KINDS)}, got "
                + (", ".join(given) if given else "none"),
                field="HeaderMatch",
                value=given,
                expected=f"exactly one of {', '.join(_HEADER_KINDS)}",
            )
        for name in ("exact", "prefix", "suffix"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise _fail("HeaderMatch", name, value, "a string")
        if self.present is not None and not isinstance(self.present, bool):
            raise _fail("HeaderMatch", "present", self.present, "true or false")
        if not isinstance(self.invert, bool):
            raise _fail("HeaderMatch", "invert", self.invert, "true or false")
        compiled = None if self.regex is None else _regex("HeaderMatch", "regex", self.regex)
        _set(self, "_compiled", compiled)

    def matches(self, values: list[str]) -> bool:
        """Return whether a header sent with `values` (none: absent) matches."""
        if not values:
            # Envoy: an absent header matches only a presence test, inverted or not.
            return self.present is not None and self.present is self.invert
        value = ",".join(values)
        if self.exact is not None:
            found = value == self.exact
        elif self.prefix is not None:
            found = value.startswith(self.prefix)
        elif self.suffix is not None:
            found = value.endswith(self.suffix)
        elif self._compiled is not None:
            found = self._compiled.fullmatch(value) is not None
        else:
            found = bool(self.present)
        return found is not self.invert


PathMatch = str | PathExact | PathRegex


@_known_keywords("setting")
@dataclass(frozen=True, slots=True)
class Route:
    """Send some of a destination's requests to another destination or a cluster (canary, A/B).

    Routes are tried in order; the first that takes a request wins. The
    request then goes to `to`: to a cluster's endpoints, with the cluster's
    policy and state, keeping its own URL and Host header (as Envoy keeps the
    authority); or, when `to` names no cluster, to that host as if sent there
    (its Host header, policy and state are `to`'s; `to`'s own routes are not
    followed).

    Args:
        to: a cluster's name or a destination host (``orders-v2.internal``, or
            ``host:port``); or a mapping of such names to relative positive
            weights (``{"orders-v1": 90, "orders-v2": 10}``): each request the
            route takes goes to one of them, drawn by weight.
        headers: take only requests whose headers all match: header name to
            its exact value, or to a `HeaderMatch`.
        path: take only requests whose path (without the query) matches: a
            string is a prefix (``"/v2/"``); or a `PathExact` or `PathRegex`.
        weight: take this share (0 to 1) of the requests; with `headers` or
            `path`, of those that match. The weights of a destination's routes
            add up to at most 1.
        sticky: a header whose value keeps a caller on the same side of the
            split (and on the same name of a weighted `to`); without it (or
            when absent), the draw is random.
    """

    to: str | Mapping[str, float] | tuple[tuple[str, float], ...]
    headers: Mapping[str, str | HeaderMatch] | tuple[tuple[str, str | HeaderMatch], ...] | None = (
        None
    )
    weight: float | None = None
    sticky: str | None = None
    path: str | PathExact | PathRegex | None = None

    def __post_init__(self) -> None:
        _set(self, "to", _route_to(self.to))
        headers = self.headers
        if headers is not None:
            items = headers.items() if isinstance(headers, Mapping) else headers
            pairs = []
            for item in items:
                if not (isinstance(item, tuple | list) and len(item) == 2):
                    raise _fail("Route", "headers", headers, "a table of header: value")
                name, value = item
                if not isinstance(name, str) or not _TOKEN.fullmatch(name):
                    raise _fail("Route", "headers", name, "HTTP header names")
                if isinstance(value, Mapping):  # a policy file's table
                    value = HeaderMatch(**value)
                if not isinstance(value, str | HeaderMatch):
                    raise _fail(
                        "Route", "headers", value, "header values (strings) or meshlib.HeaderMatch"
                    )
                pairs.append((name.lower(), value))
            _set(self, "headers", tuple(pairs))
        if self.weight is not None:
            weight = _number("Route", "weight", self.weight)
            if weight > 1:
                raise _fail("Route", "weight", self.weight, "a share between 0 and 1")
            _set(self, "weight", weight)
        if self.sticky is not None:
            if not isinstance(self.sticky, str) or not _TOKEN.fullmatch(self.sticky):
                raise _fail("Route", "sticky", self.sticky, "a header name")
            _set(self, "sticky", self.sticky.lower())
        path = self.path
        if isinstance(path, str):
            _path_text("Route", "path", path)
        elif path is not None and not isinstance(path, PathExact | PathRegex):
            raise _fail(
                "Route",
                "path",
                path,
                "a path prefix (a string), meshlib.PathExact, meshlib.PathRegex or None",
            )

    def targets(self) -> tuple[tuple[str, float], ...]:
        """Return the names this route sends to, each with its weight (one name: weight 1)."""
        to = self.to
        return ((to, 1.0),) if isinstance(to, str) else cast(tuple[tuple[str, float], ...], to)

    def names(self) -> tuple[str, ...]:
        """Return the destinations and clusters this route may send to."""
        return tuple(name for name, _ in self.targets())

    def matchers(self) -> tuple[tuple[str, str | HeaderMatch], ...]:
        """Return the header conditions: (lowercase name, exact value or HeaderMatch) pairs."""
        return cast(tuple[tuple[str, str | HeaderMatch], ...], self.headers or ())


def is_host_name(name: str) -> bool:
    """Return whether a route's `to` name can be a host (``host`` or ``host:port``)."""
    try:
        _address("Route", name, "to")
    except ConfigError:
        return False
    return True


def _route_name(value: object) -> str:
    # A cluster's name may be anything Envoy's may (Istio's hold "|"); whether a name that
    # is no cluster is a host is checked where the clusters are known (the Mesh, the file).
    if not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value.strip()):
        raise _fail("Route", "to", value, "a host name or a cluster's name, without spaces")
    return value.strip()


def _route_to(to: object) -> str | tuple[tuple[str, float], ...]:
    """Return a route's `to` as stored: a name, or (name, weight) pairs in the given order."""
    if isinstance(to, tuple) and all(isinstance(p, tuple) and len(p) == 2 for p in to):
        to = dict(to)  # as stored: Policy.replace and the status page hand it back
    if not isinstance(to, Mapping):
        return _route_name(to)
    if not to:
        raise _fail("Route", "to", dict(to), "at least one name with its weight")
    pairs: list[tuple[str, float]] = []
    seen: set[str] = set()
    for name, weight in to.items():
        normal = _route_name(name)
        if normal in seen:
            raise _fail("Route", "to", name, "each name once")
        seen.add(normal)
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            raise _fail("Route", "to", weight, "positive weights (numbers)")
        if not math.isfinite(weight) or weight <= 0:
            raise _fail("Route", "to", weight, "positive weights (numbers)")
        pairs.append((normal, float(weight)))
    return tuple(pairs)


@_known_keywords("setting")
@dataclass(frozen=True, slots=True)
class Faults:
    """Inject failures into a destination's calls, to test what the mesh does about them.

    Applied once per call, before retries, bulkhead and breaker. An injected
    abort is the caller's answer: it is not retried and the breaker does not
    count it. An injected delay uses up the deadline. Off unless given; a
    warning is logged while active.

    Args:
        abort: the share of calls answered with `status` without being sent.
        status: the status of an injected abort.
        delay: seconds a delayed call is held back first.
        delayed: the share of calls held back `delay` seconds.
    """

    abort: float = 0.0
    status: int = 503
    delay: float = field(default=0.0, metadata=DURATION)
    delayed: float = 1.0

    def __post_init__(self) -> None:
        for name in ("abort", "delayed"):
            share = _number("Faults", name, getattr(self, name))
            if share > 1:
                raise _fail("Faults", name, getattr(self, name), "a share between 0 and 1")
            _set(self, name, share)
        if (
            not isinstance(self.status, int)
            or isinstance(self.status, bool)
            or not 100 <= self.status <= 599
        ):
            raise _fail("Faults", "status", self.status, "an HTTP status code")
        _set(self, "delay", duration("Faults", "delay", self.delay))


@_known_keywords("setting")
@dataclass(frozen=True, slots=True)
class Hedge:
    """Send a copy of a slow idempotent request, and take the first answer.

    For idempotent requests (the retry methods, or an ``Idempotency-Key``)
    with a body that can be replayed: after `delay` seconds without response
    headers, up to `max_extra` copies go out, to other endpoints where there
    are any. The first answer wins; the others are cancelled and closed.
    Copies draw from the retry budget.

    Args:
        delay: seconds, or ``"p95"``: the destination's observed 95th
            percentile latency, once 20 calls have been measured (until then,
            1 second).
        max_extra: copies at most, per call.
    """

    delay: float | Literal["p95"] = field(default=0.05, metadata=DURATION)
    max_extra: int = 1

    def __post_init__(self) -> None:
        if self.delay != "p95":
            _set(self, "delay", duration("Hedge", "delay", self.delay))
        _count("Hedge", "max_extra", self.max_extra)


#: What may make a call answer with its fallback (`Fallback.on`), and the default: all.
FALLBACK_TRIGGERS: frozenset[str] = frozenset(
    {"error", "status", "circuit_open", "bulkhead_full", "deadline"}
)
_HEADER_VALUE = re.compile(r"[^\r\n\x00]*")


@_known_keywords("setting")
@dataclass(frozen=True, slots=True)
class Fallback:
    """Answer a call that finally failed: a stale copy of the last good response, or a static one.

    When a call to the destination finally fails (see `on`), an idempotent
    request gets the last good response to the same request, if it is at most
    `stale` seconds old (RFC 5861's stale-if-error; marked
    ``x-meshlib-fallback: stale``, with an ``Age`` header), else a static
    response of `status` (``x-meshlib-fallback: static``), else the failure,
    as without a fallback. See docs/fallback.md for what is kept and when.

    Args:
        stale: seconds a good response may be served after it was received
            (its ``Age``); None keeps none.
        status: the static answer's status; None: no static answer.
        headers: the static answer's headers (name: value).
        content: the static answer's body (text is encoded as UTF-8).
        on: what triggers it: ``"error"`` (a transport error ended the call,
            after its retries), ``"status"`` (the final response is a 5xx or a
            status the retry layer retries), ``"circuit_open"``,
            ``"bulkhead_full"``, ``"deadline"``. Default: all of them.
        max_body: the largest body kept, in bytes; a larger response is
            passed through and not kept.
        max_entries: responses kept per destination, least recently used
            out first.
        max_bytes: body bytes kept per destination, least recently used out
            first.
        keep_private: also keep responses marked ``Cache-Control: no-store``
            or ``private``, and responses to requests with ``Authorization``
            (the store is shared by every client of the Mesh: off, one
            user's answer can never reach another).
    """

    stale: float | None = field(default=None, metadata=DURATION)
    status: int | None = None
    headers: tuple[tuple[str, str], ...] | None = None
    content: bytes | str = b""
    on: frozenset[str] = FALLBACK_TRIGGERS
    max_body: int = 256 * 1024
    max_entries: int = 1000
    max_bytes: int = 8 * 1024 * 1024
    keep_private: bool = False

    def __post_init__(self) -> None:
        _set(self, "stale", duration("Fallback", "stale", self.stale, optional=True, positive=True))
        status = self.status
        if status is not None and (
            not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599
        ):
            raise _fail("Fallback", "status", status, "an HTTP status code or None")
        if self.stale is None and status is None:
            raise _fail(
                "Fallback",
                "stale",
                None,
                "stale seconds or a status (with neither, it never answers)",
            )
        headers = self.headers
        if headers is not None:
            items = headers.items() if isinstance(headers, Mapping) else headers
            pairs = []
            for item in items:
                if not (isinstance(item, tuple | list) and len(item) == 2):
                    raise _fail("Fallback", "headers", headers, "a table of header: value")
                name, value = item
                if not is_token(name):
                    raise _fail("Fallback", "headers", name, "HTTP header names")
                if not isinstance(value, str) or not _HEADER_VALUE.fullmatch(value):
                    raise _fail("Fallback", "headers", value, "header values (one-line strings)")
                pairs.append((name.lower(), value))
            _set(self, "headers", tuple(pairs))
        content = self.content
        if isinstance(content, str):
            _set(self, "content", content.encode("utf-8"))
        elif isinstance(content, bytearray | memoryview):
            _set(self, "content", bytes(content))
        elif not isinstance(content, bytes):
            raise _fail("Fallback", "content", content, "bytes or text")
        on = self.on
        if isinstance(on, str) or not isinstance(on, Iterable):
            raise _fail(
                "Fallback", "on", on, f"a list of triggers from {sorted(FALLBACK_TRIGGERS)}"
            )
        triggers = frozenset(on)
        for trigger in triggers:
            if trigger not in FALLBACK_TRIGGERS:
                raise _fail("Fallback", "on", trigger, f"triggers from {sorted(FALLBACK_TRIGGERS)}")
        if not triggers:
            raise _fail("Fallback", "on", list(on), "at least one trigger")
        _set(self, "on", triggers)
        _count("Fallback", "max_body", self.max_body, minimum=0)
        _count("Fallback", "max_entries", self.max_entries)
        _count("Fallback", "max_bytes", self.max_bytes, minimum=0)
        if not isinstance(self.keep_private, bool):
            raise _fail("Fallback", "keep_private", self.keep_private, "true or false")


_LAYERS: dict[str, type] = {
    "retry": Retry,
    "timeout": Timeout,
    "breaker": Breaker,
    "bulkhead": Bulkhead,
    "tracing": Tracing,
    "endpoints": Endpoints,
    "routes": tuple,
    "faults": Faults,
    "hedge": Hedge,
    "fallback": Fallback,
    "tls": TLS,
}


@_known_keywords("layer")
@dataclass(frozen=True, slots=True)
class Policy:
    """The layers applied to a call; ``None`` switches a layer off.

    ``Policy()`` equals `STANDARD`. Policies are immutable: derive a new one
    with `replace`.

    ``tls`` (off in STANDARD): meshlib itself connects to the destination (or each
    of its endpoints) over TLS with this `TLS`, presenting its certificate and
    verifying the server with its CA and names, also for a request to an
    ``http://`` URL, as a sidecar originates mTLS. The request's URL, its
    ``Host`` header and ``response.url`` stay as the caller made them.
    """

    retry: Retry | None = field(default_factory=Retry)
    timeout: Timeout | None = field(default_factory=lambda: Timeout(total=30.0, attempt=10.0))
    breaker: Breaker | None = field(default_factory=Breaker)
    bulkhead: Bulkhead | None = field(default_factory=Bulkhead)
    tracing: Tracing | None = field(default_factory=Tracing)
    endpoints: Endpoints | None = None
    routes: tuple[Route, ...] | None = None
    faults: Faults | None = None
    hedge: Hedge | None = None
    fallback: Fallback | None = None
    tls: TLS | None = None
    # Policies are dictionary keys on every request (state lookup); hashing the
    # nested values each time would cost microseconds, so the hash is kept.
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.routes is not None:
            routes = self.routes
            if isinstance(routes, Route):
                routes = (routes,)
            if isinstance(routes, str) or not isinstance(routes, Iterable):
                raise _fail("Policy", "routes", routes, "a list of meshlib.Route")
            routes = tuple(routes)
            for route in routes:
                if not isinstance(route, Route):
                    raise _fail("Policy", "routes", route, "meshlib.Route values")
            total = sum(r.weight or 0.0 for r in routes)
            if total > 1 + 1e-9:
                raise _fail("Policy", "routes", round(total, 6), "weights adding up to at most 1")
            _set(self, "routes", routes)
        for name, layer in _LAYERS.items():
            value = getattr(self, name)
            if value is not None and not isinstance(value, layer):
                raise _fail("Policy", name, value, f"a meshlib.{layer.__name__} or None")
        _set(self, "_hash", hash(tuple(getattr(self, name) for name in _LAYERS)))

    def __hash__(self) -> int:
        return self._hash

    def replace(self, **changes: Any) -> Policy:
        """Return a copy with the named layers replaced (``None`` switches one off).

        Raises:
            ConfigError: a name is not a layer of Policy, or a value is invalid.
        """
        unknown = sorted(set(changes) - set(_LAYERS))
        if unknown:
            raise _unknown_name("Policy.replace", "layer", unknown[0], list(_LAYERS))
        return dataclasses.replace(self, **changes)


#: The default policy; see DESIGN.md's table and docs/policies.md.
STANDARD = Policy()
