"""`meshlib demo`: a flaky upstream on 127.0.0.1 and what the mesh did about it.

Retries and deadlines first, one call per scenario, then the layers that need
several calls to show: the breaker opening and recovering, the bulkhead refusing,
a canary split, a hedge beating a slow answer, and a fallback answering for an
upstream that is down. Every scenario checks its own
outcome; the command exits 1 if any ends otherwise. Each uses its own `Mesh`, so
no scenario's state leaks into the next.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from ._client import wrap
from ._deadline import deadline
from ._errors import MeshError
from ._explain import plural
from ._mesh import Mesh
from ._policy import Backoff, Breaker, Bulkhead, Fallback, Hedge, Policy, Retry, Route, Timeout
from .testing import use_random
from .testing.faults import Behaviour, FaultServer, Hang, Reset, Respond

__all__ = ["run_demo"]

Out = Callable[[str], object]

# Short waits so the whole demo takes a few seconds, not the STANDARD 30 s budget.
DEMO_POLICY = Policy(
    retry=Retry(attempts=3, backoff=Backoff(base=0.05, cap=0.4, jitter="full")),
    timeout=Timeout(total=5.0, attempt=0.3),
)


@dataclass(frozen=True)
class Scenario:
    title: str
    faults: tuple[Behaviour, ...]
    expect: str = "200"
    method: str = "GET"
    headers: dict[str, str] = field(default_factory=dict)
    deadline: float | None = None


SCENARIOS = (
    Scenario("healthy upstream", ()),
    Scenario("a burst of two 503s", (Respond(503), Respond(503))),
    Scenario("connection reset by peer", (Reset(),)),
    Scenario("503 with Retry-After: 1", (Respond(503, headers={"Retry-After": "1"}),)),
    Scenario("hung upstream, cut by the 0.3 s attempt timeout", (Hang(5.0),)),
    Scenario("POST is not idempotent: not retried", (Respond(503),), expect="503", method="POST"),
    Scenario(
        "POST with an Idempotency-Key: retried",
        (Respond(503),),
        method="POST",
        headers={"Idempotency-Key": "order-42"},
    ),
    Scenario("upstream down: attempts run out", (Respond(503),) * 3, expect="503"),
    Scenario(
        "inside meshlib.deadline(0.5): hung upstream",
        (Hang(5.0),) * 3,
        expect="DeadlineExceeded",
        deadline=0.5,
    ),
)


class _Collector(logging.Handler):
    """Keep meshlib's retry records so each call can say what the mesh did."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _describe(records: list[logging.LogRecord], outcome: str) -> str:
    steps = []
    for record in records:
        event = getattr(record, "meshlib_event", "")
        cause = getattr(record, "meshlib_cause", "")
        reason = str(getattr(record, "meshlib_reason", "")).replace("_", " ")
        if event == "retry":
            steps.append(f"{cause} -> wait {getattr(record, 'meshlib_wait', 0.0) * 1000:.0f} ms")
        elif event == "give_up":
            steps.append(f"{cause} -> give up ({reason})")
        elif event == "rejected":
            steps.append(f"stopped: {reason}")
    if steps:
        return "; ".join(steps)
    return "answered on the first attempt" if outcome == "200" else f"{outcome} is not retried"


def run_demo(out: Out = print) -> int:
    """Run every scenario against a local flaky upstream and print what happened.

    Returns:
        0 when every scenario ended as the mesh promises, else 1.
    """
    logger = logging.getLogger("meshlib")
    collector = _Collector()
    logger.addHandler(collector)
    previous_level = logger.level
    logger.setLevel(logging.INFO)
    results: list[tuple[str, int]] = []
    failed: list[str] = []
    unexpected = 0
    started = time.monotonic()
    try:
        with FaultServer() as server, httpx.Client(base_url=server.url) as raw:
            client = wrap(raw, DEMO_POLICY)
            out(f"flaky upstream on {server.url}; policy: 3 attempts, 0.3 s per attempt\n")
            for number, scenario in enumerate(SCENARIOS, 1):
                server.enqueue(*scenario.faults)
                sent_before = server.request_count
                collector.records.clear()
                call_started = time.monotonic()
                try:
                    if scenario.deadline is not None:
                        with deadline(scenario.deadline):
                            outcome = _call(client, scenario)
                    else:
                        outcome = _call(client, scenario)
                except (httpx.HTTPError, MeshError) as exc:
                    outcome = type(exc).__name__
                elapsed = time.monotonic() - call_started
                sent = server.request_count - sent_before
                results.append((outcome, sent))
                unexpected += outcome != scenario.expect
                mark = (
                    "" if outcome == scenario.expect else f"  UNEXPECTED: wanted {scenario.expect}"
                )
                out(f"{number}. {scenario.title}")
                ms = elapsed * 1000
                out(f"   {scenario.method} -> {outcome} | {sent} sent | {ms:.0f} ms{mark}")
                out(f"   mesh: {_describe(collector.records, outcome)}")
        for number, (title, show) in enumerate(_MORE, len(SCENARIOS) + 1):
            out(f"{number}. {title}")
            with FaultServer() as server:  # a fresh upstream: nothing queued, no state
                if not show(server, out):
                    failed.append(title.split(":")[0])
    finally:
        logger.removeHandler(collector)
        logger.setLevel(previous_level)
    total = time.monotonic() - started
    ok = sum(1 for outcome, _ in results if outcome == "200")
    sent = sum(s for _, s in results)
    more = ", ".join(title.split(":")[0] for title, _ in _MORE)
    layers = f"UNEXPECTED: {', '.join(failed)}" if failed else f"{more} as promised"
    out(
        f"\nsummary: {plural(len(results), 'call')}, {ok} answered 200, "
        f"{plural(sent, 'request')} sent, {plural(sent - len(results), 'retry', 'retries')}; "
        f"{layers}; {total:.1f} s"
    )
    return 1 if unexpected or failed else 0


def _call(client: httpx.Client, scenario: Scenario) -> str:
    response = client.request(scenario.method, "/orders", headers=scenario.headers, content=b"")
    return str(response.status_code)


def _get(client: httpx.Client, url: str = "/orders") -> str:
    """GET `url`; the status code, or the name of the error that ended the call."""
    try:
        return str(client.get(url).status_code)
    except (httpx.HTTPError, MeshError) as exc:
        return type(exc).__name__


def _verdict(ok: bool, wanted: str) -> str:
    return "" if ok else f"  UNEXPECTED: wanted {wanted}"


OPEN_FOR = 0.5  # long enough that a loaded machine still sees the breaker open


def _breaker(server: FaultServer, out: Out) -> bool:
    """Three 503s in a row open the breaker; the next call fails fast; a probe closes it."""
    policy = Policy(retry=None, breaker=Breaker(consecutive=3, open_for=OPEN_FOR))
    mesh = Mesh(policy)
    moves: list[str] = []
    mesh.on_breaker_change(lambda _destination, old, new: moves.append(new))
    with wrap(httpx.Client(base_url=server.url), mesh) as client:
        server.enqueue(*(Respond(503),) * 3)
        tripped = [_get(client) for _ in range(3)]
        sent_before = server.request_count
        started = time.monotonic()
        fast = _get(client)
        fast_ms = (time.monotonic() - started) * 1000
        refused_sent = server.request_count - sent_before
        time.sleep(OPEN_FOR * 1.25)
        probe = _get(client)
    ok = (
        tripped == ["503"] * 3
        and (fast, refused_sent, probe) == ("CircuitOpen", 0, "200")
        and moves == ["open", "half_open", "closed"]
    )
    out(
        f"   GET x3 -> {', '.join(tripped)}; next GET -> {fast} | {refused_sent} sent"
        f" | {fast_ms:.2f} ms{_verdict(ok, 'CircuitOpen, then 200')}"
    )
    out(
        f"   after {OPEN_FOR} s: GET -> {probe} (the probe)"
        f" | breaker: closed -> {' -> '.join(moves)}"
    )
    return ok


def _bulkhead(server: FaultServer, out: Out) -> bool:
    """Two slow calls hold both slots; a third is refused at once, without being sent."""
    policy = Policy(retry=None, breaker=None, bulkhead=Bulkhead(max_concurrent=2))
    held: list[str] = []
    with wrap(httpx.Client(base_url=server.url), Mesh(policy)) as client:
        sent_before = server.request_count
        # Slow enough that both still hold their slots when the third call comes.
        server.enqueue(Respond(200, delay=0.5), Respond(200, delay=0.5))
        threads = [threading.Thread(target=lambda: held.append(_get(client))) for _ in range(2)]
        for thread in threads:
            thread.start()
        waited = time.monotonic() + 5.0
        while server.request_count - sent_before < 2 and time.monotonic() < waited:
            time.sleep(0.005)  # until both slow calls have reached the upstream
        in_flight = server.request_count - sent_before
        started = time.monotonic()
        refused = _get(client)
        refused_ms = (time.monotonic() - started) * 1000
        for thread in threads:
            thread.join()
    sent = server.request_count - sent_before
    ok = in_flight == 2 and refused == "BulkheadFull" and sent == 2 and held == ["200"] * 2
    out(
        f"   2 slow GETs hold both slots; a third GET -> {refused} | {sent - in_flight} sent"
        f" | {refused_ms:.2f} ms{_verdict(ok, 'BulkheadFull')}"
    )
    out(f"   the two in flight -> {', '.join(held)}")
    return ok


CANARY_WEIGHT = 0.1
CANARY_CALLS = 200


def _canary(server: FaultServer, out: Out) -> bool:
    """A weighted Route sends a tenth of the calls to a second server."""
    with FaultServer() as canary:
        stable = f"127.0.0.1:{server.port}"
        route = Route(to=f"127.0.0.1:{canary.port}", weight=CANARY_WEIGHT)
        mesh = Mesh(destinations={stable: Policy(routes=(route,))})
        stable_before = server.request_count
        # Seeded draws: the same split on every run, so the demo cannot fail by chance.
        with wrap(httpx.Client(), mesh) as client, use_random(random.Random(13)):
            outcomes = {_get(client, f"http://{stable}/orders") for _ in range(CANARY_CALLS)}
        to_canary = canary.request_count
        to_stable = server.request_count - stable_before
    share = to_canary / CANARY_CALLS
    ok = (
        outcomes == {"200"}
        and to_stable + to_canary == CANARY_CALLS
        and abs(share - CANARY_WEIGHT) <= 0.05
    )
    out(
        f"   {CANARY_CALLS} GETs to :{server.port}; Route(weight={CANARY_WEIGHT}) to a canary"
        f" on :{canary.port}{_verdict(ok, f'about {CANARY_WEIGHT:.0%} to the canary')}"
    )
    out(f"   stable {to_stable}, canary {to_canary} ({share:.1%})")
    return ok


HEDGE_DELAY = 0.05


def _hedge(server: FaultServer, out: Out) -> bool:
    """The first copy meets a slow answer; a hedged copy sent after the delay wins."""
    policy = Policy(hedge=Hedge(delay=HEDGE_DELAY))
    with wrap(httpx.Client(base_url=server.url), Mesh(policy)) as client:
        server.enqueue(Respond(200, b"first copy", delay=2.0), Respond(200, b"hedged copy"))
        started = time.monotonic()
        try:
            response = client.get("/search")
            outcome, answer = str(response.status_code), response.text
        except (httpx.HTTPError, MeshError) as exc:
            outcome, answer = type(exc).__name__, ""
        elapsed = time.monotonic() - started
        sent = server.request_count
    ok = (outcome, answer, sent) == ("200", "hedged copy", 2)
    out(
        f"   GET -> {outcome} from the {answer or 'no copy'} | {sent} sent"
        f" | {elapsed * 1000:.0f} ms"
        f"{_verdict(ok, '200 from the hedged copy')}"
    )
    out(
        f"   mesh: no answer after {HEDGE_DELAY * 1000:.0f} ms -> a second copy went out"
        " and answered first"
    )
    return ok


def _fallback(server: FaultServer, out: Out) -> bool:
    """The upstream goes down: the last good answer to the same request is served, stale."""
    policy = Policy(retry=None, fallback=Fallback(stale=600))
    with wrap(httpx.Client(base_url=server.url), Mesh(policy)) as client:
        server.enqueue(Respond(200, b'["tea pot", "mug"]'))
        fresh = client.get("/products/42/also-bought")
        server.default = Reset()  # down from now on
        sent_before = server.request_count
        try:
            answer = client.get("/products/42/also-bought")
            outcome, served = str(answer.status_code), answer.text
            mark = answer.headers.get("x-meshlib-fallback", "none")
        except (httpx.HTTPError, MeshError) as exc:
            outcome, served, mark = type(exc).__name__, "nothing", "none"
        sent = server.request_count - sent_before
    ok = (fresh.status_code, outcome, served, mark) == (200, "200", fresh.text, "stale")
    out(
        f"   upstream down: GET -> {outcome} with the last good answer {served}"
        f" (x-meshlib-fallback: {mark}) | {sent} sent{_verdict(ok, 'the stale copy')}"
    )
    return ok


_MORE: tuple[tuple[str, Callable[[FaultServer, Out], bool]], ...] = (
    (f"breaker: opens after three 503s in a row, fails fast, probes after {OPEN_FOR} s", _breaker),
    ("bulkhead: at most 2 calls in flight, no queue", _bulkhead),
    (f"canary: {CANARY_WEIGHT:.0%} of calls to a second server", _canary),
    (f"hedge: a second copy after {HEDGE_DELAY * 1000:.0f} ms, against a 2 s answer", _hedge),
    ("fallback: stale-if-error, the last good answer while the upstream is down", _fallback),
)
