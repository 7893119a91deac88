"""The ADS client: state of the world, xDS v3, one bidirectional stream.

One daemon thread owns the stream (``AggregatedDiscoveryService.
StreamAggregatedResources``) and every decision about it; a second, short-lived
thread per stream only reads responses into the first one's queue. Callers
(sync or async, any thread) subscribe and read what is in force without
touching the network: a resource, once known, is in memory.

What the caller relies on:

- Subscriptions are per type URL and resource name; every request re-sends the
  full set of names of its type (state of the world). The first request of each
  stream carries the node identity from the bootstrap.
- Every response is ACKed (its version and nonce) or NACKed (the last accepted
  version of the type, the response's nonce and an ``error_detail`` naming each
  refused resource and why). The `Handler` decides what is refused: it gets the
  decoded resources of one response and returns an error per refused name.
  Valid resources of a NACKed response are used (gRFC A46); a refused resource
  keeps its last good version in force.
- A Listener or Cluster that is watched and absent from a response does not
  exist (the protocol's rule for those types); so does any watched resource the
  server has not sent within `resource_timeout` of being requested on a
  connected stream (gRFC A57). With the server feature
  ``ignore_resource_deletion`` (gRFC A53), a resource already received stays.
- When the stream fails, everything received stays in force; the client
  reconnects with gRPC's jittered exponential backoff (at once if the stream had
  received a response) and re-subscribes to everything watched. Each change
  between connected (the current stream has been answered) and not is logged
  once on the ``meshlib.xds`` logger, as is each NACK.

Importing this module needs the ``meshlib[xds]`` extra; without it the import
raises `ConfigError` naming the extra.

Near 900 lines because the stream's whole life (subscribe, ACK/NACK,
does-not-exist timers, reconnect) is one state machine on one thread; split,
its invariants would span modules that each see half of the state.
"""

from __future__ import annotations

import itertools
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType, TracebackType
from typing import Any, Literal

from .._errors import ConfigError
from .._version import __version__
from .bootstrap import Bootstrap

MISSING_EXTRA = "the xDS client needs grpcio and xds-protos: pip install 'meshlib[xds]'"

try:
    import grpc
    from envoy.config.cluster.v3 import cluster_pb2
    from envoy.config.core.v3 import base_pb2
    from envoy.config.endpoint.v3 import endpoint_pb2
    from envoy.config.listener.v3 import listener_pb2
    from envoy.config.route.v3 import route_pb2
    from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
    from google.protobuf import json_format
    from google.protobuf.message import DecodeError
except Exception as exc:  # ImportError, or generated code refusing the installed runtime
    raise ConfigError(f"{MISSING_EXTRA} ({type(exc).__name__}: {exc})") from exc

__all__ = [
    "CLUSTER",
    "CLUSTER_LOAD_ASSIGNMENT",
    "LISTENER",
    "ROUTE_CONFIGURATION",
    "AdsClient",
    "AdsStatus",
    "Handler",
    "ReconnectBackoff",
    "ResourceStatus",
    "Update",
]

logger = logging.getLogger("meshlib.xds")

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE_CONFIGURATION = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
CLUSTER_LOAD_ASSIGNMENT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
_RESOURCE_WRAPPER = "type.googleapis.com/envoy.service.discovery.v3.Resource"
_INVALID_ARGUMENT = 3  # google.rpc.Code, the status a NACK carries

# Advertised so that a server may wrap resources in Resource (unwrapped below).
_CLIENT_FEATURES = ("xds.config.resource-in-sotw",)


@dataclass(frozen=True, slots=True)
class _Kind:
    short: str
    message: Any  # the generated message class
    name_field: str
    absence_means_deletion: bool  # true for LDS and CDS in the state of the world


_KINDS: Mapping[str, _Kind] = MappingProxyType(
    {
        LISTENER: _Kind("Listener", listener_pb2.Listener, "name", True),
        ROUTE_CONFIGURATION: _Kind(
            "RouteConfiguration", route_pb2.RouteConfiguration, "name", False
        ),
        CLUSTER: _Kind("Cluster", cluster_pb2.Cluster, "name", True),
        CLUSTER_LOAD_ASSIGNMENT: _Kind(
            "ClusterLoadAssignment", endpoint_pb2.ClusterLoadAssignment, "cluster_name", False
        ),
    }
)


@dataclass(frozen=True, slots=True)
class ReconnectBackoff:
    """gRPC's connection backoff: base 1 s, multiplier 1.6, jitter 0.2, cap 120 s.

    The n-th consecutive failed attempt waits ``min(base × multiplier^(n-1), cap)``,
    spread uniformly by ± ``jitter`` of itself.
    """

    base: float = 1.0
    multiplier: float = 1.6
    jitter: float = 0.2
    cap: float = 120.0

    def __post_init__(self) -> None:
        for name, value, ok in (
            ("base", self.base, self.base > 0),
            ("multiplier", self.multiplier, self.multiplier >= 1),
            ("jitter", self.jitter, 0 <= self.jitter < 1),
            ("cap", self.cap, self.cap >= self.base),
        ):
            if not ok:
                raise ConfigError(f"ReconnectBackoff.{name}: out of range: {value!r}")

    def delay(self, failures: int, rng: random.Random) -> float:
        """Return the wait after `failures` (≥ 1) consecutive failed attempts."""
        current = self.base
        for _ in range(failures - 1):
            current = min(current * self.multiplier, self.cap)
            if current == self.cap:
                break
        return current * (1 + rng.uniform(-self.jitter, self.jitter))


@dataclass(frozen=True, slots=True)
class Update:
    """What one response (or one does-not-exist timer) says about watched resources.

    Attributes:
        type_url: the resource type.
        version: the response's version_info (for a timer: the type's version).
        resources: the watched resources the response carries, decoded, by name.
        missing: watched names that do not exist (absent from a Listener or
            Cluster response, or unanswered within the resource timeout), each
            reported once until it exists again.
    """

    type_url: str
    version: str
    resources: Mapping[str, Any]
    missing: frozenset[str]


Handler = Callable[[Update], Mapping[str, str]]
"""Validate and take an update; return an error message per refused resource name.

Called on the client's thread, one update at a time. A refused name keeps what
the handler had for it before; the message should name the field, e.g.
``"lb_policy: MAGLEV is not supported"``. An exception refuses every resource
of the update.
"""

State = Literal["requested", "acked", "nacked", "does_not_exist"]


@dataclass(frozen=True, slots=True)
class ResourceStatus:
    """One watched resource, as CSDS (and Envoy's config_dump) reports it.

    Attributes:
        state: ``requested`` (no answer yet), ``acked`` (the latest version is
            in force), ``nacked`` (the latest version was refused; `version`, if
            any, is still in force) or ``does_not_exist``.
        version: the version of the response that put `resource` in force.
        resource: the message in force (do not modify it), or None.
        nacked_version, nack_reason: the last refusal since the last
            acceptance, or None.
    """

    type_url: str
    name: str
    state: State
    version: str | None = None
    resource: Any = None
    nacked_version: str | None = None
    nack_reason: str | None = None


@dataclass(frozen=True, slots=True)
class AdsStatus:
    """A snapshot of the client: what is in force, what was refused, whether connected.

    Attributes:
        server_uri: the bootstrap's server.
        connected: whether a stream to it is up and has been answered.
        versions: per type URL, the last version ACKed.
        resources: every watched resource, by type then subscription order.
    """

    server_uri: str
    connected: bool
    versions: Mapping[str, str]
    resources: tuple[ResourceStatus, ...]

    def get(self, type_url: str, name: str) -> ResourceStatus | None:
        """Return the status of one watched resource, or None if it is not watched."""
        for status in self.resources:
            if status.type_url == type_url and status.name == name:
                return status
        return None

    def to_dict(self) -> dict[str, Any]:
        """Return the snapshot as JSON-ready data (resources in protobuf's JSON form)."""
        types: dict[str, Any] = {}
        for status in self.resources:
            entry = types.setdefault(
                status.type_url, {"version": self.versions.get(status.type_url), "resources": {}}
            )
            entry["resources"][status.name] = {
                "state": status.state,
                "version": status.version,
                "nacked_version": status.nacked_version,
                "nack_reason": status.nack_reason,
                "resource": None
                if status.resource is None
                else json_format.MessageToDict(status.resource),
            }
        return {"server_uri": self.server_uri, "connected": self.connected, "types": types}


class _Entry:
    """The client's record of one watched resource."""

    __slots__ = (
        "deletion_ignored",
        "nack_reason",
        "nacked_version",
        "resource",
        "state",
        "version",
    )

    def __init__(self) -> None:
        self.state: State = "requested"
        self.version: str | None = None
        self.resource: Any = None
        self.nacked_version: str | None = None
        self.nack_reason: str | None = None
        self.deletion_ignored = False

    def accept(self, version: str, resource: Any) -> None:
        self.state, self.version, self.resource = "acked", version, resource
        self.nacked_version = self.nack_reason = None
        self.deletion_ignored = False

    def refuse(self, version: str, reason: str) -> None:
        self.state, self.nacked_version, self.nack_reason = "nacked", version, reason

    def vanish(self) -> None:
        self.state, self.version, self.resource = "does_not_exist", None, None


class _Type:
    """Watched names of one type (in subscription order) and the type's last ACKed version."""

    __slots__ = ("entries", "version")

    def __init__(self) -> None:
        self.entries: dict[str, _Entry] = {}
        self.version = ""


class _Stream:
    """One ADS stream's own state; owned by the client's thread."""

    __slots__ = (
        "call",
        "established",
        "got_response",
        "id",
        "nonces",
        "requests",
        "sent",
        "sent_node",
    )

    def __init__(self, stream_id: int, call: Any, requests: queue.SimpleQueue[Any]) -> None:
        self.id = stream_id
        self.call = call
        self.requests = requests
        self.sent_node = False
        self.established = False  # the first request reached the server's transport
        self.got_response = False
        self.nonces: dict[str, str] = {}  # per type URL, the last response nonce
        self.sent: dict[str, tuple[str, ...]] = {}  # per type URL, the names last sent


class AdsClient:
    """A state-of-the-world ADS client on its own daemon thread.

    Args:
        bootstrap: where the server is, how to reach it, who this node is.
        handler: validates and takes each update (see `Handler`).
        backoff: the reconnect schedule (gRPC's by default).
        resource_timeout: seconds a requested resource may go unanswered on a
            connected stream before it does not exist (gRFC A27's 15 s).
        clock: monotonic seconds, for the timers.
        rng: the source of the backoff's jitter.

    The thread starts at once; `close` stops it.
    """

    def __init__(
        self,
        bootstrap: Bootstrap,
        handler: Handler,
        *,
        backoff: ReconnectBackoff = ReconnectBackoff(),
        resource_timeout: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        value = resource_timeout
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"AdsClient.resource_timeout: expected seconds > 0, got {value!r}")
        self._bootstrap = bootstrap
        self._handler = handler
        self._backoff = backoff
        self._resource_timeout = float(resource_timeout)
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._node = _node_message(bootstrap)
        self._uri = bootstrap.xds_server.server_uri
        # Guards everything below it; notified on every change, for wait_ready.
        self._lock = threading.Condition()
        self._types: dict[str, _Type] = {}
        self._connected: bool | None = None  # None: not yet tried
        self._closed = False
        self._call: Any = None
        self._streams = itertools.count(1)
        self._events: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._timers: dict[tuple[str, str], float] = {}  # owned by the thread
        self._thread = threading.Thread(
            target=self._run, name=f"meshlib-xds {self._uri}", daemon=True
        )
        self._thread.start()

    # --- what callers use, from any thread ---------------------------------------------

    def subscribe(self, type_url: str, names: Iterable[str]) -> None:
        """Watch `names` of `type_url` (besides what is already watched)."""
        names = _names(type_url, names)
        with self._lock:
            watched = self._types.setdefault(type_url, _Type()).entries
            added = [name for name in names if name not in watched]
            for name in added:
                watched[name] = _Entry()
        if added:
            self._events.put(("watch", type_url))

    def unsubscribe(self, type_url: str, names: Iterable[str]) -> None:
        """Stop watching `names` of `type_url` and forget what was received for them."""
        names = _names(type_url, names)
        with self._lock:
            watched = self._types[type_url].entries if type_url in self._types else {}
            removed = [name for name in names if watched.pop(name, None) is not None]
            self._lock.notify_all()
        if removed:
            self._events.put(("watch", type_url))

    def resource(self, type_url: str, name: str) -> Any:
        """Return the resource in force for `name`, or None."""
        with self._lock:
            kind = self._types.get(type_url)
            entry = kind.entries.get(name) if kind is not None else None
            return entry.resource if entry is not None else None

    def wait_ready(self, type_url: str, names: Iterable[str], timeout: float | None) -> bool:
        """Wait until every one of `names` (watched) has an answer; return whether all do.

        An answer is a resource in force, a refusal or "does not exist"; when
        this returns True, the handler has already been given every answer.
        Returns False at `timeout` seconds (None: no limit) or when the client
        closes.

        Raises:
            ValueError: a name is not watched.
        """
        names = _names(type_url, names)
        with self._lock:
            kind = self._types.get(type_url)
            unknown = [name for name in names if kind is None or name not in kind.entries]
            if unknown:
                raise ValueError(f"not subscribed: {_KINDS[type_url].short} {unknown}")

            def answered() -> bool:
                if self._closed:
                    return True
                entries = self._types[type_url].entries
                return all(name in entries and entries[name].state != "requested" for name in names)

            return self._lock.wait_for(answered, timeout) and not self._closed

    @property
    def connected(self) -> bool:
        """Whether a stream to the server is up and has been answered."""
        with self._lock:
            return bool(self._connected)

    def status(self) -> AdsStatus:
        """Return what is in force, per type and name, and whether connected."""
        with self._lock:
            resources = tuple(
                ResourceStatus(
                    type_url,
                    name,
                    entry.state,
                    entry.version,
                    entry.resource,
                    entry.nacked_version,
                    entry.nack_reason,
                )
                for type_url, kind in self._types.items()
                for name, entry in kind.entries.items()
            )
            versions = {url: kind.version for url, kind in self._types.items() if kind.version}
            return AdsStatus(
                self._uri, bool(self._connected), MappingProxyType(versions), resources
            )

    def close(self) -> None:
        """Stop the stream and the thread; what was received stays readable."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            call = self._call
            self._lock.notify_all()
        self._events.put(("stop",))
        if call is not None:
            call.cancel()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=10)

    def __enter__(self) -> AdsClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- the client's thread -----------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        while self._wait_for_watches():
            try:
                got_response = self._stream_once()
            except Exception:  # a surprise ends this stream, not the client
                logger.exception("the xDS stream to %s failed", self._uri)
                got_response = False
            if self._closed:
                return
            # A stream that was answered was healthy: try again at once (as gRPC does).
            failures = 0 if got_response else failures + 1
            if failures:
                delay = self._backoff.delay(failures, self._rng)
                logger.debug("reconnecting to the xDS server %s in %.3fs", self._uri, delay)
                self._sleep(delay)

    def _wait_for_watches(self) -> bool:
        """Wait until something is watched (a stream with nothing to ask is idle); False: closed."""
        while True:
            with self._lock:
                if self._closed:
                    return False
                if any(kind.entries for kind in self._types.values()):
                    return True
            if self._events.get()[0] == "stop":
                return False

    def _sleep(self, seconds: float) -> None:
        deadline = self._clock() + seconds
        while (left := deadline - self._clock()) > 0:
            try:
                if self._events.get(timeout=left)[0] == "stop":
                    return
            except queue.Empty:
                return

    def _stream_once(self) -> bool:
        """Run one stream until it ends; return whether it received a response."""
        try:
            channel = self._channel()
        except OSError as exc:  # TLS files not there (yet): another attempt may find them
            self._set_connected(False, f"cannot read the TLS files: {exc}")
            return False
        stream: _Stream | None = None
        requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        try:
            stream_id = next(self._streams)
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            call = stub.StreamAggregatedResources(self._requests(stream_id, requests))
            with self._lock:
                if self._closed:
                    call.cancel()
                    return False
                self._call = call
            stream = _Stream(stream_id, call, requests)
            threading.Thread(
                target=self._read,
                args=(stream_id, call),
                name=f"meshlib-xds-reader {self._uri}",
                daemon=True,
            ).start()
            with self._lock:
                watched = [url for url, kind in self._types.items() if kind.entries]
            for type_url in watched:
                self._send(stream, type_url)
            self._serve(stream)
            return stream.got_response
        finally:
            with self._lock:
                self._call = None
                if self._closed:
                    self._connected = False
            requests.put(None)  # frees gRPC's thread that waits for the next request
            if stream is not None:
                stream.call.cancel()
            self._timers.clear()  # restarted on the next connected stream (gRFC A57)
            channel.close()

    def _requests(self, stream_id: int, requests: queue.SimpleQueue[Any]) -> Iterator[Any]:
        """The stream's requests, as gRPC consumes them.

        gRPC asks for the next request only once the previous one has been
        written to a connected transport; that second ask is how this client
        knows the stream is established (the signal gRFC A57 prefers).
        """
        first = requests.get()
        if first is None:
            return
        yield first
        self._events.put(("sent", stream_id))
        while (request := requests.get()) is not None:
            yield request

    def _read(self, stream_id: int, call: Any) -> None:
        try:
            for response in call:
                self._events.put(("response", stream_id, response))
        except grpc.RpcError as exc:
            self._events.put(("ended", stream_id, f"{exc.code().name}: {exc.details()}"))
        else:
            self._events.put(("ended", stream_id, "the server ended the stream"))

    def _serve(self, stream: _Stream) -> None:
        while True:
            timeout = None
            if self._timers:
                timeout = min(self._timers.values()) - self._clock()
                if timeout <= 0:  # due timers first, however busy the stream is
                    self._expire()
                    continue
            try:
                event = self._events.get(timeout=timeout)
            except queue.Empty:
                continue
            kind = event[0]
            if kind == "stop":
                return
            if kind == "watch":
                self._send(stream, event[1])
            elif event[1] != stream.id:
                continue  # from a stream that has ended
            elif kind == "sent":
                self._established(stream)
            elif kind == "response":
                if not stream.got_response:
                    stream.got_response = True
                    self._set_connected(True, "")
                self._on_response(stream, event[2])
            else:  # "ended"
                self._set_connected(False, event[2])
                return

    def _established(self, stream: _Stream) -> None:
        # Connected, for the timers; "connected" for the log and the status waits for an
        # answer, so that a server that takes the stream and drops it is never "up".
        stream.established = True
        deadline = self._clock() + self._resource_timeout
        with self._lock:
            for type_url, kind in self._types.items():
                for name, entry in kind.entries.items():
                    if entry.state == "requested":
                        self._timers.setdefault((type_url, name), deadline)

    def _set_connected(self, connected: bool, reason: str) -> None:
        with self._lock:
            before, self._connected = self._connected, connected
            self._lock.notify_all()
        if before is connected:
            return
        if connected:
            logger.info(
                "connected to the xDS server %s",
                self._uri,
                extra={"meshlib_event": "xds_connected", "meshlib_source": self._uri},
            )
        elif before is None:
            logger.warning(
                "cannot reach the xDS server %s (%s); retrying with backoff",
                self._uri,
                reason,
                extra={"meshlib_event": "xds_disconnected", "meshlib_source": self._uri},
            )
        else:
            logger.warning(
                "lost the xDS server %s (%s); keeping the last good configuration and reconnecting",
                self._uri,
                reason,
                extra={"meshlib_event": "xds_disconnected", "meshlib_source": self._uri},
            )

    def _channel(self) -> Any:
        """A new channel per attempt: rotated TLS files are read again each time."""
        creds = self._bootstrap.xds_server.channel_creds
        if creds.type == "insecure":
            return grpc.insecure_channel(self._uri)
        root = _read(creds.ca_certificate_file)
        key = _read(creds.private_key_file)
        chain = _read(creds.certificate_file)
        return grpc.secure_channel(self._uri, grpc.ssl_channel_credentials(root, key, chain))

    def _send(self, stream: _Stream, type_url: str, error: str | None = None) -> None:
        """Send the type's request: ACK (or NACK with `error`) and the full set of names."""
        with self._lock:
            kind = self._types[type_url]
            names = tuple(kind.entries)
            version = kind.version
            # Requested on a connected stream: the does-not-exist timer starts (gRFC A57).
            waiting = [name for name, entry in kind.entries.items() if entry.state == "requested"]
        if error is None and stream.sent.get(type_url) == names:
            return  # nothing new to say
        if not names and type_url not in stream.sent:
            return  # an empty first request of a type would be a wildcard subscription
        request = discovery_pb2.DiscoveryRequest(
            type_url=type_url,
            version_info=version,
            resource_names=names,
            response_nonce=stream.nonces.get(type_url, ""),
        )
        if not stream.sent_node:
            request.node.CopyFrom(self._node)
            stream.sent_node = True
        if error is not None:
            request.error_detail.code = _INVALID_ARGUMENT
            request.error_detail.message = error
        stream.sent[type_url] = names
        stream.requests.put(request)
        if stream.established:
            deadline = self._clock() + self._resource_timeout
            for name in waiting:
                self._timers.setdefault((type_url, name), deadline)
        for key in [key for key in self._timers if key[0] == type_url and key[1] not in names]:
            del self._timers[key]

    def _expire(self) -> None:
        now = self._clock()
        due: dict[str, set[str]] = {}
        for key, deadline in list(self._timers.items()):
            if deadline <= now:
                del self._timers[key]
                due.setdefault(key[0], set()).add(key[1])
        for type_url, names in due.items():
            with self._lock:
                kind = self._types[type_url]
                missing = frozenset(
                    name
                    for name in names
                    if name in kind.entries and kind.entries[name].state == "requested"
                )
                for name in missing:
                    kind.entries[name].vanish()
                version = kind.version
                self._lock.notify_all()
            if missing:
                logger.info(
                    "the xDS server %s sent no %s %s within %gs: they do not exist",
                    self._uri,
                    _KINDS[type_url].short,
                    sorted(missing),
                    self._resource_timeout,
                )
                self._call_handler(Update(type_url, version, MappingProxyType({}), missing))

    def _on_response(self, stream: _Stream, response: Any) -> None:
        type_url = response.type_url
        kind = _KINDS.get(type_url)
        with self._lock:
            watched = self._types.get(type_url)
            names = set(watched.entries) if watched is not None else set()
        if kind is None or watched is None:
            # Not something this client asked for: nothing to take, nothing to answer.
            logger.debug("ignored an xDS response of type %s", type_url)
            return
        stream.nonces[type_url] = response.nonce
        version = response.version_info
        decoded, errors, unnamed = _decode(kind, type_url, response.resources, names)
        missing: set[str] = set()
        ignored: list[str] = []
        if kind.absence_means_deletion and not unnamed:
            ignore = self._bootstrap.xds_server.ignore_resource_deletion
            with self._lock:
                for name in names - decoded.keys() - errors.keys():
                    entry = watched.entries.get(name)
                    if entry is None:
                        continue  # unwatched meanwhile
                    if ignore and entry.resource is not None:
                        if not entry.deletion_ignored:
                            entry.deletion_ignored = True
                            ignored.append(name)
                    elif entry.state != "does_not_exist":
                        missing.add(name)
        for name in ignored:
            logger.warning(
                "the xDS server %s deleted %s %s; keeping it (ignore_resource_deletion)",
                self._uri,
                kind.short,
                name,
            )
        refused = dict(errors)
        if decoded or missing:
            update = Update(type_url, version, MappingProxyType(decoded), frozenset(missing))
            refused.update(
                (name, message)
                for name, message in self._call_handler(update).items()
                if name in decoded
            )
        with self._lock:
            entries = watched.entries
            for name, resource in decoded.items():
                if name in entries and name not in refused:
                    entries[name].accept(version, resource)
            for name, message in refused.items():
                if name in entries:
                    entries[name].refuse(version, message)
            for name in missing:
                if name in entries:
                    entries[name].vanish()
            if not refused:
                watched.version = version
            self._lock.notify_all()
        for name in (*decoded, *refused, *missing):
            self._timers.pop((type_url, name), None)
        if refused:
            detail = "; ".join(
                f"{kind.short} {name}: {message}" for name, message in refused.items()
            )
            logger.warning(
                "refused %s version %s from the xDS server %s, keeping the last good resources: %s",
                kind.short,
                version,
                self._uri,
                detail,
                extra={"meshlib_event": "xds_nack", "meshlib_source": self._uri},
            )
            self._send(stream, type_url, detail)
        else:
            stream.sent.pop(type_url, None)  # an ACK is always sent
            self._send(stream, type_url)

    def _call_handler(self, update: Update) -> Mapping[str, str]:
        try:
            return dict(self._handler(update))
        except Exception as exc:
            logger.exception("the xDS update handler failed on %s", _KINDS[update.type_url].short)
            reason = f"internal error: {type(exc).__name__}: {exc}"
            return dict.fromkeys(update.resources, reason)


def _names(type_url: str, names: Iterable[str]) -> tuple[str, ...]:
    if type_url not in _KINDS:
        raise ConfigError(f"xDS: unsupported resource type {type_url!r}")
    if isinstance(names, str):
        raise TypeError("names: expected an iterable of resource names, got one string")
    found = tuple(names)
    for name in found:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"xDS: resource name: expected a non-empty string, got {name!r}")
    return found


def _decode(
    kind: _Kind, type_url: str, resources: Iterable[Any], watched: set[str]
) -> tuple[dict[str, Any], dict[str, str], bool]:
    """Decode a response's resources; keep only watched ones.

    Returns the decoded resources by name, errors by name (or ``resources[i]``
    when the name could not be read), and whether any name could not be read
    (then absence proves nothing).
    """
    decoded: dict[str, Any] = {}
    errors: dict[str, str] = {}
    unnamed = False
    for index, packed in enumerate(resources):
        any_ = packed
        try:
            if any_.type_url == _RESOURCE_WRAPPER:
                wrapper = discovery_pb2.Resource()
                wrapper.ParseFromString(any_.value)
                any_ = wrapper.resource
            if any_.type_url != type_url:
                raise ValueError(f"has type {any_.type_url!r}, expected {type_url!r}")
            message = kind.message()
            message.ParseFromString(any_.value)
        except (DecodeError, ValueError) as exc:
            errors[f"resources[{index}]"] = f"cannot be decoded: {exc}"
            unnamed = True
            continue
        name = getattr(message, kind.name_field)
        if not name:
            errors[f"resources[{index}]"] = f"{kind.name_field}: missing"
            unnamed = True
        elif name not in watched:
            continue  # servers may send more than asked (gRFC A27): not ours to judge
        elif name in decoded or name in errors:
            decoded.pop(name, None)
            errors[name] = "sent twice in one response"
        else:
            decoded[name] = message
    return decoded, errors, unnamed


def _node_message(bootstrap: Bootstrap) -> Any:
    node = bootstrap.node
    message = base_pb2.Node(
        id=node.id,
        cluster=node.cluster,
        user_agent_name="meshlib",
        user_agent_version=__version__,
        client_features=_CLIENT_FEATURES,
    )
    message.locality.region = node.locality.region
    message.locality.zone = node.locality.zone
    message.locality.sub_zone = node.locality.sub_zone
    message.metadata.update(_thaw(node.metadata))
    return message


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _thaw(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return [_thaw(item) for item in value]
    return value


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as file:
        return file.read()
