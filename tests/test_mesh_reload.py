"""The head office: policies from a file or a URL, changed while clients run."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

import meshlib
import meshlib.testing
from meshlib._config import MAX_CONFIG_BYTES, MeshConfig, parse_config
from meshlib._sources import FileSource, UrlSource

pytestmark = pytest.mark.usefixtures("no_waits")

POLICY_A = """
[default]
retry = { attempts = 2, budget = false }
timeout = { total = 5 }
breaker = false
"""
POLICY_B = """
[default]
retry = { attempts = 4, budget = false }
timeout = { total = 9 }
breaker = false
"""
BREAKING = "breaker = { consecutive = 3, open_for = 60 }"


def _write(path: Path, text: str) -> None:
    # Atomically, as a ConfigMap update or a deploy tool does.
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def _until(condition: Callable[[], bool], within: float = 30.0) -> float:
    # Generous: only a failing run waits this long, and a loaded machine may take seconds
    # to schedule the poller.
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < within, "not within the time allowed"
        time.sleep(0.01)
    return time.monotonic() - started


@pytest.fixture
def polls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Count the polls that policy sources finish (the poller thread looks `poll` up each time)."""
    done: list[str] = []
    for source in (FileSource, UrlSource):
        real = source.poll

        def poll(self: FileSource | UrlSource, mesh: meshlib.Mesh, real: Any = real) -> None:
            real(self, mesh)
            done.append(self.where)

        monkeypatch.setattr(source, "poll", poll)
    return done


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "mesh.toml"
    _write(path, POLICY_A)
    return path


@pytest.fixture
def mesh(policy_file: Path) -> Iterator[meshlib.Mesh]:
    loaded = meshlib.Mesh.from_file(policy_file, interval=0.05)
    yield loaded
    loaded.close()


def _attempts(mesh: meshlib.Mesh) -> int:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(503)

    with meshlib.wrap(httpx.Client(transport=httpx.MockTransport(handler)), mesh) as client:
        client.get("http://orders.internal/")
    return calls


def test_a_changed_file_applies_to_the_next_request(mesh: meshlib.Mesh, policy_file: Path) -> None:
    assert _attempts(mesh) == 2
    _write(policy_file, POLICY_B)
    # Polled every 50 ms; 5 s leaves room for a loaded 2-core machine to wake the poller.
    took = _until(lambda: mesh.default.retry is not None and mesh.default.retry.attempts == 4)
    assert took < 5.0
    assert _attempts(mesh) == 4


def test_an_invalid_file_keeps_the_last_good_policy(
    mesh: meshlib.Mesh, policy_file: Path, caplog: pytest.LogCaptureFixture, polls: list[str]
) -> None:
    with caplog.at_level(logging.ERROR, logger="meshlib"):
        _write(policy_file, POLICY_A.replace("attempts = 2", "attempts = 0"))
        _until(lambda: any(r.meshlib_event == "config_rejected" for r in caplog.records))  # type: ignore[attr-defined]
        after = len(polls)
        _until(lambda: len(polls) >= after + 3)  # more polls: still one line, not one per poll
    (record,) = [r for r in caplog.records if getattr(r, "meshlib_event", "") == "config_rejected"]
    message = record.getMessage()
    assert str(policy_file) in message
    assert "attempts" in message
    assert "0" in message
    assert _attempts(mesh) == 2  # the last good policy stays
    _write(policy_file, POLICY_B)  # and a good file afterwards is taken
    _until(lambda: mesh.default.retry is not None and mesh.default.retry.attempts == 4)


def test_a_missing_or_bad_file_fails_at_once(tmp_path: Path) -> None:
    with pytest.raises(meshlib.ConfigError, match=r"missing\.toml"):
        meshlib.Mesh.from_file(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[default]\nretry = { attempts = -1 }\n")
    with pytest.raises(meshlib.ConfigError, match=r"bad\.toml.*attempts"):
        meshlib.Mesh.from_file(bad)


def test_breaker_state_survives_a_reload_that_keeps_its_settings(
    mesh: meshlib.Mesh, policy_file: Path
) -> None:
    _write(policy_file, POLICY_A.replace("breaker = false", BREAKING))
    _until(lambda: mesh.default.breaker is not None)
    client = meshlib.wrap(
        httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(503))), mesh
    )
    client.get("http://orders.internal/")  # two attempts, two failures
    client.get("http://orders.internal/")  # the third failure opens it
    (before,) = mesh.breakers()
    assert before.state == "open"
    _write(policy_file, POLICY_B.replace("breaker = false", BREAKING))  # retry/timeout change
    _until(lambda: mesh.default.retry is not None and mesh.default.retry.attempts == 4)
    with pytest.raises(meshlib.CircuitOpen):
        client.get("http://orders.internal/")
    _write(policy_file, POLICY_B.replace("breaker = false", BREAKING.replace("3", "5")))
    _until(lambda: mesh.default.breaker is not None and mesh.default.breaker.consecutive == 5)
    assert client.get("http://orders.internal/").status_code == 503  # a fresh breaker
    client.close()


def test_reload_under_traffic_never_mixes_two_policies(
    mesh: meshlib.Mesh, policy_file: Path
) -> None:
    # Each call sees one policy whole: A = (2 attempts, 5 s), B = (4 attempts, 9 s).
    seen: list[tuple[int, str]] = []
    lock = threading.Lock()
    local = threading.local()

    def handler(request: httpx.Request) -> httpx.Response:
        budget = int(request.headers["x-envoy-expected-rq-timeout-ms"])
        local.calls.append("A" if budget <= 5000 else "B")
        return httpx.Response(503)

    stop = threading.Event()

    def traffic() -> None:
        client = meshlib.wrap(httpx.Client(transport=httpx.MockTransport(handler)), mesh)
        while not stop.is_set():
            local.calls = []
            client.get("http://orders.internal/")
            with lock:
                seen.append((len(local.calls), "".join(sorted(set(local.calls)))))
        client.close()

    workers = [threading.Thread(target=traffic) for _ in range(4)]
    for worker in workers:
        worker.start()

    def attempts_are(attempts: int) -> Callable[[], bool]:
        return lambda: mesh.default.retry is not None and mesh.default.retry.attempts == attempts

    def seen_after(mark: int, kind: str) -> Callable[[], bool]:
        return lambda: any(policy == kind for _, policy in seen[mark:])

    try:
        _until(seen_after(0, "A"))
        for text, attempts, kind in [(POLICY_B, 4, "B"), (POLICY_A, 2, "A"), (POLICY_B, 4, "B")]:
            _write(policy_file, text)
            _until(attempts_are(attempts))
            # Calls go on under the new policy before the next swap; those in flight
            # during the swap are the ones that could have mixed two.
            _until(seen_after(len(seen), kind))
    finally:
        stop.set()
        for worker in workers:
            worker.join(30)
    kinds = set(seen)
    assert kinds <= {(2, "A"), (4, "B")}, kinds
    assert kinds == {(2, "A"), (4, "B")}  # both policies were seen, each whole


def test_a_thousand_destinations_load_quickly(tmp_path: Path) -> None:
    lines = ["[default]", "retry = { attempts = 3 }"]
    for n in range(1000):
        lines.append(f'[destinations."svc-{n}.internal"]')
        lines.append(f"timeout = {{ total = {1 + n % 30} }}")
    path = tmp_path / "fleet.toml"
    path.write_text("\n".join(lines))
    # CPU time of this thread, not wall time, so that a loaded machine does not count.
    started = time.thread_time()
    mesh = meshlib.Mesh.from_file(path, reload=False)
    took = time.thread_time() - started
    assert len(mesh.destinations) == 1000
    assert mesh.policy_for("svc-999.internal").timeout == meshlib.Timeout(total=10)
    assert took < 1.0


def test_a_file_source_reports_each_new_config_to_its_callback(policy_file: Path) -> None:
    # The source knows nothing of Mesh: any callable taking a MeshConfig will do.
    reported: list[MeshConfig] = []
    source = FileSource(reported.append, policy_file, "", 0.05)
    try:
        _until(lambda: len(reported) == 1)
        assert reported[0].source == str(policy_file)
        assert reported[0] == parse_config(POLICY_A, str(policy_file))
        _write(policy_file, POLICY_B)
        _until(lambda: len(reported) == 2)
        assert reported[1] == parse_config(POLICY_B, str(policy_file))
    finally:
        source.close()


def test_from_env(monkeypatch: pytest.MonkeyPatch, policy_file: Path) -> None:
    monkeypatch.delenv("MESHLIB_CONFIG", raising=False)
    assert meshlib.Mesh.from_env() is None
    monkeypatch.setenv("MESHLIB_CONFIG", str(policy_file))
    mesh = meshlib.Mesh.from_env(reload=False)
    assert mesh is not None
    assert mesh.default.retry is not None
    assert mesh.default.retry.attempts == 2


def test_update_validates_before_swapping() -> None:
    mesh = meshlib.Mesh()
    with pytest.raises(meshlib.ConfigError):
        mesh.update(meshlib.STANDARD, {"": meshlib.STANDARD})
    assert mesh.default == meshlib.STANDARD
    assert mesh.pattern_for("a.internal") is None


# The remote head office


class _Office:
    """A config server on 127.0.0.1 with ETags; counts what it was asked."""

    def __init__(self, document: str) -> None:
        self.document = document
        self.send_length = True  # False: the body runs until the connection closes
        self.fetches = 0
        self.not_modified = 0
        office = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                office.fetches += 1
                etag = f'"{hash(office.document) & 0xFFFFFFFF:x}"'
                if self.headers.get("If-None-Match") == etag:
                    office.not_modified += 1
                    self.send_response(304)
                    self.end_headers()
                    return
                body = office.document.encode()
                self.send_response(200)
                self.send_header("ETag", etag)
                self.send_header("Content-Type", "application/toml")
                if office.send_length:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/mesh.toml"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.network
def test_a_remote_document_is_followed_with_etags(
    caplog: pytest.LogCaptureFixture, polls: list[str]
) -> None:
    office = _Office(POLICY_A)
    mesh = meshlib.Mesh.from_url(office.url, interval=0.05)
    try:
        assert mesh.default.retry is not None
        assert mesh.default.retry.attempts == 2
        _until(lambda: office.not_modified >= 3)  # polls cost a 304, nothing is re-parsed
        office.document = POLICY_B
        _until(lambda: mesh.default.retry is not None and mesh.default.retry.attempts == 4)
        with caplog.at_level(logging.INFO, logger="meshlib"):
            office.stop()
            after = len(polls)
            _until(lambda: len(polls) >= after + 4)  # several failed polls
            failures = [
                r for r in caplog.records if getattr(r, "meshlib_event", "") == "config_rejected"
            ]
            assert len(failures) == 1  # once per state change, not per poll
            assert office.url in failures[0].getMessage()
        assert mesh.default.retry is not None
        assert mesh.default.retry.attempts == 4
    finally:
        mesh.close()


@pytest.mark.network
def test_a_remote_document_that_is_bad_at_first_is_an_error() -> None:
    office = _Office("[default]\nretry = { attempts = 0 }\n")
    try:
        with pytest.raises(meshlib.ConfigError, match="attempts"):
            meshlib.Mesh.from_url(office.url)
    finally:
        office.stop()
    # A port bound and never listened on refuses connections, and nobody else can take it
    # meanwhile (the stopped office's port could be).
    with socket.socket() as dead:
        dead.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{dead.getsockname()[1]}/mesh.toml"
        with pytest.raises(meshlib.ConfigError, match="cannot fetch"):
            meshlib.Mesh.from_url(url, timeout=0.5)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("", "the file is empty"),  # an editor caught between its truncate and its write
        ("\n  \n", "the file is empty"),
        ('[default.endpoints]\naddresses = ["10.0.0.1:80"]\n', "default.endpoints"),
    ],
)
def test_an_empty_file_or_default_endpoints_are_refused_on_reload(
    mesh: meshlib.Mesh,
    policy_file: Path,
    caplog: pytest.LogCaptureFixture,
    text: str,
    named: str,
) -> None:
    with caplog.at_level(logging.ERROR, logger="meshlib"):
        _write(policy_file, text)
        _until(lambda: any(r.meshlib_event == "config_rejected" for r in caplog.records))  # type: ignore[attr-defined]
    (record,) = [r for r in caplog.records if getattr(r, "meshlib_event", "") == "config_rejected"]
    assert named in record.getMessage()
    assert not [r for r in caplog.records if r.exc_info]  # one line, not a traceback
    assert _attempts(mesh) == 2  # the last good policy stays


def test_a_pattern_that_can_never_match_is_refused_on_reload(
    mesh: meshlib.Mesh, policy_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="meshlib"):
        _write(policy_file, '[destinations."http://a.internal"]\nretry = false\n')
        _until(lambda: any(r.meshlib_event == "config_rejected" for r in caplog.records))  # type: ignore[attr-defined]
    (record,) = [r for r in caplog.records if getattr(r, "meshlib_event", "") == "config_rejected"]
    assert f'{policy_file}: destinations."http://a.internal": expected a host, not a URL' in (
        record.getMessage()
    )
    assert _attempts(mesh) == 2  # the last good policy stays


@pytest.mark.network
def test_a_mesh_from_a_url_names_it_in_its_repr() -> None:
    office = _Office('[destinations."payments.internal"]\nretry = false\n')
    try:
        mesh = meshlib.Mesh.from_url(office.url, interval=60)
        try:
            assert repr(mesh) == (
                f"<meshlib.Mesh from {office.url}, followed: 1 destination (payments.internal)>"
            )
        finally:
            mesh.close()
    finally:
        office.stop()


def _polled_once(mesh: meshlib.Mesh) -> None:
    # The first poll records the file's signature; a change made before it would be
    # caught by the content hash alone.
    source = mesh._source
    _until(lambda: source._stat is not None)


def _keep_mtime(path: Path, mtime_ns: int) -> None:
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_a_file_moved_in_with_the_same_size_and_mtime_is_applied(
    mesh: meshlib.Mesh, policy_file: Path
) -> None:
    # `mv` of a file made by `cp -p` or `rsync -t`: a new inode, the old mtime and size.
    _polled_once(mesh)
    before = policy_file.stat()
    replacement = policy_file.with_suffix(".new")
    replacement.write_text(POLICY_B)
    assert replacement.stat().st_size == before.st_size
    _keep_mtime(replacement, before.st_mtime_ns)
    os.replace(replacement, policy_file)
    assert policy_file.stat().st_mtime_ns == before.st_mtime_ns
    _until(lambda: mesh.default.retry is not None and mesh.default.retry.attempts == 4)


def test_a_file_rewritten_in_place_with_its_mtime_kept_is_applied(
    mesh: meshlib.Mesh, policy_file: Path
) -> None:
    # `cp -p new mesh.toml` onto the file: the same inode, size and mtime; a new ctime.
    _polled_once(mesh)
    before = policy_file.stat()
    with open(policy_file, "r+") as file:
        file.write(POLICY_B)
    _keep_mtime(policy_file, before.st_mtime_ns)
    after = policy_file.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    )
    _until(lambda: mesh.default.retry is not None and mesh.default.retry.attempts == 4)


def test_a_relative_path_still_reloads_after_chdir(
    policy_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(policy_file.parent)
    mesh = meshlib.Mesh.from_file("mesh.toml", interval=0.05)
    try:
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        monkeypatch.chdir(elsewhere)  # the process moves on; the file it follows does not
        _write(policy_file, POLICY_B)
        _until(lambda: mesh.default.retry is not None and mesh.default.retry.attempts == 4)
    finally:
        mesh.close()


# The process-wide default Mesh follows $MESHLIB_CONFIG


def _attempts_of(client: httpx.Client) -> int:
    before = len(_SENT)
    client.get("http://orders.internal/")
    return len(_SENT) - before


_SENT: list[httpx.Request] = []


def _always_503(request: httpx.Request) -> httpx.Response:
    _SENT.append(request)
    return httpx.Response(503)


def test_wrap_follows_the_file_meshlib_config_names(
    monkeypatch: pytest.MonkeyPatch, policy_file: Path
) -> None:
    monkeypatch.setenv("MESHLIB_CONFIG", str(policy_file))
    meshlib.testing.reset()  # as a fresh process: the default Mesh is built on first use
    with meshlib.wrap(httpx.Client(transport=httpx.MockTransport(_always_503))) as client:
        assert _attempts_of(client) == 2  # the file's [default], not STANDARD's 3
        _write(policy_file, POLICY_B)
        default = meshlib.default_mesh()
        _until(
            lambda: default.default.retry is not None and default.default.retry.attempts == 4, 5.0
        )
        assert _attempts_of(client) == 4  # the same client, the edited file


def test_an_explicit_policy_wins_and_shares_the_default_mesh_state(
    monkeypatch: pytest.MonkeyPatch, policy_file: Path
) -> None:
    policy_file.write_text(POLICY_A + '\n[destinations."orders.internal"]\nretry = false\n')
    monkeypatch.setenv("MESHLIB_CONFIG", str(policy_file))
    meshlib.testing.reset()
    explicit = meshlib.Policy(
        retry=meshlib.Retry(attempts=3, budget=None), breaker=meshlib.Breaker(consecutive=50)
    )
    transport = httpx.MockTransport(_always_503)
    with (
        meshlib.wrap(httpx.Client(transport=transport), explicit) as mine,
        meshlib.wrap(httpx.Client(transport=transport)) as followed,
    ):
        assert _attempts_of(mine) == 3  # the policy given to wrap, not the file's
        assert _attempts_of(followed) == 1  # the file's destination table: no retries
    default = meshlib.default_mesh()
    assert default.destinations["orders.internal"].retry is None  # built from the file
    (breaker,) = default.breakers()  # the explicit policy's state lives in it
    assert breaker.destination == "http://orders.internal:80"


@pytest.mark.parametrize("content", [None, "[default]\nretry = { attempts = 0 }\n"])
def test_a_missing_or_bad_meshlib_config_file_is_refused_at_first_use(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, content: str | None
) -> None:
    named = tmp_path / "mesh-typo.toml"
    if content is not None:
        named.write_text(content)
    monkeypatch.setenv("MESHLIB_CONFIG", str(named))
    meshlib.testing.reset()  # never raises: nothing is read until a client needs it
    for _ in range(2):  # not remembered: each use says so again
        with pytest.raises(meshlib.ConfigError, match=r"MESHLIB_CONFIG.*mesh-typo\.toml") as raised:
            meshlib.wrap(httpx.Client())
        with pytest.raises(meshlib.ConfigError, match=r"MESHLIB_CONFIG"):
            meshlib.wrap(httpx.Client(), meshlib.Policy())  # its state would live there
    if content is not None:
        assert "attempts" in str(raised.value)
    named.write_text(POLICY_A)  # fixed: the next client takes it
    with meshlib.wrap(httpx.Client(transport=httpx.MockTransport(_always_503))) as client:
        assert _attempts_of(client) == 2


def test_without_meshlib_config_wrap_means_standard(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MESHLIB_CONFIG", raising=False)
    meshlib.testing.reset()
    with meshlib.wrap(httpx.Client(transport=httpx.MockTransport(_always_503))) as client:
        assert _attempts_of(client) == meshlib.STANDARD.retry.attempts  # type: ignore[union-attr]
    assert meshlib.default_mesh().default == meshlib.STANDARD


# A policy document has a size limit, refused before parsing


LIMIT = MAX_CONFIG_BYTES


def _oversized(policy: str = POLICY_A) -> str:
    # Valid TOML: only its size is wrong, so nothing but the limit can refuse it.
    padding = "# " + "x" * 1021 + "\n"
    return policy + padding * (LIMIT // len(padding) + 1)


def _refused_for_size(message: str, source: str, size: int | None) -> bool:
    named_size = str(size) if size is not None else f"more than {LIMIT}"
    return source in message and named_size in message and f"limit of {LIMIT} bytes" in message


def test_the_limit_is_far_above_a_thousand_destinations() -> None:
    fleet = "".join(
        f'[destinations."svc-{n}.internal"]\ntimeout = {{ total = {1 + n % 30} }}\n'
        for n in range(1000)
    )
    assert len(fleet) * 20 < LIMIT  # a thousand destinations, twenty times over


def test_an_oversized_file_is_refused_by_from_file_and_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from meshlib._cli import main

    path = tmp_path / "huge.toml"
    path.write_text(_oversized())
    size = path.stat().st_size
    with pytest.raises(meshlib.ConfigError) as raised:
        meshlib.Mesh.from_file(path)
    assert _refused_for_size(str(raised.value), str(path), size)
    assert main(["check", str(path)]) == 1
    assert _refused_for_size(capsys.readouterr().err, str(path), size)
    with pytest.raises(meshlib.ConfigError, match=f"limit of {LIMIT} bytes"):
        parse_config(_oversized(), "<stdin>")  # a document given whole, too


def test_a_followed_file_that_grows_too_large_keeps_the_last_good_policy(
    mesh: meshlib.Mesh, policy_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="meshlib"):
        _write(policy_file, _oversized(POLICY_B))
        _until(lambda: any(r.meshlib_event == "config_rejected" for r in caplog.records))  # type: ignore[attr-defined]
        with open(policy_file, "a") as file:  # it keeps growing: still one line
            file.write("# more\n" * 1000)
        time.sleep(0.3)
    refusals = [r for r in caplog.records if getattr(r, "meshlib_event", "") == "config_rejected"]
    assert len(refusals) == 1
    assert _refused_for_size(refusals[0].getMessage(), str(policy_file), len(_oversized(POLICY_B)))
    assert _attempts(mesh) == 2  # the last good policy
    _write(policy_file, POLICY_B)  # back under the limit: applied
    _until(lambda: mesh.default.retry is not None and mesh.default.retry.attempts == 4)


@pytest.mark.network
def test_an_oversized_remote_document_is_refused() -> None:
    office = _Office(_oversized())
    try:
        with pytest.raises(meshlib.ConfigError) as raised:
            meshlib.Mesh.from_url(office.url)
        assert _refused_for_size(str(raised.value), office.url, len(office.document))
        office.send_length = False  # no Content-Length: the body itself is cut at the limit
        with pytest.raises(meshlib.ConfigError) as raised:
            meshlib.Mesh.from_url(office.url)
        assert _refused_for_size(str(raised.value), office.url, None)
        office.send_length = True
        office.document = POLICY_A
        mesh = meshlib.Mesh.from_url(office.url, interval=0.05)
        try:
            office.document = _oversized(POLICY_B)
            time.sleep(0.3)  # several polls, each refused
            assert mesh.default.retry is not None
            assert mesh.default.retry.attempts == 2
        finally:
            mesh.close()
    finally:
        office.stop()


@pytest.mark.network
def test_a_url_sources_token_never_reaches_a_message_or_a_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    office = _Office("[default]\nretry = { attempts = 0 }\n")  # refused: a message to read
    secret_url = office.url + "?token=S3CRET&region=eu"
    try:
        with pytest.raises(meshlib.ConfigError) as refused:
            meshlib.Mesh.from_url(secret_url)
        assert "S3CRET" not in str(refused.value)
        assert "token=REDACTED" in str(refused.value)
        office.document = POLICY_A
        with caplog.at_level(logging.INFO, logger="meshlib"):
            mesh = meshlib.Mesh.from_url(secret_url, interval=0.05)
            try:
                office.document = POLICY_B  # applied: a log line naming the source
                _until(lambda: mesh.default.retry is not None and mesh.default.retry.attempts == 4)
                office.document = "[default]\nretry = { attempts = 0 }\n"  # refused: another
                _until(
                    lambda: any(
                        getattr(r, "meshlib_event", "") == "config_rejected" for r in caplog.records
                    )
                )
                assert "S3CRET" not in repr(mesh)
                assert "S3CRET" not in json.dumps(mesh.config_dump())
            finally:
                mesh.close()
        lines = [r.getMessage() + repr(r.__dict__) for r in caplog.records]
        assert lines, "no log line to check"
        assert not [line for line in lines if "S3CRET" in line]
        assert any("token=REDACTED" in r.getMessage() for r in caplog.records)
    finally:
        office.stop()
