"""A Mesh's policies from a control plane: the ADS client, the translation, and the table.

`XdsSource` watches Listeners by destination name (``host:port``), follows each to
its RouteConfiguration, the Clusters its routes name and their ClusterLoadAssignments,
translates every resource as it arrives (a `Refused` one is NACKed, and its last good
version stays) and, after each accepted change, hands the Mesh one new table built
from everything in force (`MeshConfig`, through the callback sources report to). A
destination whose Listener does not exist, or whose routes are not known yet, is not
in the table: `default` applies to it, with plain DNS.

Importing this module needs the ``meshlib[xds]`` extra (through `ads`).

Over 400 lines because it is where the four resource types meet: what each one
watches depends on the others (a listener's routes name clusters, a cluster names
its endpoints), and that bookkeeping has to stay under one lock.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import anyio
import httpx

from .._compat import uri_reference
from .._config import MeshConfig
from .._deadline import remaining
from .._errors import ConfigError
from .._patterns import normalise_pattern
from .._policy import Endpoints, Policy
from .._state import Destination
from .ads import (
    CLUSTER,
    CLUSTER_LOAD_ASSIGNMENT,
    LISTENER,
    ROUTE_CONFIGURATION,
    AdsClient,
    AdsStatus,
    Update,
)
from .bootstrap import Bootstrap
from .clusters import ClusterSettings, cluster_settings, load_assignment_endpoints
from .fields import Refused
from .routes import XdsRoute, route_table
from .tls import Certificates
from .translate import ListenerRoutes, compose, listener_routes

__all__ = ["XdsSource", "authority"]


def authority(listener: str) -> str:
    """Return the Host header a request to the destination `listener` (``host:port``) sends.

    httpx leaves out the scheme's own port; for 80 and 443 that is the host alone.
    """
    host, _, port = listener.rpartition(":")
    return host if port in ("80", "443") else listener


class XdsSource:
    """Follow a control plane for a Mesh; `apply` takes each new table.

    Thread-safe: `want` is called from request threads (on a plan cache miss),
    the handler from the ADS client's thread.

    For the status page: `kind` (``"xds"``), ``str()`` (the server), `failing`
    (not connected) and `refused` (the time and reason of the last NACK).
    """

    kind = "xds"

    def __init__(
        self,
        bootstrap: Bootstrap,
        default: Policy,
        apply: Callable[[MeshConfig], None],
        client: Callable[..., AdsClient] = AdsClient,
        ready_timeout: float = 0.0,
    ) -> None:
        self.bootstrap = bootstrap
        self.ready_timeout = ready_timeout
        self.where = f"xDS {bootstrap.xds_server.server_uri}"
        self._default = default
        self._apply = apply
        self._certificates = Certificates.of(bootstrap)
        self._changed = threading.Condition()
        self._listeners: dict[str, ListenerRoutes] = {}
        self._missing_listeners: set[str] = set()
        self._routes: dict[str, Any] = {}  # RouteConfiguration messages by name
        self._clusters: dict[str, ClusterSettings] = {}
        self._missing_clusters: set[str] = set()
        self._assignments: dict[str, Any] = {}  # ClusterLoadAssignment messages by name
        self._missing_assignments: set[str] = set()
        # Translated once, when what they come from arrives: a change to one cluster's
        # endpoints does not translate every other resource again.
        self._tables: dict[str, list[XdsRoute] | None] = {}  # listener: its routes
        self._found: dict[str, Endpoints | None] = {}  # cluster: its endpoints
        self._wanted: set[str] = set()
        self.refused: tuple[float, str] | None = None
        self._watched: dict[str, set[str]] = {}  # per type but Listener, the names watched
        # (scheme, host, port) of the URLs async requests asked about (`want_async`).
        self._asked: set[tuple[str, str, int | None]] = set()
        self.client = client(bootstrap, self._handle)  # last: it may call back at once

    # --- from request threads ------------------------------------------------------

    def want(self, listener: str) -> None:
        """Watch the destination `listener` (``host:port``) from now on.

        The request that asks first waits for the answer, at most `ready_timeout`
        seconds and what is left of its deadline, unless it runs in an event loop
        (which must never block): an async request has waited in `want_async`
        before it gets here.
        """
        if listener in self._wanted:  # a set read: no lock on the common path
            return
        with self._changed:
            if listener in self._wanted:
                return
            self._wanted.add(listener)
        self.client.subscribe(LISTENER, [listener])
        wait = self._first_wait()
        if wait > 0 and not _in_event_loop():
            self.wait_ready([listener], wait)

    def _first_wait(self) -> float:
        """Seconds a destination's first request may wait: `ready_timeout`, within its deadline."""
        left = remaining()
        return self.ready_timeout if left is None else min(self.ready_timeout, left)

    async def want_async(self, url: httpx.URL) -> None:
        """`want` for a request in an event loop: the first to a destination waits for it.

        It waits at most `ready_timeout` seconds and what is left of its deadline,
        without blocking the loop (it looks every 10 ms; only the first request to
        each destination ever waits), and a cancellation ends the wait at once.
        """
        ref = uri_reference(url)
        key = (ref.scheme, ref.host, ref.port)
        if key in self._asked:  # a set read: the common path
            return
        self._asked.add(key)
        listener = str(Destination.of(url)).partition("://")[2]
        if listener in self._wanted:
            return
        self.want(listener)  # subscribes; in an event loop it does not wait
        stop_at = time.monotonic() + self._first_wait()
        while time.monotonic() < stop_at:
            with self._changed:
                if self._resolved(listener):
                    return
            await anyio.sleep(0.01)

    def wait_ready(self, listeners: Iterable[str], timeout: float) -> bool:
        """Wait until each of `listeners` is known to the end (or does not exist).

        Known to the end: its routes, every cluster they name and, for EDS, the
        cluster's endpoints have an answer. Returns False at `timeout` seconds.
        """
        names = list(listeners)
        deadline = time.monotonic() + timeout
        with self._changed:
            while not all(self._resolved(name) for name in names):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
            return True

    def __str__(self) -> str:
        return self.bootstrap.xds_server.server_uri

    @property
    def failing(self) -> bool:
        """Whether the control plane is out of reach (the last good table stays)."""
        return not self.client.connected

    def status(self) -> AdsStatus:
        """Return the ADS client's view: what is in force, what was refused."""
        return self.client.status()

    def close(self) -> None:
        """Stop following the control plane; the last table stays in force."""
        self.client.close()

    # --- from the ADS client's thread ------------------------------------------------

    def _resolved(self, listener: str) -> bool:
        if listener in self._missing_listeners:
            return True
        found = self._listeners.get(listener)
        if found is None:
            return False
        config = found.inline if found.rds is None else self._routes.get(found.rds)
        if config is None:
            return False
        for name in _cluster_names(config):
            if name in self._missing_clusters:
                continue
            settings = self._clusters.get(name)
            if settings is None:
                return False
            eds = settings.eds_name
            if (
                eds is not None
                and eds not in self._assignments
                and eds not in self._missing_assignments
            ):
                return False
        return True

    _STATE = (
        "_listeners",
        "_missing_listeners",
        "_routes",
        "_clusters",
        "_missing_clusters",
        "_assignments",
        "_missing_assignments",
        "_tables",
        "_found",
    )

    def _handle(self, update: Update) -> Mapping[str, str]:
        refused: dict[str, str] = {}
        with self._changed:
            kept = {name: getattr(self, name).copy() for name in self._STATE}
            take = {
                LISTENER: self._take_listener,
                ROUTE_CONFIGURATION: self._take_routes,
                CLUSTER: self._take_cluster,
                CLUSTER_LOAD_ASSIGNMENT: self._take_assignment,
            }[update.type_url]
            for name, message in update.resources.items():
                try:
                    take(name, message)
                except Refused as exc:
                    refused[name] = exc.detail
            self._forget(update.type_url, update.missing)
            try:
                self._apply(self._table())
            except (ConfigError, Refused) as exc:  # fits no table: refused whole, as it was
                for name, value in kept.items():
                    setattr(self, name, value)
                refused.update(dict.fromkeys(update.resources, f"does not fit the rest: {exc}"))
            watch, unwatch = self._reconcile()
            if refused:
                reasons = "; ".join(f"{name}: {reason}" for name, reason in refused.items())
                self.refused = (time.time(), reasons)  # wall-clock ok: shown as a date
            self._changed.notify_all()
        for type_url, names in watch.items():
            self.client.subscribe(type_url, sorted(names))
        for type_url, names in unwatch.items():
            self.client.unsubscribe(type_url, sorted(names))
        return refused

    def _reconcile(self) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
        """Return what to watch and to stop watching: what the listeners lead to, no more.

        What is no longer led to is forgotten, as the ADS client forgets it.
        """
        wanted: dict[str, set[str]] = {ROUTE_CONFIGURATION: set(), CLUSTER: set()}
        for read in self._listeners.values():
            if read.rds is not None:
                wanted[ROUTE_CONFIGURATION].add(read.rds)
            config = read.inline if read.rds is None else self._routes.get(read.rds)
            if config is not None:
                wanted[CLUSTER].update(_cluster_names(config))
        wanted[CLUSTER_LOAD_ASSIGNMENT] = {
            settings.eds_name
            for name, settings in self._clusters.items()
            if name in wanted[CLUSTER] and settings.eds_name is not None
        }
        watch: dict[str, set[str]] = {}
        unwatch: dict[str, set[str]] = {}
        for type_url, names in wanted.items():
            watched = self._watched.setdefault(type_url, set())
            if names - watched:
                watch[type_url] = names - watched
            if watched - names:
                unwatch[type_url] = watched - names
            self._watched[type_url] = names
        for name in unwatch.get(ROUTE_CONFIGURATION, ()):
            self._routes.pop(name, None)
        for name in unwatch.get(CLUSTER, ()):
            self._clusters.pop(name, None)
            self._found.pop(name, None)
            self._missing_clusters.discard(name)
        for name in unwatch.get(CLUSTER_LOAD_ASSIGNMENT, ()):
            self._assignments.pop(name, None)
            self._missing_assignments.discard(name)
        return watch, unwatch

    def _take_listener(self, name: str, message: Any) -> None:
        read = listener_routes(message)
        try:
            normalise_pattern(name)
        except ConfigError as exc:
            raise Refused(f"Listener {name}", "name", name, "not a host:port") from exc
        config = read.inline if read.rds is None else self._routes.get(read.rds)
        table = None if config is None else self._translate(name, read, config)
        self._listeners[name] = read
        self._missing_listeners.discard(name)
        self._tables.pop(name, None)
        if config is not None:
            self._tables[name] = table

    def _take_routes(self, name: str, message: Any) -> None:
        tables = {
            listener: self._translate(listener, read, message)
            for listener, read in self._listeners.items()
            if read.rds == name
        }  # every listener's first: one refusal keeps all of them as they were
        self._routes[name] = message
        self._tables.update(tables)

    def _translate(self, listener: str, read: ListenerRoutes, config: Any) -> list[XdsRoute] | None:
        """Read `listener`'s routes from `config`; refuse routes no table could hold."""
        table = route_table(config, authority(listener))
        compose(self._default, listener, read.faults, table, {}, {})
        return table

    def _take_cluster(self, name: str, message: Any) -> None:
        settings = cluster_settings(message, self._certificates)
        found = settings.static
        if settings.eds_name is not None and settings.eds_name in self._assignments:
            where = f"ClusterLoadAssignment {settings.eds_name}"
            found = load_assignment_endpoints(self._assignments[settings.eds_name], settings, where)
        self._clusters[name] = settings
        self._found[name] = found
        self._missing_clusters.discard(name)

    def _take_assignment(self, name: str, message: Any) -> None:
        where = f"ClusterLoadAssignment {name}"
        found = {
            cluster: load_assignment_endpoints(message, settings, where)
            for cluster, settings in self._clusters.items()
            if settings.eds_name == name
        }
        self._assignments[name] = message
        self._found.update(found)
        self._missing_assignments.discard(name)

    def _forget(self, type_url: str, names: frozenset[str]) -> None:
        for name in names:
            if type_url == LISTENER:
                self._listeners.pop(name, None)
                self._tables.pop(name, None)
                self._missing_listeners.add(name)
            elif type_url == ROUTE_CONFIGURATION:
                self._routes.pop(name, None)
                for listener, read in self._listeners.items():
                    if read.rds == name:
                        self._tables.pop(listener, None)
            elif type_url == CLUSTER:
                self._clusters.pop(name, None)
                self._found.pop(name, None)
                self._missing_clusters.add(name)
            else:
                self._assignments.pop(name, None)
                self._missing_assignments.add(name)
                for cluster, settings in self._clusters.items():
                    if settings.eds_name == name:
                        self._found[cluster] = None

    def _table(self) -> MeshConfig:
        """Build the Mesh's table from everything in force."""
        destinations: dict[str, Policy] = {}
        views: dict[str, Policy] = {}
        owners: dict[str, str] = {}
        for listener, table in self._tables.items():
            faults = self._listeners[listener].faults
            done = compose(self._default, listener, faults, table, self._clusters, self._found)
            destinations[listener] = done.policy
            views.update(done.clusters)
            owners.update(done.owners)
        return MeshConfig(
            default=self._default,
            destinations=types.MappingProxyType(destinations),
            source=self.where,
            digest="",
            clusters=types.MappingProxyType(views),
            owners=types.MappingProxyType(owners),
        )


def _in_event_loop() -> bool:
    """Return whether this thread runs an asyncio or trio event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        return True
    trio = sys.modules.get("trio")
    if trio is None:
        return False
    try:
        trio.lowlevel.current_trio_token()
    except RuntimeError:
        return False
    return True


def _cluster_names(config: Any) -> list[str]:
    """Return every cluster the routes of a RouteConfiguration name, in order."""
    names: list[str] = []
    for vhost in config.virtual_hosts:
        for route in vhost.routes:
            action = route.route
            if action.cluster:
                names.append(action.cluster)
            names.extend(entry.name for entry in action.weighted_clusters.clusters)
    return list(dict.fromkeys(names))
