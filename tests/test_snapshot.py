"""The status data: what a snapshot of a Mesh says, and what gathering it costs."""

from __future__ import annotations

import math
import pathlib
import time
from typing import Any

import httpx
import pytest

import meshlib
from meshlib._config import parse_config
from meshlib._sketch import BUCKETS, LatencySketch
from meshlib._snapshot import policy_toml, scrub, snapshot, table_toml
from meshlib.testing import FakeClock

GOOD = "http://good.internal/items"
BAD = "http://bad.internal/items"


def _client(mesh: meshlib.Mesh, clock: FakeClock, latency: float = 0.004) -> httpx.Client:
    def handler(request: httpx.Request) -> httpx.Response:
        clock.advance(latency)  # the upstream takes this long, on the fake clock
        return httpx.Response(503 if request.url.host == "bad.internal" else 200)

    return meshlib.wrap(httpx.Client(transport=httpx.MockTransport(handler)), mesh)


def _row(data: dict[str, object], name: str) -> dict[str, object]:
    rows = data["destinations"]
    assert isinstance(rows, list)
    return next(r for r in rows if r["name"] == name)


# --- the latency sketch ----------------------------------------------------------------


@pytest.mark.parametrize("seconds", [0.0001, 0.00123, 0.004, 0.05, 0.3, 2.5, 40.0])
def test_sketch_percentiles_are_within_an_eighth_of_the_truth(seconds: float) -> None:
    sketch = LatencySketch()
    for _ in range(10):
        sketch.add(seconds, 100.0)
    count, p50, p99 = sketch.summary(100.0)
    assert count == 10
    assert p50 is not None
    assert p99 is not None
    assert abs(p50 - seconds) <= seconds / 8
    assert p99 == p50


def test_sketch_ranks_p50_and_p99_apart() -> None:
    sketch = LatencySketch()
    for _ in range(98):
        sketch.add(0.010, 5.0)
    sketch.add(1.0, 5.0)
    sketch.add(1.0, 5.0)
    _, p50, p99 = sketch.summary(5.0)
    assert p50 is not None
    assert abs(p50 - 0.010) <= 0.010 / 8
    assert p99 is not None
    assert abs(p99 - 1.0) <= 1.0 / 8


def test_sketch_forgets_what_left_its_window_and_keeps_fixed_memory() -> None:
    sketch = LatencySketch(window=60.0)
    for second in range(0, 600, 2):  # ten minutes of traffic
        sketch.add(0.001 * (1 + second % 7), float(second))
    assert all(len(slot) == BUCKETS for slot in sketch._slots)
    count, _, _ = sketch.summary(599.0)
    assert count <= 35  # about the last minute's 30, give or take a step
    assert sketch.summary(599.0 + 61.0)[0] == 0
    assert sketch.summary(599.0 + 61.0)[1:] == (None, None)


def test_sketch_takes_outliers_at_both_ends() -> None:
    sketch = LatencySketch()
    sketch.add(0.0, 1.0)
    sketch.add(10_000.0, 1.0)
    count, p50, p99 = sketch.summary(1.0)
    assert count == 2
    assert p50 is not None
    assert p50 < 0.0001
    assert p99 is not None
    assert p99 >= 128.0


# --- a snapshot ------------------------------------------------------------------------


def test_a_mesh_nobody_watches_measures_no_latency(clock: FakeClock) -> None:
    mesh = meshlib.Mesh()
    _client(mesh, clock).get(GOOD)
    assert all(plan.sketch is None for plan in mesh._cached_plans())
    assert _row(snapshot(mesh), "http://good.internal:80")["latency"] is None


def test_snapshot_reports_each_layer_and_lists_the_failing_first(clock: FakeClock) -> None:
    mesh = meshlib.Mesh(
        destinations={
            "bad.internal": meshlib.Policy(
                retry=None, breaker=meshlib.Breaker(consecutive=3, open_for=5.0)
            )
        }
    )
    mesh._measure_latency()
    client = _client(mesh, clock)
    for _ in range(10):
        assert client.get(GOOD).status_code == 200
    for _ in range(3):
        assert client.get(BAD).status_code == 503
    with pytest.raises(meshlib.CircuitOpen):
        client.get(BAD)
    clock.advance(2.0)

    data = snapshot(mesh)
    assert data["version"] == 1
    assert [d["name"] for d in data["destinations"]] == [
        "http://bad.internal:80",
        "http://good.internal:80",
    ]
    bad, good = data["destinations"]
    assert bad["status"] == "failing"
    assert "breaker open" in bad["reason"]
    assert bad["policy"] == {"from": "pattern", "pattern": "bad.internal", "source": None,
                             "version": None}  # fmt: skip
    assert bad["breaker"]["state"] == "open"
    assert bad["breaker"]["since"] == pytest.approx(2.0, abs=0.01)
    assert bad["breaker"]["retry_after"] == pytest.approx(3.0, abs=0.01)
    assert bad["breaker"]["failures"] == 3
    assert bad["budget"] is None  # retry off: no budget
    assert bad["success_rate"] == 0.0

    assert good["status"] == "healthy"
    assert good["policy"]["from"] == "default"
    assert good["breaker"] | {"since": 0} == {
        "state": "closed",
        "since": 0,
        "changed_at": good["breaker"]["changed_at"],
        "window": 30.0,
        "calls": 10,
        "successes": 10,
        "failures": 0,
        "retry_after": 0.0,
        "trips": 0,
    }
    assert good["budget"] == {
        "window": 10.0,
        "requests": 10,
        "retries": 0,
        "requests_per_second": 1.0,
        "retries_per_second": 0.0,
        "left": 102,  # 20% of 10 calls + 10/s over 10 s
    }
    assert good["requests_per_second"] == 1.0
    assert good["success_rate"] == 1.0
    assert good["bulkhead"] == {"in_flight": 0, "queued": 0, "max_concurrent": 1000,
                                "max_queued": 0}  # fmt: skip
    assert good["latency"]["count"] == 10
    assert good["latency"]["p50"] == pytest.approx(0.004, rel=0.125)
    assert good["latency"]["p99"] == pytest.approx(0.004, rel=0.125)


def test_retries_and_the_budget_left_are_counted(clock: FakeClock, no_waits: None) -> None:
    mesh = meshlib.Mesh(
        default=meshlib.Policy(
            retry=meshlib.Retry(
                attempts=3, budget=meshlib.Budget(ratio=0.1, min_per_second=0.2, ttl=10.0)
            )
        )
    )
    client = _client(mesh, clock)
    for _ in range(3):
        client.get(BAD)
    budget = _row(snapshot(mesh), "http://bad.internal:80")["budget"]
    assert isinstance(budget, dict)
    # 3 calls: 0.1 × 3 + 0.2 × 10 = 2.3 retries allowed, so 2 taken, then none left.
    assert budget["requests"] == 3
    assert budget["retries"] == 2
    assert budget["left"] == 0
    assert budget["retries_per_second"] == 0.2
    row = _row(snapshot(mesh), "http://bad.internal:80")
    assert "retry budget spent" in str(row["reason"])


def test_endpoints_show_their_ejection_and_the_time_left(clock: FakeClock) -> None:
    mesh = meshlib.Mesh(
        destinations={
            "orders.internal": meshlib.Policy(
                retry=None,
                endpoints=meshlib.Endpoints(
                    ["10.0.0.1:80", "10.0.0.2:80"],
                    balance="round_robin",
                    ejection=meshlib.Ejection(consecutive=1, base=30.0),
                ),
            )
        }
    )

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503 if request.url.host == "10.0.0.1" else 200)

    client = meshlib.wrap(httpx.Client(transport=httpx.MockTransport(handler)), mesh)
    for _ in range(2):
        client.get("http://orders.internal/")
    clock.advance(10.0)
    row = _row(snapshot(mesh), "http://orders.internal:80")
    endpoints = row["endpoints"]
    assert isinstance(endpoints, list)
    assert all(e.pop("latency") >= 0 for e in endpoints)  # measured by perf_counter
    assert endpoints == [
        {"address": "10.0.0.1:80", "state": "ejected", "ejected_for": 20.0, "ejections": 1,
         "in_flight": 0, "failures_in_a_row": 0, "weight": 1.0},
        {"address": "10.0.0.2:80", "state": "in use", "ejected_for": 0.0, "ejections": 0,
         "in_flight": 0, "failures_in_a_row": 0, "weight": 1.0},
    ]  # fmt: skip
    assert row["status"] == "degraded"
    assert "1 of 2 endpoints ejected" in str(row["reason"])


def test_endpoints_show_their_weights(clock: FakeClock) -> None:
    weighted = meshlib.Endpoints({"10.0.0.1:80": 3, "10.0.0.2:80": 1}, balance="round_robin")
    mesh = meshlib.Mesh(destinations={"orders.internal": meshlib.Policy(endpoints=weighted)})
    client = meshlib.wrap(
        httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(200))), mesh
    )
    client.get("http://orders.internal/")
    assert [(e.address, e.weight) for e in mesh.endpoints()["http://orders.internal:80"]] == [
        ("10.0.0.1:80", 3.0),
        ("10.0.0.2:80", 1.0),
    ]
    row = _row(snapshot(mesh), "http://orders.internal:80")
    assert [e["weight"] for e in row["endpoints"]] == [3.0, 1.0]


def test_a_clients_own_policy_is_named_as_such(clock: FakeClock) -> None:
    transport = httpx.MockTransport(lambda r: httpx.Response(200))
    client = meshlib.wrap(
        httpx.Client(transport=transport), meshlib.STANDARD.replace(bulkhead=None)
    )
    client.get(GOOD)
    row = _row(snapshot(meshlib.default_mesh()), "http://good.internal:80")
    assert row["policy"]["from"] == "client"
    assert row["bulkhead"] is None
    assert row["effective"].startswith("# the client's own policy")


def test_a_resilient_function_has_a_row(clock: FakeClock) -> None:
    @meshlib.resilient(on=ValueError, key="charge")
    def charge() -> int:
        return 1

    assert charge() == 1
    row = _row(snapshot(meshlib.default_mesh()), "charge")
    assert row["kind"] == "function"
    assert row["breaker"]["calls"] == 1


def test_an_idle_destination_is_listed_last(clock: FakeClock) -> None:
    mesh = meshlib.Mesh()
    client = _client(mesh, clock)
    client.get(GOOD)
    client.get("http://idle.internal/")
    clock.advance(40.0)  # past the breaker's and the budget's windows
    client.get(GOOD)
    statuses = [(d["name"], d["status"]) for d in snapshot(mesh)["destinations"]]
    assert statuses == [("http://good.internal:80", "healthy"), ("http://idle.internal:80", "idle")]


def test_the_file_source_reports_its_version_reload_and_last_refusal(
    tmp_path: pathlib.Path,
) -> None:
    path = tmp_path / "mesh.toml"
    path.write_text('[destinations."orders.internal"]\nretry = { attempts = 2 }\n')
    mesh = meshlib.Mesh.from_file(path, interval=0.01)
    try:
        first = snapshot(mesh)["source"]
        assert first is not None
        assert first["kind"] == "file"
        assert first["location"] == str(path)
        assert first["last_refusal"] is None
        assert first["failing"] is False
        path.write_text('[destinations."orders.internal"]\nretry = { attempts = 0 }\n')
        source = _wait(lambda: snapshot(mesh)["source"], lambda s: s["last_refusal"])
        assert "attempts" in source["last_refusal"]["reason"]
        assert source["failing"] is True
        assert source["version"] == first["version"]  # the last good version stays
        path.write_text('[destinations."orders.internal"]\nretry = { attempts = 4 }\n')
        source = _wait(lambda: snapshot(mesh)["source"], lambda s: not s["failing"])
        assert source["version"] != first["version"]
        assert source["last_refusal"] is not None  # history: the last refusal stays shown
        assert mesh.policy_for("orders.internal").retry.attempts == 4  # type: ignore[union-attr]
    finally:
        mesh.close()


def _wait(read: Any, done: Any) -> Any:
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        value = read()
        if done(value):
            return value
        time.sleep(0.01)
    raise AssertionError(f"not reached: {read()!r}")


# --- redaction and the effective policy -----------------------------------------------


def test_scrub_redacts_tokens_and_credentials_in_urls() -> None:
    text = scrub("cannot fetch https://user:pw@config.internal/mesh.toml?token=S3CRET&v=1: boom")
    assert "S3CRET" not in text
    assert "pw@" not in text
    assert "token=REDACTED" in text
    assert "v=1" in text


def test_the_effective_policy_reads_back_as_the_same_policy() -> None:
    policy = meshlib.Policy(
        retry=meshlib.Retry(attempts=2, backoff=meshlib.Backoff(base=0.1)),
        breaker=meshlib.Breaker(open_for=0.2, consecutive=3),
        bulkhead=None,
        endpoints=meshlib.Endpoints(["10.0.0.1:80", "10.0.0.2:80"]),
        routes=(meshlib.Route(to="v2.internal", weight=0.1, sticky="x-user"),),
        hedge=meshlib.Hedge(delay="p95"),
        faults=meshlib.Faults(abort=0.1),
        fallback=meshlib.Fallback(
            stale=60,
            status=503,
            headers={"content-type": "text/plain"},
            content="later",
            on=frozenset({"error", "status"}),
        ),
    )
    text = table_toml(meshlib.STANDARD, {"orders.internal": policy})
    config = parse_config(text.encode(), "status.toml")
    assert config.default == meshlib.STANDARD
    assert config.destinations["orders.internal"] == policy
    assert 'breaker = { open_for = "200ms", consecutive = 3 }' in text
    assert "bulkhead = false" in text
    assert (
        'fallback = { stale = "1m", status = 503, headers = { content-type = "text/plain" },'
        ' content = "later", on = ["error", "status"] }' in text
    )


def test_the_effective_policy_never_writes_an_authorization_value() -> None:
    policy = meshlib.Policy(
        routes=(meshlib.Route(to="v2.internal", headers={"Authorization": "Bearer S3CRET"}),)
    )
    text = policy_toml(policy, "orders.internal")
    assert "S3CRET" not in text
    assert 'authorization = "REDACTED"' in text
    assert math.isfinite(len(text))


def test_breaker_since_counts_from_its_last_change(clock: FakeClock) -> None:
    breaker = meshlib.Mesh(
        default=meshlib.Policy(breaker=meshlib.Breaker(consecutive=1, open_for=5.0))
    )
    client = _client(breaker, clock, latency=0.0)
    assert client.get(GOOD).status_code == 200  # makes the breaker
    clock.advance(7.0)
    (plan,) = breaker._cached_plans()
    assert plan.breaker is not None
    assert plan.breaker.snapshot(clock.now()).since == 7.0  # closed since it was made
    plan.breaker.record(0, True, clock.now())  # trips
    clock.advance(6.0)
    assert plan.breaker.snapshot(clock.now()).since == 6.0
    assert client.get(GOOD).status_code == 200  # a probe, after open_for: closes it
    clock.advance(2.0)
    snap = plan.breaker.snapshot(clock.now())
    assert (snap.state, snap.since) == ("closed", 2.0)


def test_a_cluster_has_a_row_with_its_own_policy(clock: FakeClock) -> None:
    cluster = meshlib.Policy(
        endpoints=meshlib.Endpoints(["10.0.0.1:80"]), timeout=meshlib.Timeout(total=2.0)
    )
    mesh = meshlib.Mesh(
        destinations={"good.internal": meshlib.Policy(routes=(meshlib.Route(to="backend"),))},
        clusters={"backend": cluster},
    )
    with _client(mesh, clock) as client:
        client.get(GOOD)
    row = _row(snapshot(mesh), "backend")
    assert row["kind"] == "cluster"
    assert row["policy"] == {
        "from": "cluster",
        "pattern": "backend",
        "source": None,
        "version": None,
    }
    effective = row["effective"]
    assert isinstance(effective, str)
    assert effective.startswith('[clusters."backend"]')
    assert parse_config(effective, "row.toml").clusters["backend"] == cluster
    endpoints = row["endpoints"]
    assert isinstance(endpoints, list)
    assert [e["address"] for e in endpoints] == ["10.0.0.1:80"]
