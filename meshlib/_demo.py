"""`meshlib demo`: a flaky upstream on 127.0.0.1 and what the mesh did about it."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from ._client import wrap
from ._deadline import deadline
from ._errors import MeshError
from ._faultserver import Behaviour, FaultServer, Hang, Reset, Respond
from ._policy import Backoff, Policy, Retry, Timeout

__all__ = ["run_demo"]

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


def run_demo(out: Callable[[str], object] = print) -> int:
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
    finally:
        logger.removeHandler(collector)
        logger.setLevel(previous_level)
    total = time.monotonic() - started
    ok = sum(1 for outcome, _ in results if outcome == "200")
    sent = sum(s for _, s in results)
    out(
        f"\nsummary: {len(results)} calls, {ok} answered 200, {sent} requests sent, "
        f"{sent - len(results)} retries, {total:.1f} s"
    )
    return 1 if unexpected else 0


def _call(client: httpx.Client, scenario: Scenario) -> str:
    response = client.request(scenario.method, "/orders", headers=scenario.headers, content=b"")
    return str(response.status_code)
