"""A real HTTP/1.1 server on 127.0.0.1 that misbehaves on demand, for tests and demos.

Queue behaviours (`Respond`, `Reset`, `Close`, `Hang`, `Drip`, or `Chaos` to draw one of
them at random); each incoming request consumes the next one, and `FaultServer.default`
answers once the queue is empty::

    with FaultServer() as server:
        server.enqueue(Respond(503, headers={"Retry-After": "1"}), Reset(), Respond(200, b"ok"))
        ...  # point the code under test at server.url
        assert server.request_count == 3

Stdlib only, so that `meshlib.testing` costs users no extra dependency. Near 800 lines
because it is a whole HTTP/1.1 server (request parsing, chunked bodies, TLS, keep-alive)
whose misbehaviour must be exact; `meshlib.testing` imports it only on first use.
"""

from __future__ import annotations

import collections
import contextlib
import http
import itertools
import math
import random
import socket
import ssl
import string
import struct
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeAlias

__all__ = [
    "Behaviour",
    "Chaos",
    "Close",
    "Drip",
    "FaultServer",
    "Hang",
    "RecordedRequest",
    "Reset",
    "Respond",
]

_HOST = "127.0.0.1"
# How often the accept loop looks at the stop flag: bounds the stop() latency it adds.
_ACCEPT_POLL = 0.05
# How long stop() waits for connection threads to notice their sockets were shut down.
_STOP_JOIN_TIMEOUT = 1.0
_RECV_SIZE = 65536
# Generous limits: they exist only so a broken client cannot make a test eat all memory.
_MAX_LINE = 65536
_MAX_HEADERS = 256
_BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~" + string.digits + string.ascii_letters)
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def _check_status(status: int) -> None:
    if not 100 <= status <= 999:
        raise ValueError(f"status must be a three-digit HTTP status code, got {status!r}")


def _check_seconds(name: str, value: float) -> None:
    # `not value >= 0` also rejects NaN, which would make Event.wait() raise in a server thread.
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")


def _check_header(name: str, value: str) -> None:
    # Validate here, in the caller's thread: a bad header found while sending would only
    # kill a server thread, far from the test that queued it.
    if not name or not set(name) <= _TOKEN_CHARS:
        raise ValueError(f"invalid header name {name!r}")
    if "\r" in value or "\n" in value:
        raise ValueError(f"header value for {name!r} contains a line break")
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"header value for {name!r} is not latin-1 encodable") from None


@dataclass(frozen=True)
class Respond:
    """Send a complete response, optionally after a delay.

    The connection stays open for further requests unless the request asked for
    ``Connection: close`` (or was HTTP/1.0 without keep-alive), or `headers` say
    ``Connection: close``.

    Args:
        status: the HTTP status code.
        body: the response body; not sent for HEAD requests or 1xx/204/304 statuses.
        headers: extra response headers. ``Content-Length`` is added unless given here
            (or ``Transfer-Encoding`` is), so a wrong length can be injected on purpose.
        delay: seconds to wait before sending anything; cut short when the server stops,
            in which case the connection is closed without a response.

    Raises:
        ValueError: `status`, `delay` or a header is invalid.
    """

    status: int = 200
    body: bytes = b"ok"
    headers: Mapping[str, str] | None = None
    delay: float = 0.0

    def __post_init__(self) -> None:
        _check_status(self.status)
        _check_seconds("delay", self.delay)
        if self.headers is not None:
            # Copy so that mutating the caller's dict after enqueue() changes nothing.
            headers = dict(self.headers)
            for name, value in headers.items():
                _check_header(name, value)
            object.__setattr__(self, "headers", headers)


@dataclass(frozen=True)
class Reset:
    """Read the request, then abort the connection with a TCP RST and no response."""


@dataclass(frozen=True)
class Close:
    """Read the request, then close the connection cleanly (FIN) without a response."""


@dataclass(frozen=True)
class Hang:
    """Read the request, send nothing for a while, then close the connection.

    Args:
        seconds: how long to stay silent; cut short when the server stops.

    Raises:
        ValueError: `seconds` is negative, NaN or infinite.
    """

    seconds: float = 60.0

    def __post_init__(self) -> None:
        _check_seconds("seconds", self.seconds)


@dataclass(frozen=True)
class Drip:
    """Send the headers at once, then the body one byte at a time.

    The headers carry the full ``Content-Length``; each byte goes out after waiting
    `interval` seconds. If the server stops mid-body the connection is closed; if the
    client goes away the drip stops quietly.

    Args:
        body: the complete response body.
        interval: seconds to wait before each byte.
        status: the HTTP status code.

    Raises:
        ValueError: `status` or `interval` is invalid.
    """

    body: bytes = b"x" * 100
    interval: float = 0.1
    status: int = 200

    def __post_init__(self) -> None:
        _check_status(self.status)
        _check_seconds("interval", self.interval)


_Fixed: TypeAlias = Respond | Reset | Close | Hang | Drip
_FIXED_TYPES = (Respond, Reset, Close, Hang, Drip)


class Chaos:
    """Draw a behaviour at random for each request, with given weights.

    Each request that gets this behaviour (as `FaultServer.default`, or queued) draws
    one of `choices`; whatever weight is left up to 1.0 answers ``Respond(200)``::

        server.default = Chaos(
            [(0.04, Reset()), (0.03, Respond(503)), (0.03, Respond(delay=0.2))],
            rng=random.Random(7),
        )  # about 10% faults, the same sequence of draws on every run

    Draws are serialised by a lock, so one seeded `rng` gives the same sequence of
    behaviours however many connection threads draw from it (which request gets
    which draw still depends on arrival order).

    Args:
        choices: (weight, behaviour) pairs; weights are probabilities >= 0 adding
            up to at most 1.0. A `Chaos` cannot contain another.
        rng: the source of the draws; a fresh unseeded ``random.Random`` when None.

    Raises:
        ValueError: a weight is negative, NaN or infinite, or the weights add up to
            more than 1.0.
        TypeError: a choice is not a (weight, behaviour) pair.
    """

    __slots__ = ("_behaviours", "_bounds", "_counts", "_lock", "_rng", "choices")

    def __init__(
        self,
        choices: Sequence[tuple[float, _Fixed]],
        rng: random.Random | None = None,
    ) -> None:
        pairs: list[tuple[float, _Fixed]] = []
        for choice in choices:
            if not isinstance(choice, tuple) or len(choice) != 2:
                raise TypeError(f"expected a (weight, behaviour) pair, got {choice!r}")
            weight, behaviour = choice
            if isinstance(weight, bool) or not isinstance(weight, int | float):
                raise TypeError(f"weight must be a number, got {weight!r}")
            if not math.isfinite(weight) or weight < 0:
                raise ValueError(f"weight must be a finite number >= 0, got {weight!r}")
            if not isinstance(behaviour, _FIXED_TYPES):
                raise TypeError(f"not a behaviour Chaos can draw: {behaviour!r}")
            pairs.append((float(weight), behaviour))
        total = math.fsum(weight for weight, _ in pairs)
        if total > 1.0 + 1e-9:
            raise ValueError(f"weights must add up to at most 1.0, got {total!r}")
        self.choices: tuple[tuple[float, _Fixed], ...] = tuple(pairs)
        bounds: list[float] = []
        running = 0.0
        for weight, _ in pairs:
            running += weight
            bounds.append(running)
        self._bounds = bounds
        self._behaviours: list[_Fixed] = [behaviour for _, behaviour in pairs]
        self._behaviours.append(Respond())
        self._counts = [0] * len(self._behaviours)
        self._rng = rng if rng is not None else random.Random()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Chaos({list(self.choices)!r})"

    @property
    def counts(self) -> tuple[int, ...]:
        """How often each choice was drawn, in the order given, then the ``Respond(200)`` rest."""
        with self._lock:
            return tuple(self._counts)

    def draw(self) -> _Fixed:
        """Draw the behaviour for one request (thread-safe)."""
        with self._lock:
            point = self._rng.random()
            index = len(self._bounds)
            for position, bound in enumerate(self._bounds):
                if point < bound:
                    index = position
                    break
            self._counts[index] += 1
        return self._behaviours[index]


Behaviour: TypeAlias = Respond | Reset | Close | Hang | Drip | Chaos
_BEHAVIOUR_TYPES = (*_FIXED_TYPES, Chaos)


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server received it.

    Args:
        method: the request method, e.g. ``"GET"``.
        path: the request target as sent, query string included.
        headers: header names lowercased; for repeated headers the last value wins.
        body: the body, already decoded if it was sent chunked.
        connection_id: which accepted connection carried it; ids count up from 1 and
            are never reused by the same server, not even after `FaultServer.reset_log`.
        peer_cert: the client certificate from `ssl.SSLSocket.getpeercert`, or None
            without TLS, when the client sent none, or when the server context does not
            verify client certificates (Python then cannot decode it).
    """

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    connection_id: int
    peer_cert: dict[str, Any] | None = None


class _ClientGone(Exception):
    """The peer closed its side before a complete request arrived."""


class _BadRequest(Exception):
    """The bytes received are not an HTTP/1.x request this server can parse."""


@dataclass(frozen=True)
class _Request:
    method: str
    target: str
    version: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


class _Connection:
    """Book-keeping for one accepted socket, shared between its thread and stop()."""

    __slots__ = ("id", "sock", "thread")

    def __init__(self, conn_id: int, sock: socket.socket) -> None:
        self.id = conn_id
        # Replaced by the TLS-wrapped socket once wrapped, so stop() shuts down the live one.
        self.sock = sock
        self.thread: threading.Thread | None = None


class _Reader:
    """Buffered reads off a socket; the buffer survives between pipelined requests."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = bytearray()

    def _fill(self) -> None:
        data = self._sock.recv(_RECV_SIZE)
        if not data:
            raise _ClientGone
        self._buf += data

    def readline(self) -> bytes:
        start = 0
        while True:
            end = self._buf.find(b"\n", start)
            if end >= 0:
                line = bytes(self._buf[:end])
                del self._buf[: end + 1]
                return line[:-1] if line.endswith(b"\r") else line
            if len(self._buf) > _MAX_LINE:
                raise _BadRequest("line too long")
            start = len(self._buf)
            self._fill()

    def read_exact(self, size: int) -> bytes:
        while len(self._buf) < size:
            self._fill()
        data = bytes(self._buf[:size])
        del self._buf[:size]
        return data


def _is_token(text: str) -> bool:
    return bool(text) and set(text) <= _TOKEN_CHARS


def _read_request(reader: _Reader, sock: socket.socket) -> _Request:
    line = reader.readline()
    # RFC 9112 section 2.2: ignore stray empty lines before a request line.
    while not line:
        line = reader.readline()
    parts = line.decode("latin-1").split(" ")
    if len(parts) != 3 or not _is_token(parts[0]) or not parts[1]:
        raise _BadRequest("malformed request line")
    method, target, version = parts
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise _BadRequest("unsupported HTTP version")

    headers: dict[str, str] = {}
    for _ in range(_MAX_HEADERS + 1):
        raw = reader.readline()
        if not raw:
            break
        name, sep, value = raw.decode("latin-1").partition(":")
        if not sep or not _is_token(name):
            raise _BadRequest("malformed header line")
        headers[name.lower()] = value.strip(" \t")
    else:
        raise _BadRequest("too many headers")

    transfer_encoding = headers.get("transfer-encoding")
    content_length = headers.get("content-length")
    expects_body = transfer_encoding is not None or content_length not in (None, "0")
    expects_continue = headers.get("expect", "").lower() == "100-continue"
    if expects_body and expects_continue and version == "HTTP/1.1":
        # Clients such as curl otherwise pause before sending a large body.
        sock.sendall(_CONTINUE)

    if transfer_encoding is not None:
        codings = [coding.strip().lower() for coding in transfer_encoding.split(",")]
        if codings[-1] != "chunked":
            raise _BadRequest("request body length cannot be determined")
        body = _read_chunked(reader)
    elif content_length is not None:
        text = content_length.strip()
        if not text.isascii() or not text.isdigit():
            raise _BadRequest("invalid Content-Length")
        body = reader.read_exact(int(text))
    else:
        body = b""

    tokens = {token.strip().lower() for token in headers.get("connection", "").split(",")}
    # HTTP/1.1 connections persist by default, HTTP/1.0 ones only when asked to.
    keep_alive = "keep-alive" in tokens if version == "HTTP/1.0" else "close" not in tokens
    return _Request(method, target, version, headers, body, keep_alive)


def _read_chunked(reader: _Reader) -> bytes:
    chunks: list[bytes] = []
    while True:
        size_text = reader.readline().split(b";", 1)[0].strip().decode("latin-1")
        # int(x, 16) alone would accept "-1", "0x10" and "1_0".
        if not size_text or not set(size_text) <= _HEX_DIGITS:
            raise _BadRequest("invalid chunk size")
        size = int(size_text, 16)
        if size == 0:
            break
        chunks.append(reader.read_exact(size))
        if reader.readline():
            raise _BadRequest("chunk not followed by CRLF")
    for _ in range(_MAX_HEADERS + 1):
        if not reader.readline():  # trailers are read and dropped
            return b"".join(chunks)
    raise _BadRequest("too many trailers")


def _head(status: int, headers: list[tuple[str, str]]) -> bytes:
    try:
        reason = http.HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _connection_header(request: _Request, keep_alive: bool) -> list[tuple[str, str]]:
    if not keep_alive:
        return [("Connection", "close")]
    if request.version == "HTTP/1.0":
        return [("Connection", "keep-alive")]
    return []


def _shutdown_quietly(sock: socket.socket, how: int) -> None:
    # Call the plain-socket method even on an SSLSocket: SSLSocket.shutdown() also drops its
    # SSL object, which would race with the connection thread still using it.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, how)


def _wrap_server_side(context: ssl.SSLContext, sock: socket.socket) -> ssl.SSLSocket:
    try:
        return context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
    except OSError as exc:
        # When the peer has already reset the connection, CPython's SSLSocket._create can
        # raise after taking over the file descriptor without closing it. Close it here:
        # left to the garbage collector, its ResourceWarning fails suites run with -W error.
        tb = exc.__traceback__
        while tb is not None:
            half_made = tb.tb_frame.f_locals.get("self")
            if isinstance(half_made, ssl.SSLSocket):
                half_made.close()
            tb = tb.tb_next
        raise


class FaultServer:
    """Serve HTTP/1.1 on 127.0.0.1 with faults injected from a queue of behaviours.

    Each connection gets its own daemon thread. Use it as a context manager, or call
    `start` and `stop`. A server can be started only once.

    Args:
        ssl_context: a server-side context to serve HTTPS instead of HTTP. The handshake
            runs in the connection's thread; a failed handshake closes that connection
            and records nothing (it still counts in `connection_count`).
    """

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self._ssl_context = ssl_context
        # One lock guards the queue, the log, the counters and the open connections, so
        # that a request's log entry and the behaviour it consumed always match up.
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._queue: collections.deque[Behaviour] = collections.deque()
        self._default: Behaviour = Respond()
        self._requests: list[RecordedRequest] = []
        self._connection_count = 0
        self._connection_ids = itertools.count(1)
        self._open: dict[int, _Connection] = {}
        self._accept_thread: threading.Thread | None = None
        self._port: int | None = None
        self._started = False

    def __enter__(self) -> FaultServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.url if self._port is not None else "not started"
        return f"<FaultServer {where}>"

    @property
    def port(self) -> int:
        """The port the server listens on (still answers after `stop`).

        Raises:
            RuntimeError: the server was never started.
        """
        if self._port is None:
            raise RuntimeError("FaultServer is not started")
        return self._port

    @property
    def url(self) -> str:
        """The base URL, ``http://127.0.0.1:PORT`` (``https://`` with an SSL context).

        Raises:
            RuntimeError: the server was never started.
        """
        scheme = "http" if self._ssl_context is None else "https"
        return f"{scheme}://{_HOST}:{self.port}"

    @property
    def default(self) -> Behaviour:
        """The behaviour used when the queue is empty; ``Respond(200, b"ok")`` at first."""
        with self._lock:
            return self._default

    @default.setter
    def default(self, behaviour: Behaviour) -> None:
        if not isinstance(behaviour, _BEHAVIOUR_TYPES):
            raise TypeError(f"not a behaviour: {behaviour!r}")
        with self._lock:
            self._default = behaviour

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot copy of the requests received, in arrival order."""
        with self._lock:
            return list(self._requests)

    @property
    def request_count(self) -> int:
        """How many requests were received (and so consumed a behaviour)."""
        with self._lock:
            return len(self._requests)

    @property
    def connection_count(self) -> int:
        """How many TCP connections were accepted."""
        with self._lock:
            return self._connection_count

    @property
    def open_connections(self) -> int:
        """How many connections the server side still holds open.

        The server notices a client hang-up only when it next reads, so a connection
        in a `Hang` or a `Respond` delay counts until that behaviour ends.
        """
        with self._lock:
            return len(self._open)

    @property
    def pending(self) -> int:
        """How many queued behaviours are not yet consumed."""
        with self._lock:
            return len(self._queue)

    def enqueue(self, *behaviours: Behaviour) -> None:
        """Queue behaviours for the next requests, first in first out.

        Args:
            *behaviours: one per future request, in the order requests will get them.

        Raises:
            TypeError: an argument is not a behaviour.
        """
        for behaviour in behaviours:
            if not isinstance(behaviour, _BEHAVIOUR_TYPES):
                raise TypeError(f"not a behaviour: {behaviour!r}")
        with self._lock:
            self._queue.extend(behaviours)

    def reset_log(self) -> None:
        """Forget recorded requests and zero the counters; the queue is kept."""
        with self._lock:
            self._requests.clear()
            self._connection_count = 0

    def start(self) -> None:
        """Bind an ephemeral port on 127.0.0.1 and start accepting in a daemon thread.

        Raises:
            RuntimeError: the server was already started.
        """
        with self._lock:
            if self._started:
                raise RuntimeError("FaultServer can only be started once")
            self._started = True
        listener = socket.create_server((_HOST, 0))
        # A timeout instead of closing the socket under accept(): closing does not
        # reliably wake a blocked accept() on every platform.
        listener.settimeout(_ACCEPT_POLL)
        self._port = listener.getsockname()[1]
        thread = threading.Thread(
            target=self._accept_loop,
            args=(listener,),
            name=f"FaultServer-{self._port}-accept",
            daemon=True,
        )
        self._accept_thread = thread
        thread.start()

    def stop(self) -> None:
        """Stop accepting, interrupt every behaviour in flight and close all connections.

        Returns promptly even with `Hang` or `Drip` in progress. Safe to call more than
        once, and before `start`.
        """
        accept_thread = self._accept_thread
        if accept_thread is None:
            return
        self._accept_thread = None
        self._stopping.set()
        # Joined first so that no connection can be registered after the sweep below.
        accept_thread.join()
        with self._lock:
            connections = list(self._open.values())
            # Shutting down wakes threads blocked in recv()/send() at once; each thread
            # then closes its own socket, which avoids closing a socket in use elsewhere.
            for conn in connections:
                _shutdown_quietly(conn.sock, socket.SHUT_RDWR)
        deadline = time.monotonic() + _STOP_JOIN_TIMEOUT
        current = threading.current_thread()
        for conn in connections:
            if conn.thread is not None and conn.thread is not current:
                conn.thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            stuck = list(self._open.values())
        for conn in stuck:  # should not happen; close anyway rather than leak the socket
            with contextlib.suppress(OSError):
                conn.sock.close()

    def _accept_loop(self, listener: socket.socket) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    sock, _ = listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    if self._stopping.is_set():
                        break
                    # ECONNABORTED, EMFILE and the like pass; back off instead of spinning.
                    self._stopping.wait(_ACCEPT_POLL)
                    continue
                self._register(sock)
        finally:
            listener.close()

    def _register(self, sock: socket.socket) -> None:
        sock.settimeout(None)
        # Without TCP_NODELAY, Nagle's algorithm would batch the bytes of a Drip. It fails
        # only if the client is already gone, which the connection thread finds out anyway.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            if self._stopping.is_set():
                sock.close()
                return
            self._connection_count += 1
            conn = _Connection(next(self._connection_ids), sock)
            self._open[conn.id] = conn
        conn.thread = threading.Thread(
            target=self._handle_connection,
            args=(conn,),
            name=f"FaultServer-{self._port}-conn-{conn.id}",
            daemon=True,
        )
        conn.thread.start()

    def _handle_connection(self, conn: _Connection) -> None:
        try:
            self._serve(conn)
        except (OSError, _ClientGone):
            # Clients disconnecting at any point is normal for a fault server (ssl.SSLError
            # is an OSError too): end the connection without a traceback on stderr.
            pass
        finally:
            with self._lock:
                self._open.pop(conn.id, None)
            with contextlib.suppress(OSError):
                conn.sock.close()

    def _serve(self, conn: _Connection) -> None:
        sock = conn.sock
        peer_cert: dict[str, Any] | None = None
        if self._ssl_context is not None:
            with self._lock:
                if self._stopping.is_set():
                    return
                # Not handshaking yet: wrapping is quick, so doing it under the lock lets
                # stop() always see the socket that is actually in use.
                tls = _wrap_server_side(self._ssl_context, sock)
                conn.sock = sock = tls
            tls.do_handshake()
            peer_cert = tls.getpeercert() or None
        reader = _Reader(sock)
        while not self._stopping.is_set():
            try:
                request = _read_request(reader, sock)
            except _BadRequest:
                sock.sendall(_BAD_REQUEST)
                return
            with self._lock:
                self._requests.append(
                    RecordedRequest(
                        method=request.method,
                        path=request.target,
                        headers=request.headers,
                        body=request.body,
                        connection_id=conn.id,
                        peer_cert=peer_cert,
                    )
                )
                behaviour = self._queue.popleft() if self._queue else self._default
            if not self._perform(behaviour, sock, request):
                return

    def _perform(self, behaviour: Behaviour, sock: socket.socket, request: _Request) -> bool:
        """Carry out `behaviour`; return whether to keep reading from the connection."""
        if isinstance(behaviour, Chaos):
            behaviour = behaviour.draw()
        if isinstance(behaviour, Respond):
            return self._respond(behaviour, sock, request)
        if isinstance(behaviour, Drip):
            return self._drip(behaviour, sock, request)
        if isinstance(behaviour, Reset):
            # Linger on with a zero timeout makes close() send RST instead of FIN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False
        if isinstance(behaviour, Close):
            # FIN now, before the caller's close(), so the client sees a clean EOF.
            _shutdown_quietly(sock, socket.SHUT_WR)
            return False
        self._stopping.wait(behaviour.seconds)
        return False

    def _respond(self, behaviour: Respond, sock: socket.socket, request: _Request) -> bool:
        if behaviour.delay > 0 and self._stopping.wait(behaviour.delay):
            return False
        given = dict(behaviour.headers or {})
        given_lower = {name.lower(): value for name, value in given.items()}
        keep_alive = request.keep_alive and given_lower.get("connection", "").lower() != "close"
        has_body = behaviour.status >= 200 and behaviour.status not in (204, 304)
        headers = list(given.items())
        if has_body and not {"content-length", "transfer-encoding"} & given_lower.keys():
            headers.append(("Content-Length", str(len(behaviour.body))))
        if "connection" not in given_lower:
            headers.extend(_connection_header(request, keep_alive))
        body = behaviour.body if has_body and request.method != "HEAD" else b""
        sock.sendall(_head(behaviour.status, headers) + body)
        return keep_alive

    def _drip(self, behaviour: Drip, sock: socket.socket, request: _Request) -> bool:
        headers = [("Content-Length", str(len(behaviour.body)))]
        headers.extend(_connection_header(request, request.keep_alive))
        sock.sendall(_head(behaviour.status, headers))
        if request.method == "HEAD":
            return request.keep_alive
        for index in range(len(behaviour.body)):
            if self._stopping.wait(behaviour.interval):
                return False
            sock.sendall(behaviour.body[index : index + 1])
        return request.keep_alive
