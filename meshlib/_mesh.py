"""The head office: destination patterns mapped to policies, and their shared state.

Over 500 lines because the Mesh is where the public surface (constructors, from_file,
from_url, from_xds, the read-only views) meets the state it owns; the rules
themselves live below it (`_patterns`, `_plan`, `_sources`, `_xds`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import httpx

from ._breaker import BreakerSnapshot, BreakerState, TransitionHook
from ._budget import BudgetState
from ._bulkhead import BulkheadSnapshot, BulkheadState
from ._config import ENV_VAR, MeshConfig, load_config
from ._errors import ConfigError
from ._fallback import FallbackPlan, StaleStore

# refuse_destination_layers is imported from here by _pipeline (until its rewrite).
from ._patterns import PolicyTable
from ._patterns import refuse_destination_layers as refuse_destination_layers
from ._plan import Plan, Plans
from ._policy import STANDARD, Breaker, Budget, Bulkhead, Fallback, Policy
from ._runtime import runtime
from ._sketch import LatencySketch
from ._sources import FileSource, UrlSource
from ._state import Destination, SharedState
from ._telemetry import log_breaker, logger, watch_breakers
from ._traffic import EndpointPool, EndpointSnapshot, LatencyWindow
from ._xds.bootstrap import ENV_BOOTSTRAP, load_bootstrap

__all__ = ["Mesh", "default_mesh"]

_REPR_PATTERNS = 5  # a repr names this many patterns, then counts the rest


class Mesh:
    """Map destinations to policies and hold their shared state.

    Patterns are an exact host (``payments.internal``), a host and port
    (``payments.internal:8443``) or a glob (``*.svc.cluster.local``). A
    request takes the policy of, in order: its ``host:port``, its host, the
    longest matching glob, else `default`. Clients wrapped with the same Mesh
    share breakers, budgets and bulkheads per destination.

    The policies can change while clients use the Mesh (`update`, or a file
    or URL source with reload): the new table is swapped in whole, requests in
    flight finish on the policy they started with, and a destination keeps
    its breaker, budget and bulkhead when their settings did not change.

    Clusters are destinations a route sends to by name (``Route(to="orders-v2")``),
    as Envoy's are: each has its endpoints, its policy and its own state
    (breaker, budget, bulkhead, ejections), shared by every route that sends to
    it, while the request keeps its own URL and Host header.

    Args:
        default: the policy for destinations no pattern names.
        destinations: pattern to policy.
        clusters: cluster name to policy; each has endpoints.
        max_destinations: how many destinations keep state at once; the least
            recently used are forgotten first.

    Raises:
        ConfigError: a pattern is not a non-empty string or a value is not a Policy;
            a cluster has no endpoints; a route names neither a cluster nor a host.
    """

    def __init__(
        self,
        default: Policy = STANDARD,
        destinations: Mapping[str, Policy] | None = None,
        *,
        clusters: Mapping[str, Policy] | None = None,
        max_destinations: int = 10_000,
    ) -> None:
        if (
            isinstance(max_destinations, bool)
            or not isinstance(max_destinations, int)
            or (max_destinations < 1)
        ):
            raise ConfigError(
                f"Mesh.max_destinations: expected an int >= 1, got {max_destinations!r}"
            )
        self._table = PolicyTable(default, destinations, clusters)
        self._plans = Plans(max_destinations, self._new_plan, self._new_cluster_plan)
        self._budgets: SharedState[tuple[Destination, Budget], BudgetState] = SharedState()
        self._breakers: SharedState[tuple[Destination, Breaker], BreakerState] = SharedState()
        self._bulkheads: SharedState[tuple[Destination, Bulkhead], BulkheadState] = SharedState()
        # By destination alone: a pool outlives a change of its addresses (`EndpointPool.update`).
        self._endpoints: SharedState[Destination, EndpointPool] = SharedState()
        self._latencies: SharedState[Destination, LatencyWindow] = SharedState()
        self._stale: SharedState[tuple[Destination, Fallback], StaleStore] = SharedState()
        self._sketches: SharedState[Destination, LatencySketch] = SharedState()
        self._measuring = False  # latency sketches: only once a status page asks
        self._hooks: list[TransitionHook] = []
        self._source: Any = None  # a file or URL watcher, kept alive with the Mesh
        self._xds: Any = None  # the control plane's source, when from_xds made the Mesh
        self._origin = "code"  # where the policies came from, for repr: "code", a path or URL
        watch_breakers(self)

    def __repr__(self) -> str:
        patterns = list(self._table.destinations)
        count = f"{len(patterns)} destination{'' if len(patterns) == 1 else 's'}"
        if patterns:
            shown = patterns[:_REPR_PATTERNS]
            more = ", ..." if len(patterns) > len(shown) else ""
            count += f" ({', '.join(shown)}{more})"
        which = " (the process-wide default)" if self is _default else ""
        followed = ", followed" if self._source is not None else ""
        return f"<meshlib.Mesh{which} from {self._origin}{followed}: {count}>"

    @property
    def default(self) -> Policy:
        """The policy for destinations no pattern names."""
        return self._table.default

    @property
    def destinations(self) -> Mapping[str, Policy]:
        """Pattern to policy, read-only (normalised: lowercase, no trailing dot)."""
        return self._table.destinations

    @property
    def clusters(self) -> Mapping[str, Policy]:
        """Cluster name to policy, read-only."""
        return self._table.clusters

    def policy_for(self, host: str, port: int | None = None) -> Policy:
        """Return the policy that applies to `host` (and `port`)."""
        return self._table.policy_for(host, port)

    def pattern_for(self, host: str, port: int | None = None) -> str | None:
        """Return the pattern that decides `host`'s policy, or None when the default does."""
        return self._table.pattern_for(host, port)

    def update(
        self,
        default: Policy,
        destinations: Mapping[str, Policy] | None = None,
        clusters: Mapping[str, Policy] | None = None,
    ) -> None:
        """Replace every policy at once; the next request uses the new ones.

        Requests in flight finish on their old policy. A destination (or
        cluster) whose breaker, budget or bulkhead settings did not change keeps
        that state; one whose endpoints changed keeps its endpoint pool and the
        state (ejections, latency estimates) of the addresses still there.

        Raises:
            ConfigError: the new table is invalid; the old one stays.
        """
        table = PolicyTable(default, destinations, clusters)
        self._table = table
        self._plans.invalidate()

    def _apply_config(self, config: MeshConfig) -> None:
        """Take a new policy document from a source (the callback sources report to).

        Raises:
            ConfigError: the new table is invalid; the old one stays.
        """
        self._table = PolicyTable(
            config.default, config.destinations, config.clusters, config.owners
        )
        self._plans.invalidate()

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        *,
        reload: bool = True,
        interval: float = 1.0,
        max_destinations: int = 10_000,
    ) -> Mesh:
        """Build a Mesh from a TOML or JSON policy file, and follow its changes.

        With `reload`, the file is checked every `interval` seconds (inode,
        size, modification and change times, then a hash of the content); a
        changed file that validates replaces the policies at once, one that
        does not is refused with one log line naming the file, the field and
        the value, and the last good policies stay. A relative `path` is made
        absolute now: a later ``os.chdir`` does not change the file followed.

        Raises:
            ConfigError: the file is missing, unreadable or invalid now.
        """
        path = os.path.abspath(path)
        config = load_config(path)
        mesh = cls(
            config.default,
            config.destinations,
            clusters=config.clusters,
            max_destinations=max_destinations,
        )
        mesh._origin = config.source
        if reload:
            mesh._source = FileSource(mesh._apply_config, path, config.digest, interval)
        return mesh

    @classmethod
    def from_env(cls, variable: str = ENV_VAR, **kwargs: Any) -> Mesh | None:
        """Build a Mesh from the file the environment variable names, or None when unset.

        Unset, empty and blank are alike. `kwargs` go to `from_file`.

        Raises:
            ConfigError: the file is missing, unreadable or invalid now; its `where`
                names the variable and the file: ``$MESHLIB_CONFIG=/etc/mesh.toml``.
        """
        path = os.environ.get(variable, "").strip()
        if not path:
            return None
        try:
            return cls.from_file(path, **kwargs)
        except ConfigError as exc:
            named = f"${variable}={path}"
            if exc.where != os.path.abspath(path):
                raise ConfigError(str(exc), where=named) from exc
            raise ConfigError(
                exc.reason,
                where=named,
                field=exc.field,
                value=exc.value,
                expected=exc.expected,
                line=exc.line,
                column=exc.column,
            ) from exc

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        reload: bool = True,
        interval: float = 5.0,
        timeout: float = 5.0,
        max_destinations: int = 10_000,
        headers: Mapping[str, str] | None = None,
        verify: Any = True,
    ) -> Mesh:
        """Build a Mesh from a policy document served over HTTP(S), and follow it.

        The document (TOML or JSON) is polled every `interval` seconds with
        ``If-None-Match``, so any config service or static server can be the
        head office. A failed fetch or an invalid document keeps the last good
        policies; each change between working and failing is logged once.

        Raises:
            ConfigError: the first fetch fails or the document is invalid.
        """
        source = UrlSource(url, interval, timeout, headers or {}, verify)
        config = source.fetch_first()  # closes the source itself when it fails
        try:
            mesh = cls(
                config.default,
                config.destinations,
                clusters=config.clusters,
                max_destinations=max_destinations,
            )
        except BaseException:  # e.g. a bad max_destinations: no client left open; re-raised
            source.close()
            raise
        mesh._origin = config.source
        if reload:
            source.follow(mesh._apply_config)
            mesh._source = source
        else:
            source.close()
        return mesh

    @classmethod
    def from_xds(
        cls,
        bootstrap: str | os.PathLike[str] | None = None,
        *,
        default: Policy = STANDARD,
        ready_timeout: float = 1.0,
        watch: Iterable[str] = (),
        max_destinations: int = 10_000,
    ) -> Mesh:
        """Build a Mesh that the control plane configures, as a proxyless xDS client.

        The bootstrap is gRPC's (`bootstrap`, else ``$MESHLIB_XDS_BOOTSTRAP``,
        else ``$GRPC_XDS_BOOTSTRAP``); see docs/xds.md. A request to
        ``host:port`` looks up the Listener of that name, its routes, clusters
        and endpoints, subscribed to on the first request (which, like every
        request until the answer arrives, goes out on `default`), or up front
        for the names in `watch`, which this call waits for, at most
        `ready_timeout` seconds. Destinations the control plane does not know
        use `default` and plain DNS. `close` stops following it.

        Raises:
            ConfigError: the ``meshlib[xds]`` extra is missing, the bootstrap is
                missing or invalid, or an argument is.
        """
        # The extra is optional: its modules (grpc, protobuf) load only when asked for.
        from ._xds.source import XdsSource

        if (
            isinstance(ready_timeout, bool)
            or not isinstance(ready_timeout, int | float)
            or not ready_timeout >= 0
        ):
            raise ConfigError(
                f"Mesh.from_xds.ready_timeout: expected seconds >= 0, got {ready_timeout!r}"
            )
        if isinstance(watch, str):
            raise ConfigError(
                f"Mesh.from_xds.watch: expected a list of 'host:port' names, got {watch!r}"
            )
        names = list(watch)
        for name in names:
            host, _, port = name.rpartition(":") if isinstance(name, str) else ("", "", "")
            if not host or not port.isdigit():
                raise ConfigError(
                    f"Mesh.from_xds.watch: expected 'host:port' listener names, got {name!r}"
                )
        found = load_bootstrap(bootstrap)
        mesh = cls(default, max_destinations=max_destinations)
        source = XdsSource(found, default, mesh._apply_config)
        mesh._origin = source.where
        mesh._source = mesh._xds = source
        for name in names:
            source.want(name)
        if names:
            source.wait_ready(names, ready_timeout)
        source.ready_timeout = ready_timeout  # from now on, for requests' first answers
        return mesh

    def config_dump(self) -> dict[str, Any]:
        """Return what is in force and where it came from, as JSON-ready data.

        Like Envoy's ``/config_dump``. Always ``source``: ``{"kind", "location"}``
        of what the Mesh follows (``"xds"``, ``"file"``, ``"url"``), or None for a
        Mesh made in code. ``xds`` is None unless the Mesh follows a control plane
        (`from_xds`); then it holds ``server_uri``, ``connected``, and ``types``: per
        resource type URL, the last ``version`` accepted and every watched resource
        by name, with its ``state`` (``"requested"``, ``"acked"``, ``"nacked"``,
        ``"does_not_exist"``), the ``version`` in force and the ``resource`` itself
        (protobuf's JSON form), and the last refusal since then (``nacked_version``,
        ``nack_reason``, which names the field). A refused version never replaces
        the one in force. The status page serves it as ``/config_dump``.
        """
        source = self._source
        # A URL's query is redacted already: a UrlSource names itself so everywhere.
        found = None if source is None else {"kind": source.kind, "location": self._origin}
        xds = self._xds
        return {"source": found, "xds": None if xds is None else xds.status().to_dict()}

    def close(self) -> None:
        """Stop following the Mesh's file, URL or control plane, if any."""
        if self._source is not None:
            self._source.close()
            self._source = self._xds = None

    def _new_plan(self, requested: Policy | None, target: httpx.URL | Destination) -> Plan:
        """Build the plan for `target` (the plan cache calls this on a miss)."""
        destination = target if isinstance(target, Destination) else Destination.of(target)
        if self._xds is not None and destination.scheme in ("http", "https"):
            # Subscribed on first use; until the answer, this plan is the default's.
            self._xds.want(str(destination).partition("://")[2])
        policy = requested
        if policy is None:
            policy = self.policy_for(destination.host, destination.port)
        return self._plan(requested, policy, destination, destination, None)

    def _new_cluster_plan(
        self, requested: Policy | None, name: str, destination: Destination
    ) -> Plan | None:
        """Build the plan for cluster `name` reached from `destination`; None: no such cluster."""
        table = self._table
        policy = table.clusters.get(name)
        if policy is None:
            return None
        # State keyed by the cluster's name alone: one breaker for every route to it,
        # and for every view of it (xDS: a route's retry and timeout over the cluster).
        owner = table.owners.get(name, name)
        return self._plan(requested, policy, destination, Destination("cluster", owner, 0), owner)

    def _plan(
        self,
        requested: Policy | None,
        policy: Policy,
        destination: Destination,
        owner: Destination,
        cluster: str | None,
    ) -> Plan:
        """Build a plan for `destination` under `policy`, with the state `owner` keys."""
        label = str(destination) if cluster is None else cluster
        budget = breaker = bulkhead = None
        retry = policy.retry
        if retry is not None and retry.budget is not None:
            budget_settings = retry.budget
            budget = self._budgets.get_or_create(
                (owner, budget_settings), lambda: BudgetState(budget_settings)
            )
        if policy.breaker is not None:
            breaker_settings = policy.breaker
            breaker = self._breakers.get_or_create(
                (owner, breaker_settings),
                lambda: BreakerState(breaker_settings, label, self._breaker_moved),
            )
        if policy.bulkhead is not None:
            bulkhead_settings = policy.bulkhead
            bulkhead = self._bulkheads.get_or_create(
                (owner, bulkhead_settings),
                lambda: BulkheadState(bulkhead_settings, label),
            )
        plan = Plan(requested, policy, destination, budget, breaker, bulkhead, cluster)
        if policy.endpoints is not None:
            endpoint_settings = policy.endpoints
            pool = self._endpoints.get_or_create(
                owner, lambda: EndpointPool(endpoint_settings, label)
            )
            pool.update(endpoint_settings)  # the addresses may have changed
            plan.endpoints = pool
        if policy.fallback is not None and destination.scheme != "function":
            # A function has no responses to keep: `resilient` takes its own fallback=.
            plan.fallback = self._fallback_plan(owner, policy.fallback, policy)
        if policy.hedge is not None and policy.hedge.delay == "p95":
            plan.latencies = self._latencies.get_or_create(owner, LatencyWindow)
        if self._measuring:
            plan.sketch = self._sketches.get_or_create(owner, LatencySketch)
        return plan

    def _fallback_plan(
        self, destination: Destination, settings: Fallback, policy: Policy
    ) -> FallbackPlan:
        """Return a destination's fallback, with its stale store (shared while in use)."""
        store = None
        if settings.stale is not None:
            store = self._stale.get_or_create(
                (destination, settings),
                lambda: StaleStore(settings.max_entries, settings.max_bytes),
            )
        return FallbackPlan(settings, store, policy.retry)

    def _measure_latency(self) -> None:
        """Keep a latency sketch per destination from now on (the status page asks).

        Until then the success path measures nothing: a Mesh nobody looks at pays nothing.
        """
        if not self._measuring:
            self._measuring = True
            self._plans.invalidate()  # cached plans are rebuilt, with a sketch

    def _cached_plans(self) -> list[Plan]:
        """Return the cached plans, least recently used first: the destinations in use."""
        return self._plans.values()

    def on_breaker_change(self, hook: TransitionHook) -> None:
        """Call ``hook(destination, old_state, new_state)`` after every breaker transition.

        The hook runs in the thread that caused the transition, outside the
        breaker's lock; an exception it raises is logged and swallowed.
        """
        self._hooks.append(hook)

    def _breaker_moved(self, destination: str, old: str, new: str) -> None:
        log_breaker(destination, old, new)
        for hook in self._hooks:
            try:
                hook(destination, old, new)
            except Exception:
                logger.exception("breaker hook %r failed", hook)

    def endpoints(self) -> dict[str, list[EndpointSnapshot]]:
        """Return, per destination with endpoints, each endpoint's load and health."""
        now = runtime.clock.now()
        return {pool.label: pool.snapshot(now) for pool in self._endpoints.values()}

    def breakers(self) -> list[BreakerSnapshot]:
        """Return the state and counts of every breaker in use."""
        now = runtime.clock.now()
        return [breaker.snapshot(now) for breaker in self._breakers.values()]

    def bulkheads(self) -> list[BulkheadSnapshot]:
        """Return the calls in flight and waiting for every bulkhead in use."""
        return [bulkhead.snapshot() for bulkhead in self._bulkheads.values()]

    def reset(self) -> None:
        """Forget every destination's state: budgets, breakers and bulkheads."""
        self._plans.clear()
        self._budgets.clear()
        self._breakers.clear()
        self._bulkheads.clear()
        self._endpoints.clear()
        self._latencies.clear()
        self._sketches.clear()
        self._stale.clear()


_default: Mesh | None = None
_default_lock = threading.Lock()


def default_mesh() -> Mesh:
    """Return the process-wide Mesh: clients wrapped with a bare Policy, or none, use it.

    Built on first use: from the file ``$MESHLIB_CONFIG`` names, followed for
    changes (`Mesh.from_file`), when the variable is set; from the control plane
    the bootstrap ``$MESHLIB_XDS_BOOTSTRAP`` names (`Mesh.from_xds`, with
    STANDARD as its default), when that one is set; else with STANDARD for
    every destination. ``$GRPC_XDS_BOOTSTRAP`` alone does not steer it: a
    service that also speaks proxyless gRPC joins the control plane for HTTP
    only when asked to.

    Raises:
        ConfigError: the file or bootstrap the variable names is missing or
            invalid (it names the variable and the file), both variables are set,
            or the bootstrap is set without the ``meshlib[xds]`` extra. Nothing
            is kept, so the next call tries again.
    """
    mesh = _default
    if mesh is None:
        mesh = _build_default()
    return mesh


def _build_default() -> Mesh:
    global _default
    with _default_lock:
        if _default is not None:  # another thread built it first
            return _default
        # A typo must not quietly mean STANDARD for every service: from_env refuses it.
        bootstrap = os.environ.get(ENV_BOOTSTRAP, "").strip()
        if bootstrap and os.environ.get(ENV_VAR, "").strip():
            raise ConfigError(
                f"set ${ENV_VAR} (a policy file) or ${ENV_BOOTSTRAP} (a control plane) "
                "for the default Mesh, not both",
                where=f"${ENV_VAR} and ${ENV_BOOTSTRAP}",
            )
        # from_xds reads the bootstrap from the variable, and names it in its errors.
        _default = Mesh.from_xds() if bootstrap else (Mesh.from_env() or Mesh())
        return _default


def forget_default_mesh() -> None:
    """Forget the process-wide Mesh's state, and the Mesh itself (for meshlib.testing).

    Clients already wrapped keep their Mesh, with its state forgotten; the next
    one builds a new Mesh, reading ``$MESHLIB_CONFIG`` again.
    """
    global _default
    with _default_lock:
        mesh, _default = _default, None
    if mesh is not None:
        mesh.reset()
        mesh.close()
