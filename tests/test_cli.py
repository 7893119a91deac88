"""The `meshlib` command line."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from meshlib import _demo
from meshlib._cli import main

pytestmark = pytest.mark.network


@pytest.fixture(scope="module")
def demo() -> str:
    """Run the demo once for the tests that read its output; it must exit 0."""
    lines: list[str] = []
    assert _demo.run_demo(lines.append) == 0
    return "\n".join(lines)


def test_demo_runs_every_scenario_as_promised(demo: str) -> None:
    out = demo
    assert "UNEXPECTED" not in out
    assert "503 -> wait" in out  # a retried burst shows its waits
    assert "POST -> 503 | 1 sent" in out  # a non-idempotent call is not resent
    assert "-> DeadlineExceeded" in out
    assert "summary: 9 calls, 6 answered 200" in out


def test_demo_shows_breaker_bulkhead_canary_and_hedge(demo: str) -> None:
    out = demo
    # The breaker opens, refuses without sending, and a probe closes it again.
    assert "GET x3 -> 503, 503, 503; next GET -> CircuitOpen | 0 sent | " in out
    assert "GET -> 200 (the probe) | breaker: closed -> open -> half_open -> closed" in out
    # The bulkhead refuses a third call while two hold its slots.
    assert "a third GET -> BulkheadFull | 0 sent | " in out
    assert "the two in flight -> 200, 200" in out
    # A 10% Route sends about a tenth of 200 calls to the canary server.
    split = re.search(r"stable (\d+), canary (\d+) \(", out)
    assert split is not None
    stable, canary = int(split[1]), int(split[2])
    assert stable + canary == 200
    assert 10 <= canary <= 30
    # The hedged copy answers while the first copy waits on a 2 s answer.
    assert "GET -> 200 from the hedged copy | 2 sent | " in out
    # The upstream is down: the last good answer is served, marked stale.
    assert (
        'upstream down: GET -> 200 with the last good answer ["tea pot", "mug"]'
        " (x-meshlib-fallback: stale) | 1 sent" in out
    )
    assert "; breaker, bulkhead, canary, hedge, fallback as promised; " in out
    assert "UNEXPECTED" not in out


def test_demo_exits_1_when_a_scenario_ends_unexpectedly(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(_demo, "SCENARIOS", ())
    monkeypatch.setattr(_demo, "_MORE", (("breaker: broken", lambda server, out: False),))
    assert main(["demo"]) == 1
    assert "; UNEXPECTED: breaker; " in capsys.readouterr().out


def test_the_demo_command_prints_the_demo(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(_demo, "_MORE", ())
    assert main(["demo"]) == 0
    assert "summary: 9 calls, 6 answered 200" in capsys.readouterr().out


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([])
    assert exited.value.code == 2
    assert "demo" in capsys.readouterr().err


def test_python_dash_m_meshlib_is_the_same_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "meshlib", "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    assert "demo" in done.stdout
