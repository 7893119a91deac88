"""The `meshlib` command line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from meshlib._cli import main

pytestmark = pytest.mark.network


def test_demo_runs_every_scenario_as_promised(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "UNEXPECTED" not in out
    assert "503 -> wait" in out  # a retried burst shows its waits
    assert "POST -> 503 | 1 sent" in out  # a non-idempotent call is not resent
    assert "-> DeadlineExceeded" in out
    assert "summary: 9 calls, 6 answered 200" in out


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
