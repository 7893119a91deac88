"""Routes: path and header matchers, clusters as destinations, weighted clusters, reloads."""

from __future__ import annotations

import collections
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import meshlib
from meshlib._cli import main
from meshlib._config import parse_config
from meshlib._traffic import choose_route

pytestmark = pytest.mark.usefixtures("rng", "no_waits")

PLAIN = meshlib.Policy(breaker=None, retry=None)


class Seen:
    """A MockTransport handler that records each request as it was sent."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        # A copy: meshlib puts the destination's URL back once the attempt ends.
        self.requests.append(httpx.Request(request.method, request.url, headers=request.headers))
        return httpx.Response(self.status)

    @property
    def hosts(self) -> collections.Counter[str]:
        return collections.Counter(r.url.netloc.decode() for r in self.requests)


def _client(mesh: meshlib.Mesh, seen: Seen) -> httpx.Client:
    return meshlib.wrap(httpx.Client(transport=httpx.MockTransport(seen)), mesh)


def _routed(*routes: meshlib.Route, **clusters: meshlib.Policy) -> meshlib.Mesh:
    return meshlib.Mesh(
        destinations={"orders.internal": PLAIN.replace(routes=routes)}, clusters=clusters
    )


def _request(path: str = "/", **headers: str | list[str]) -> httpx.Request:
    items: list[tuple[str, str]] = []
    for name, value in headers.items():
        for one in [value] if isinstance(value, str) else value:
            items.append((name.replace("_", "-"), one))
    return httpx.Request("GET", f"http://orders.internal{path}", headers=items)


# a. Path routes


def test_path_prefix_exact_and_regex_routes_take_their_paths() -> None:
    seen = Seen()
    mesh = _routed(
        meshlib.Route(to="exact.internal", path=meshlib.PathExact("/health")),
        meshlib.Route(to="regex.internal", path=meshlib.PathRegex("/v[0-9]+/items/[0-9]+")),
        meshlib.Route(to="prefix.internal", path="/v2/"),
    )
    with _client(mesh, seen) as client:
        for path in (
            "/health",  # exact
            "/health?full=1",  # exact, the query left out
            "/healthz",  # not exact, no prefix either: stays
            "/v3/items/42?x=1",  # the whole path matches the regex
            "/v3/items/42/more",  # the regex must match all of it: stays
            "/v2/orders",  # prefix
            "/v2",  # not the prefix "/v2/": stays
        ):
            client.get(f"http://orders.internal{path}")
    went = [(r.url.host, r.url.raw_path.decode()) for r in seen.requests]
    assert went == [
        ("exact.internal", "/health"),
        ("exact.internal", "/health?full=1"),
        ("orders.internal", "/healthz"),
        ("regex.internal", "/v3/items/42?x=1"),
        ("orders.internal", "/v3/items/42/more"),
        ("prefix.internal", "/v2/orders"),
        ("orders.internal", "/v2"),
    ]


def test_paths_are_matched_as_sent_percent_encoding_kept() -> None:
    route = meshlib.Route(to="b.internal", path=meshlib.PathExact("/a%20b"))
    assert choose_route((route,), _request("/a%20b")) is route
    assert choose_route((route,), _request("/a b")) is route  # httpx encodes the space
    assert choose_route((route,), _request("/A%20b")) is None  # case-sensitive


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: meshlib.PathRegex("^/v(["),
            r"PathRegex\.regex: expected a regular expression .*'\^/v\(\['",
        ),
        (lambda: meshlib.PathRegex(3), r"PathRegex\.regex: .*3"),  # type: ignore[arg-type]
        (lambda: meshlib.PathExact("health"), r"PathExact\.exact: .*starting with '/'.*'health'"),
        (lambda: meshlib.Route(to="b", path="v2/"), r"Route\.path: .*starting with '/'.*'v2/'"),
        (lambda: meshlib.Route(to="b", path=3), r"Route\.path: .*PathExact"),  # type: ignore[arg-type]
    ],
)
def test_bad_paths_are_config_errors_naming_the_field_and_value(
    build: Callable[[], object], message: str
) -> None:
    with pytest.raises(meshlib.ConfigError, match=message):
        build()


def test_the_policy_file_writes_paths_as_a_string_or_a_table() -> None:
    config = parse_config(
        """
[destinations."orders.internal"]
routes = [
  { to = "a.internal", path = "/v2/" },
  { to = "b.internal", path = { exact = "/x" } },
  { to = "c.internal", path = { regex = "^/v[0-9]+/.*" } },
]
""",
        "mesh.toml",
    )
    routes = config.destinations["orders.internal"].routes
    assert routes is not None
    assert [r.path for r in routes] == [
        "/v2/",
        meshlib.PathExact("/x"),
        meshlib.PathRegex("^/v[0-9]+/.*"),
    ]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        (
            '{ regex = "(" }',
            r"mesh\.toml: destinations\.\"orders\.internal\"\.routes\[0\]\.path\.regex: "
            r"expected a regular expression .*got '\('",
        ),
        (
            '{ prefix = "/x" }',
            r"mesh\.toml: destinations\.\"orders\.internal\"\.routes\[0\]\.path: "
            r"expected a table with one of exact, regex, got 'prefix'",
        ),
        ("{}", r"routes\[0\]\.path: expected a table with one of exact, regex, got an empty table"),
    ],
)
def test_a_bad_path_in_the_file_names_the_file_the_field_and_the_value(
    path: str, message: str
) -> None:
    text = f'[destinations."orders.internal"]\nroutes = [{{ to = "a.internal", path = {path} }}]\n'
    with pytest.raises(meshlib.ConfigError, match=message):
        parse_config(text, "mesh.toml")


# b. Header matchers


@pytest.mark.parametrize(
    ("match", "sent", "taken"),
    [
        (meshlib.HeaderMatch(exact="beta"), ["beta"], True),
        (meshlib.HeaderMatch(exact="beta"), ["Beta"], False),
        (meshlib.HeaderMatch(prefix="be"), ["beta"], True),
        (meshlib.HeaderMatch(prefix="be"), ["alpha"], False),
        (meshlib.HeaderMatch(suffix="ta"), ["beta"], True),
        (meshlib.HeaderMatch(suffix="ta"), ["betas"], False),
        (meshlib.HeaderMatch(regex="b[a-z]+a"), ["beta"], True),
        (meshlib.HeaderMatch(regex="b[a-z]+"), ["beta1"], False),  # the whole value
        (meshlib.HeaderMatch(present=True), [""], True),
        (meshlib.HeaderMatch(present=True), [], False),
        (meshlib.HeaderMatch(present=False), [], True),
        (meshlib.HeaderMatch(present=False), ["x"], False),
        (meshlib.HeaderMatch(exact="beta", invert=True), ["alpha"], True),
        (meshlib.HeaderMatch(exact="beta", invert=True), ["beta"], False),
        # Envoy: an absent header matches no value matcher, inverted or not...
        (meshlib.HeaderMatch(exact="beta", invert=True), [], False),
        (meshlib.HeaderMatch(regex=".*", invert=True), [], False),
        # ... and an inverted presence test turns around.
        (meshlib.HeaderMatch(present=True, invert=True), [], True),
        (meshlib.HeaderMatch(present=False, invert=True), ["x"], True),
        # A header sent twice is matched as Envoy joins it: with ",".
        (meshlib.HeaderMatch(exact="a,b"), ["a", "b"], True),
        (meshlib.HeaderMatch(suffix=",b"), ["a", "b"], True),
    ],
)
def test_header_matchers_mean_what_envoys_mean(
    match: meshlib.HeaderMatch, sent: list[str], taken: bool
) -> None:
    route = meshlib.Route(to="b.internal", headers={"x-tier": match})
    assert (choose_route((route,), _request(x_tier=sent)) is route) is taken


def test_exact_strings_and_matchers_mix_and_all_must_match() -> None:
    route = meshlib.Route(
        to="b.internal",
        headers={"x-canary": "1", "x-user": meshlib.HeaderMatch(prefix="beta-")},
        path="/v2/",
    )
    assert choose_route((route,), _request("/v2/x", x_canary="1", x_user="beta-7")) is route
    assert choose_route((route,), _request("/v2/x", x_canary="1", x_user="prod-7")) is None
    assert choose_route((route,), _request("/v1/x", x_canary="1", x_user="beta-7")) is None
    assert choose_route((route,), _request("/v2/x", x_canary="0", x_user="beta-7")) is None


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: meshlib.HeaderMatch(),
            r"HeaderMatch: expected exactly one of exact, prefix, suffix, regex, present, got none",
        ),
        (lambda: meshlib.HeaderMatch(exact="a", prefix="b"), r"HeaderMatch: .*got exact, prefix"),
        (
            lambda: meshlib.HeaderMatch(regex="(("),
            r"HeaderMatch\.regex: expected a regular expression .*'\(\('",
        ),
        (lambda: meshlib.HeaderMatch(prefix=3), r"HeaderMatch\.prefix: .*a string"),  # type: ignore[arg-type]
        (lambda: meshlib.HeaderMatch(present="yes"), r"HeaderMatch\.present"),  # type: ignore[arg-type]
        (lambda: meshlib.HeaderMatch(exact="a", invert=1), r"HeaderMatch\.invert"),  # type: ignore[arg-type]
        (lambda: meshlib.HeaderMatch(contains="a"), r"unknown setting 'contains'"),  # type: ignore[call-arg]
        (lambda: meshlib.Route(to="b", headers={"x": 3}), r"Route\.headers: .*HeaderMatch"),  # type: ignore[dict-item]
    ],
)
def test_bad_header_matchers_are_config_errors(build: Callable[[], object], message: str) -> None:
    with pytest.raises(meshlib.ConfigError, match=message):
        build()


def test_the_policy_file_writes_a_header_matcher_as_a_table() -> None:
    config = parse_config(
        """
[destinations."orders.internal"]
[[destinations."orders.internal".routes]]
to = "b.internal"
headers = { x-canary = "1", x-user = { prefix = "beta-", invert = true } }
""",
        "mesh.toml",
    )
    routes = config.destinations["orders.internal"].routes
    assert routes is not None
    assert routes[0].headers == (
        ("x-canary", "1"),
        ("x-user", meshlib.HeaderMatch(prefix="beta-", invert=True)),
    )
    with pytest.raises(meshlib.ConfigError, match=r"mesh\.toml: .*routes\[0\].*HeaderMatch"):
        parse_config(
            '[destinations."o.internal"]\nroutes = [{ to = "b.internal", '
            'headers = { x = { prefix = "a", suffix = "b" } } }]\n',
            "mesh.toml",
        )


# c. Clusters


def _cluster(*addresses: str, **layers: object) -> meshlib.Policy:
    return PLAIN.replace(endpoints=meshlib.Endpoints(list(addresses)), **layers)


def test_a_route_to_a_cluster_keeps_the_requests_url_and_host() -> None:
    seen = Seen()
    mesh = _routed(
        meshlib.Route(to="orders-v2", path="/v2/"),
        **{"orders-v2": _cluster("10.0.2.1:8080", "10.0.2.2:8080")},
    )
    with _client(mesh, seen) as client:
        v2 = client.get("http://orders.internal/v2/items")
        v1 = client.get("http://orders.internal/v1/items")
    assert str(v2.url) == "http://orders.internal/v2/items"  # Envoy keeps the authority
    sent_v2, sent_v1 = seen.requests
    assert sent_v2.url.netloc.decode() in {"10.0.2.1:8080", "10.0.2.2:8080"}
    assert sent_v2.headers["host"] == "orders.internal"
    assert (sent_v1.url.host, sent_v1.headers["host"]) == ("orders.internal", "orders.internal")
    assert str(v1.url) == "http://orders.internal/v1/items"


def test_a_clusters_state_is_its_own_and_shared_by_every_route_to_it() -> None:
    seen = Seen(503)
    breaking = meshlib.Breaker(consecutive=3, open_for=60)
    orders = meshlib.Policy(retry=None, routes=(meshlib.Route(to="backend"),))
    mesh = meshlib.Mesh(
        default=meshlib.Policy(retry=None, breaker=None),
        destinations={"orders.internal": orders, "orders.example": orders},
        clusters={"backend": _cluster("10.0.0.1:80", breaker=breaking)},
    )
    with _client(mesh, seen) as client:
        client.get("http://orders.internal/")
        client.get("http://orders.example/")
        client.get("http://orders.internal/")  # the third failure of the one breaker
        with pytest.raises(meshlib.CircuitOpen, match="backend"):
            client.get("http://orders.example/")
    states = {b.destination: b.state for b in mesh.breakers()}
    assert states["backend"] == "open"
    assert states["http://orders.internal:80"] == "closed"  # never called: the cluster was
    assert list(mesh.endpoints()) == ["backend"]


def test_a_cluster_takes_its_own_policy_and_log_lines_name_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen = Seen(503)
    mesh = _routed(
        meshlib.Route(to="backend"),
        backend=_cluster("10.0.0.1:80", retry=meshlib.Retry(attempts=3, budget=None)),
    )
    with caplog.at_level(logging.INFO, logger="meshlib"), _client(mesh, seen) as client:
        client.get("http://orders.internal/")
    assert len(seen.requests) == 3  # the cluster's retries; orders.internal has none
    retries = [r for r in caplog.records if getattr(r, "meshlib_event", "") == "retry"]
    assert [r.meshlib_destination for r in retries] == ["backend", "backend"]  # type: ignore[attr-defined]


def test_spans_and_metrics_name_the_cluster() -> None:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    tracing = meshlib.Tracing(tracer_provider=tracer_provider, meter_provider=meter_provider)
    mesh = meshlib.Mesh(
        default=PLAIN.replace(tracing=tracing),
        destinations={"orders.internal": PLAIN.replace(routes=(meshlib.Route(to="backend"),))},
        clusters={"backend": _cluster("10.0.0.1:80", tracing=tracing)},
    )
    with _client(mesh, Seen()) as client:
        client.get("http://orders.internal/items")
    (span,) = exporter.get_finished_spans()
    assert span.attributes is not None
    assert span.attributes["meshlib.cluster"] == "backend"
    assert span.attributes["server.address"] == "orders.internal"  # the caller's view
    assert span.attributes["url.full"] == "http://orders.internal/items"
    data = reader.get_metrics_data()
    assert data is not None
    points = [
        point
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == "http.client.request.duration"
        for point in metric.data.data_points
    ]
    assert [dict(p.attributes or {})["meshlib.cluster"] for p in points] == ["backend"]
    tracer_provider.shutdown()
    meter_provider.shutdown()


def test_a_name_that_is_no_cluster_is_a_host_as_before() -> None:
    seen = Seen()
    mesh = _routed(meshlib.Route(to="orders-v2.internal:8080"), backend=_cluster("10.0.0.1:80"))
    with _client(mesh, seen) as client:
        response = client.get("http://orders.internal/x")
    assert str(response.url) == "http://orders-v2.internal:8080/x"
    assert seen.requests[0].headers["host"] == "orders-v2.internal:8080"


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: meshlib.Mesh(clusters={"backend": PLAIN}),
            r"Mesh\.clusters\['backend'\]\.endpoints: a cluster is a set of endpoints",
        ),
        (
            lambda: meshlib.Mesh(
                clusters={
                    "backend": _cluster("10.0.0.1:80", routes=(meshlib.Route(to="x.internal"),))
                }
            ),
            r"Mesh\.clusters\['backend'\]\.routes: .*not routed again",
        ),
        (
            lambda: _routed(meshlib.Route(to="outbound|80||backend")),
            r"Mesh\.destinations\['orders\.internal'\]\.routes: names no cluster and is not a "
            r"host name: 'outbound\|80\|\|backend'",
        ),
        (
            lambda: meshlib.Mesh(clusters={" x ": _cluster("a:1")}),
            r"Mesh\.clusters: expected a cluster name",
        ),
        (
            lambda: meshlib.Mesh(clusters={"x": 3}),
            r"Mesh\.clusters\['x'\]: expected a meshlib\.Policy",
        ),  # type: ignore[dict-item]
    ],
)
def test_bad_clusters_are_config_errors(build: Callable[[], object], message: str) -> None:
    with pytest.raises(meshlib.ConfigError, match=message):
        build()


def test_cluster_names_may_be_istios() -> None:
    seen = Seen()
    name = "outbound|8080|v1|orders.default.svc.cluster.local"
    mesh = _routed(meshlib.Route(to=name), **{name: _cluster("10.0.0.7:8080")})
    with _client(mesh, seen) as client:
        client.get("http://orders.internal/")
    assert seen.hosts == {"10.0.0.7:8080": 1}
    assert list(mesh.endpoints()) == [name]


def test_the_policy_file_has_cluster_tables_merged_over_the_default() -> None:
    config = parse_config(
        """
[default]
retry = { attempts = 2 }
timeout = { total = 5 }

[destinations."orders.internal"]
routes = [{ to = "orders-v2", path = "/v2/" }]

[clusters."orders-v2"]
endpoints = { addresses = ["10.0.2.1:8080"] }
timeout = { total = 1 }
""",
        "mesh.toml",
    )
    cluster = config.clusters["orders-v2"]
    assert cluster.endpoints == meshlib.Endpoints(["10.0.2.1:8080"])
    assert cluster.retry == meshlib.Retry(attempts=2)  # from [default]
    assert cluster.timeout == meshlib.Timeout(total=1)  # its own
    mesh = meshlib.Mesh(config.default, config.destinations, clusters=config.clusters)
    assert mesh.clusters == config.clusters


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[clusters."orders-v2"]\ntimeout = { total = 1 }\n',
            r'mesh\.toml: clusters\."orders-v2"\.endpoints: a cluster is a set of endpoints',
        ),
        (
            '[destinations."orders.internal"]\nroutes = [{ to = "no|such" }]\n',
            r'mesh\.toml: destinations\."orders\.internal"\.routes: names no cluster and is not '
            r"a host name: 'no\|such'",
        ),
        ("clusters = 3\n", r"mesh\.toml: clusters: expected a table of cluster names"),
        (
            '[clusters."c"]\nendpoints = { addresses = ["a:1"] }\nretri = false\n',
            r'mesh\.toml: clusters\."c"\.retri: unknown layer',
        ),
    ],
)
def test_bad_clusters_in_the_file_name_the_file_and_the_field(text: str, message: str) -> None:
    with pytest.raises(meshlib.ConfigError, match=message):
        parse_config(text, "mesh.toml")


# d. Weighted clusters


def test_a_weighted_route_splits_by_relative_weight() -> None:
    seen = Seen()
    mesh = _routed(
        meshlib.Route(to={"orders-v1": 90, "orders-v2": 10}),
        **{"orders-v1": _cluster("10.0.1.1:8080"), "orders-v2": _cluster("10.0.2.1:8080")},
    )
    with _client(mesh, seen) as client:
        for _ in range(10_000):
            client.get("http://orders.internal/")
    assert abs(seen.hosts["10.0.2.1:8080"] / 10_000 - 0.10) <= 0.01
    assert seen.hosts["10.0.1.1:8080"] + seen.hosts["10.0.2.1:8080"] == 10_000
    assert {r.headers["host"] for r in seen.requests} == {"orders.internal"}


def test_a_weighted_route_applies_only_once_it_matches_and_may_name_hosts() -> None:
    seen = Seen()
    mesh = _routed(
        meshlib.Route(to={"a.internal": 1, "b.internal": 1}, headers={"x-split": "1"}),
    )
    with _client(mesh, seen) as client:
        for _ in range(200):
            client.get("http://orders.internal/", headers={"x-split": "1"})
        client.get("http://orders.internal/")
    assert seen.hosts["orders.internal"] == 1
    assert min(seen.hosts["a.internal"], seen.hosts["b.internal"]) >= 70


def test_sticky_keeps_a_caller_on_one_name_of_a_weighted_route() -> None:
    seen = Seen()
    route = meshlib.Route(to={"orders-v1": 70, "orders-v2": 30}, sticky="x-user-id")
    mesh = _routed(
        route, **{"orders-v1": _cluster("10.0.1.1:80"), "orders-v2": _cluster("10.0.2.1:80")}
    )
    sides: dict[int, set[str]] = collections.defaultdict(set)
    with _client(mesh, seen) as client:
        for user in range(300):
            for _ in range(3):
                client.get("http://orders.internal/", headers={"x-user-id": f"user-{user}"})
                sides[user].add(seen.requests[-1].url.host)
    assert all(len(hosts) == 1 for hosts in sides.values())
    share = sum("10.0.2.1" in hosts for hosts in sides.values()) / len(sides)
    assert 0.22 <= share <= 0.38


@pytest.mark.parametrize(
    ("to", "message"),
    [
        ({}, r"Route\.to: expected at least one name with its weight"),
        ({"a": 0}, r"Route\.to: expected positive weights"),
        ({"a": -1}, r"Route\.to: expected positive weights"),
        ({"a": True}, r"Route\.to: expected positive weights"),
        ({"a": "1"}, r"Route\.to: expected positive weights"),
        ({"a": float("inf")}, r"Route\.to: expected positive weights"),
        ({"a b": 1}, r"Route\.to: .*without spaces"),
        ({"a": 1, " a ": 2}, r"Route\.to: expected each name once"),
    ],
)
def test_bad_weighted_routes_are_config_errors(to: object, message: str) -> None:
    with pytest.raises(meshlib.ConfigError, match=message):
        meshlib.Route(to=to)  # type: ignore[arg-type]


def test_the_policy_file_writes_weighted_names_as_a_table() -> None:
    text = """
[destinations."orders.internal"]
routes = [{ to = { "orders-v1" = 90, "orders-v2" = 10 } }]

[clusters."orders-v1"]
endpoints = { addresses = ["10.0.1.1:80"] }

[clusters."orders-v2"]
endpoints = { addresses = ["10.0.2.1:80"] }
"""
    config = parse_config(text, "mesh.toml")
    routes = config.destinations["orders.internal"].routes
    assert routes == (meshlib.Route(to={"orders-v1": 90, "orders-v2": 10}),)
    # The status page writes it back the same way.
    from meshlib._snapshot import table_toml

    written = table_toml(config.default, config.destinations, config.clusters)
    again = parse_config(written, "again.toml")
    assert again == config


# meshlib explain


def test_explain_shows_path_header_and_weighted_routes_and_a_cluster(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "mesh.toml"
    path.write_text(
        """
[destinations."orders.internal"]
routes = [
  { to = "orders-v2", path = { regex = "^/v2/.*" }, headers = { x-user = { prefix = "beta-" } } },
  { to = { "orders-v1" = 90, "orders-v2" = 10 }, path = "/api/" },
  { to = "legacy.internal", path = { exact = "/old" }, weight = 0.5 },
]

[clusters."orders-v1"]
endpoints = { addresses = ["10.0.1.1:80"] }

[clusters."orders-v2"]
endpoints = { addresses = ["10.0.2.1:80"] }
timeout = { total = 2 }
"""
    )
    assert main(["explain", str(path), "orders.internal"]) == 0
    out = capsys.readouterr().out
    assert (
        "routes     path ~ ^/v2/.* x-user: beta-* -> orders-v2; path /api/* -> orders-v1 90%, "
        "orders-v2 10%; path /old 50% of those -> legacy.internal"
    ) in out
    assert main(["explain", str(path), "orders-v2"]) == 0
    out = capsys.readouterr().out
    assert 'orders-v2 -> clusters."orders-v2"' in out
    assert (
        "total 2s, no per-attempt bound; header x-envoy-expected-rq-timeout-ms  "
        '(from clusters."orders-v2")' in out
    )
    assert "endpoints  addresses 10.0.2.1:80" in out


def test_explain_takes_an_istio_cluster_name_and_refuses_other_non_hosts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = "outbound|8080|v1|orders.default.svc.cluster.local"
    path = tmp_path / "mesh.toml"
    path.write_text(f'[clusters."{name}"]\nendpoints = {{ addresses = ["10.0.1.1:80"] }}\n')
    assert main(["explain", str(path), name]) == 0
    assert f'{name} -> clusters."{name}"' in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["explain", str(path), "no|such"])
    assert "not a host name" in capsys.readouterr().err


# e. Endpoints that change without losing their state


def _write(path: Path, text: str) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


RELOADED = """
[default]
retry = false
breaker = {{ consecutive = 2, open_for = 60 }}

[destinations."orders.internal"]
routes = [{{ to = "backend", path = "/b/" }}]
endpoints = {{ addresses = {direct}, balance = "round_robin", ejection = {ejection} }}

[clusters."backend"]
endpoints = {{ addresses = {backend}, balance = "round_robin", ejection = {ejection} }}
"""


def _reloaded(direct: str, backend: str) -> str:
    ejection = "{ consecutive = 1, max_share = 1.0 }"
    return RELOADED.format(direct=direct, backend=backend, ejection=ejection)


def test_a_reload_keeps_the_pools_and_the_state_of_addresses_still_there(
    tmp_path: Path, clock: object
) -> None:
    path = tmp_path / "mesh.toml"
    _write(
        path,
        _reloaded(
            direct='["10.0.0.1:8080", "10.0.0.2:8080"]',
            backend='["10.9.0.1:8080", "10.9.0.2:8080"]',
        ),
    )
    mesh = meshlib.Mesh.from_file(path, interval=0.05)  # followed, polled every 50 ms
    failing = {"10.0.0.1:8080", "10.9.0.1:8080"}

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503 if request.url.netloc.decode() in failing else 200)

    with meshlib.wrap(httpx.Client(transport=httpx.MockTransport(handler)), mesh) as client:
        for _ in range(2):  # round robin: each endpoint once, the failing one is ejected
            client.get("http://orders.internal/a")
            client.get("http://orders.internal/b/")
        before = {label: {e.address: e for e in pool} for label, pool in mesh.endpoints().items()}
        assert before["http://orders.internal:80"]["10.0.0.1:8080"].ejected
        assert before["backend"]["10.9.0.1:8080"].ejected
        breakers = {b.destination: b for b in mesh.breakers()}
        assert breakers["http://orders.internal:80"].calls == 2

        # The addresses change: one stays, one goes, one comes.
        _write(
            path,
            _reloaded(
                direct='["10.0.0.1:8080", "10.0.0.3:8080"]',
                backend='["10.9.0.3:8080", "10.9.0.1:8080"]',
            ),
        )
        deadline = time.monotonic() + 30  # generous: only a failing run waits this long
        while "10.9.0.3:8080" not in mesh.clusters["backend"].endpoints.addresses:  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the file was not reloaded"
            time.sleep(0.01)
        client.get("http://orders.internal/a")
        client.get("http://orders.internal/b/")
        after = {label: {e.address: e for e in pool} for label, pool in mesh.endpoints().items()}
    assert set(after["http://orders.internal:80"]) == {"10.0.0.1:8080", "10.0.0.3:8080"}
    assert set(after["backend"]) == {"10.9.0.3:8080", "10.9.0.1:8080"}
    for label, address in (
        ("http://orders.internal:80", "10.0.0.1:8080"),
        ("backend", "10.9.0.1:8080"),
    ):
        kept = after[label][address]
        assert kept.ejected  # still out, for as long as before
        assert kept.ejections == 1
        assert kept.ejected_for == before[label][address].ejected_for
    # Only the new endpoint took the request: the ejected one stayed out.
    assert after["http://orders.internal:80"]["10.0.0.3:8080"].latency > 0
    assert after["backend"]["10.9.0.3:8080"].latency > 0
    # The breaker settings did not change: the same breakers, their counts kept.
    breakers = {b.destination: b for b in mesh.breakers()}
    assert breakers["http://orders.internal:80"].calls == 3
    assert breakers["backend"].calls == 3
    mesh.close()


# Retry.on_error: which transport errors are retried (Envoy's retry_on says so per route)


@pytest.mark.parametrize(
    ("on_error", "error", "attempts"),
    [
        ("all", httpx.ConnectError("refused"), 3),
        ("all", httpx.ReadError("reset"), 3),
        ("connect", httpx.ConnectError("refused"), 3),
        ("connect", httpx.ReadError("reset"), 1),
        ("connect", httpx.ReadTimeout("slow"), 1),
        ("none", httpx.ConnectError("refused"), 1),
    ],
)
def test_retry_on_error_narrows_the_transport_errors_retried(
    on_error: str, error: httpx.TransportError, attempts: int
) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        raise error

    retry = meshlib.Retry(attempts=3, budget=None, on_error=on_error)  # type: ignore[arg-type]
    policy = meshlib.Policy(retry=retry, breaker=None)
    with (
        meshlib.wrap(httpx.Client(transport=httpx.MockTransport(handler)), policy) as client,
        pytest.raises(type(error)),
    ):
        client.get("http://orders.internal/")
    assert calls == attempts


def test_retry_on_error_is_validated_and_read_from_the_file() -> None:
    with pytest.raises(meshlib.ConfigError, match=r"Retry\.on_error: expected one of"):
        meshlib.Retry(on_error="sometimes")  # type: ignore[arg-type]
    config = parse_config('[default]\nretry = { on_error = "connect" }\n', "mesh.toml")
    assert config.default.retry == meshlib.Retry(on_error="connect")
    with pytest.raises(meshlib.ConfigError, match=r"mesh\.toml: default\.retry\.on_error"):
        parse_config('[default]\nretry = { on_error = "never" }\n', "mesh.toml")
