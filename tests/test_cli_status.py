"""``meshlib status URL``: the status page's table in the terminal, and its JSON."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

import httpx
import pytest

import meshlib
from meshlib._cli import main
from meshlib.testing import FaultServer, Respond

pytestmark = pytest.mark.network


@pytest.fixture
def watched() -> Iterator[tuple[meshlib.admin.Server, str, str]]:
    """A status page over one healthy and one failing upstream, both called."""
    policy = meshlib.Policy(retry=None, breaker=meshlib.Breaker(consecutive=2, open_for=60.0))
    mesh = meshlib.Mesh(default=policy)
    with FaultServer() as good, FaultServer() as bad, meshlib.admin.serve(mesh, port=0) as server:
        bad.default = Respond(503)
        with meshlib.wrap(httpx.Client(), mesh) as client:
            for _ in range(3):
                client.get(good.url)
                with contextlib.suppress(meshlib.CircuitOpen):
                    client.get(bad.url)
        yield server, good.url, bad.url


def test_status_prints_the_table_failing_first(
    watched: tuple[meshlib.admin.Server, str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    server, good, bad = watched
    assert main(["status", server.url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("process ")
    header = lines[1].split()
    assert header[:3] == ["destination", "status", "breaker"]
    assert lines[2].split()[:3] == [bad, "failing", "open"]
    assert lines[3].split()[:3] == [good, "healthy", "closed"]
    assert lines[4].startswith(f"{bad}: breaker open, next probe in ")
    assert "\x1b[" not in "".join(lines)  # not a terminal: no colour codes


def test_status_json_prints_what_the_page_serves(
    watched: tuple[meshlib.admin.Server, str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    server, good, bad = watched
    assert main(["status", server.url + "/status.json", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    served = httpx.get(server.url + "/status.json").json()
    assert printed["version"] == 1
    assert [d["name"] for d in printed["destinations"]] == [bad, good]
    assert [d["breaker"]["state"] for d in printed["destinations"]] == ["open", "closed"]
    assert [d["name"] for d in served["destinations"]] == [bad, good]


def test_status_of_an_idle_process(capsys: pytest.CaptureFixture[str]) -> None:
    with meshlib.admin.serve(meshlib.Mesh(), port=0) as server:
        assert main(["status", server.url + "/"]) == 0
    assert "No destination has been called yet." in capsys.readouterr().out


def test_status_fails_clearly_when_nothing_answers(capsys: pytest.CaptureFixture[str]) -> None:
    with meshlib.admin.serve(meshlib.Mesh(), port=0) as server:
        url = server.url
    assert main(["status", url]) == 1
    assert f"meshlib status: cannot read {url}/status.json" in capsys.readouterr().err


def test_status_fails_clearly_on_a_page_that_is_not_meshlibs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with FaultServer() as other:
        other.default = Respond(200, b'{"hello": "world"}')
        assert main(["status", other.url]) == 1
        other.default = Respond(404)
        assert main(["status", other.url]) == 1
    err = capsys.readouterr().err.splitlines()
    assert (
        err[0] == f"meshlib status: {other.url}/status.json: not a meshlib status page of version 1"
    )
    assert err[1] == f"meshlib status: {other.url}/status.json: HTTP 404"


def test_status_colours_the_state_on_a_terminal(
    watched: tuple[meshlib.admin.Server, str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = watched[0]
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    assert main(["status", server.url]) == 0
    out = capsys.readouterr().out
    assert "\x1b[1;31mfailing\x1b[0m" in out
    assert "\x1b[32mhealthy\x1b[0m" in out
    monkeypatch.setenv("NO_COLOR", "1")
    assert main(["status", server.url]) == 0
    assert "\x1b[" not in capsys.readouterr().out
