"""Response bodies bounded by the call's deadline.

httpx's client, not the transport, reads the body, and httpcore fixes its
read timeout once per response, so a server that drips a byte at a time
never trips it. The transport therefore hands back a stream that:

- sets httpcore's read timeout to what is left when the body starts, which
  cuts a server that stops sending;
- returns at once when the first chunk holds the whole body (the common case
  costs no timer);
- otherwise bounds the rest: in sync code a watchdog thread shuts the socket
  down when time runs out (a blocked ``recv`` cannot be interrupted any other
  way); in async code each further chunk is read under ``anyio.fail_after``.

Either way the reader gets `DeadlineExceeded`, and the connection is closed
rather than returned to the pool half-read.

Async bodies are closed where no cancellation can interrupt the close
halfway, with or without a deadline (see `close_shielded`).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import socket
import threading
import time
import types
from collections.abc import AsyncIterator, Coroutine, Generator, Iterator
from functools import partial
from typing import Any

import anyio
import httpx

from ._compat import HEADERS_EDITABLE, HTTPX_ASYNC_STREAM, header_items
from ._deadline import DEADLINE_SLACK
from ._errors import DeadlineExceeded
from ._runtime import runtime

__all__ = ["AsyncDeadlineStream", "SyncDeadlineStream", "close_shielded", "watchdog"]


class _Watch:
    __slots__ = ("done", "fired", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.done = False
        self.fired = False


class Watchdog:
    """One thread that shuts sockets down when their deadline passes.

    Started on first use. Entries are kept in a heap by real monotonic time
    (not the injectable clock: the thread really waits); finished entries are
    dropped lazily and the heap is compacted when they pile up.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _Watch]] = []
        self._order = itertools.count()
        self._wake = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self._compact_at = 4096

    def watch(self, sock: socket.socket, seconds: float) -> _Watch:
        """Shut `sock` down in `seconds` unless the returned entry is marked done first."""
        entry = _Watch(sock)
        at = time.monotonic() + seconds
        with self._wake:
            heapq.heappush(self._heap, (at, next(self._order), entry))
            if len(self._heap) >= self._compact_at:
                self._heap = [item for item in self._heap if not item[2].done]
                heapq.heapify(self._heap)
                self._compact_at = max(4096, 2 * len(self._heap))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="meshlib-deadline-watchdog", daemon=True
                )
                self._thread.start()
            elif self._heap[0][2] is entry:
                self._wake.notify()
        return entry

    def _run(self) -> None:
        with self._wake:
            while True:
                now = time.monotonic()
                while self._heap and (self._heap[0][0] <= now or self._heap[0][2].done):
                    _, _, entry = heapq.heappop(self._heap)
                    if not entry.done:
                        entry.fired = True
                        # The base class's shutdown, so an SSLSocket keeps its SSL
                        # object for the reader thread to fail on cleanly; an
                        # OSError means it is closed already: nothing left to cut.
                        with contextlib.suppress(OSError):
                            socket.socket.shutdown(entry.sock, socket.SHUT_RDWR)
                self._wake.wait(self._heap[0][0] - now if self._heap else None)


watchdog = Watchdog()


def _expected_length(response_headers: httpx.Headers) -> int | None:
    if HEADERS_EDITABLE:
        # A scan of httpx's own (raw, lowercase, value) list: Headers.get re-encodes
        # every header, which cost more than the rest of this stream on each response.
        for _, name, raw in header_items(response_headers):
            if name == b"content-length":
                return int(raw) if raw.isdigit() else None
        return None
    value = response_headers.get("content-length")  # pragma: no cover - a future httpx
    if value is not None and value.isdigit():  # pragma: no cover
        return int(value)
    return None  # pragma: no cover


def _bound_body_read(request: httpx.Request, left: float) -> None:
    # httpcore reads the read timeout when the body starts: make it what is left.
    timeouts = request.extensions.get("timeout") or {}
    read = timeouts.get("read")
    if read is None or read > left:
        # A new dict: the caller's own may be shared with other requests. The
        # caller's own come back when the body is closed (`restore`).
        request.extensions["timeout"] = {**timeouts, "read": left}


def _restore(request: httpx.Request, timeouts: dict[str, float | None] | None) -> None:
    # The caller's own timeouts, once the call is over: a request sent again starts from them.
    if timeouts is not None and request.extensions.get("timeout") is not timeouts:
        request.extensions["timeout"] = timeouts


def _expired(label: str, request: httpx.Request) -> DeadlineExceeded:
    return DeadlineExceeded(f"deadline exceeded reading the body from {label}", request=request)


class SyncDeadlineStream(httpx.SyncByteStream):
    """A sync response body that ends in `DeadlineExceeded` when the deadline passes."""

    def __init__(
        self,
        inner: httpx.SyncByteStream,
        request: httpx.Request,
        response: httpx.Response,
        deadline_at: float,
        label: str,
        restore: dict[str, float | None] | None = None,
    ) -> None:
        self._inner = inner
        self._request = request
        self._response = response
        self._deadline_at = deadline_at
        self._label = label
        self._restore = restore  # the caller's own timeouts, put back on close
        self._watch: _Watch | None = None

    def __iter__(self) -> Iterator[bytes]:
        clock = runtime.clock
        left = self._deadline_at - clock.now()
        if left <= 0.0:
            self.close()
            raise _expired(self._label, self._request)
        _bound_body_read(self._request, left)
        expected = _expected_length(self._response.headers)
        received = 0
        try:
            for chunk in self._inner:
                received += len(chunk)
                yield chunk
                left = self._deadline_at - clock.now()
                if left <= 0.0:
                    raise _expired(self._label, self._request)
                if self._watch is None and (expected is None or received < expected):
                    self._start_watch(left)
        except DeadlineExceeded:
            raise
        except Exception as exc:
            if (self._watch is not None and self._watch.fired) or (
                self._deadline_at - clock.now() <= DEADLINE_SLACK
            ):
                raise _expired(self._label, self._request) from exc
            raise
        finally:
            if self._watch is not None:
                self._watch.done = True

    def _start_watch(self, left: float) -> None:
        network_stream: Any = self._response.extensions.get("network_stream")
        sock = network_stream.get_extra_info("socket") if network_stream is not None else None
        if isinstance(sock, socket.socket):
            self._watch = watchdog.watch(sock, left)
        # No socket of its own (HTTP/2 multiplexes one; a mock has none): the
        # check between chunks above is all that applies.

    def close(self) -> None:
        if self._watch is not None:
            self._watch.done = True
        _restore(self._request, self._restore)
        self._inner.close()


# Closes still running after their caller was cancelled: asyncio keeps only weak
# references to tasks, and a close must not be collected halfway.
_closing: set[asyncio.Task[None]] = set()


def _finished(task: asyncio.Task[None]) -> None:
    _closing.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: nobody is left to be told, and asyncio would warn


async def close_shielded(stream: httpx.AsyncByteStream) -> None:
    """Close `stream` so that a cancellation cannot stop the close halfway.

    A close interrupted inside httpcore leaves its pooled connection marked in
    use for good (the encode/httpcore#1093 family). anyio's shield holds off
    anyio's own cancellations but not asyncio's ``task.cancel()`` (which
    ``asyncio.timeout``, ``TaskGroup`` and servers dropping a request use).
    On asyncio, then:

    - httpx's own body (its `AsyncHTTPTransport`'s) is closed in the caller's
      task, and a cancellation that arrives meanwhile is held back until the
      close is done, then raised. That close waits for no I/O (httpcore's
      lock on the connection, then its pool's bookkeeping: a loop iteration or
      two), so the cancellation still arrives at once; the caller's task is
      never switched, which is what httpcore's anyio lock and cancel scopes
      need, and no task is made for the common case.
    - Any other body, whose close may wait on anything, is closed in a task
      of its own under ``asyncio.shield``: the caller's cancellation arrives
      at once, and the close finishes behind it.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # another backend (trio): its cancellation honours the shield
        with anyio.CancelScope(shield=True):
            await stream.aclose()
        return
    if type(stream) is HTTPX_ASYNC_STREAM:
        await _close_uncut(stream.aclose(), loop)
        return
    closing = loop.create_task(stream.aclose())
    try:
        await asyncio.shield(closing)
    except asyncio.CancelledError:
        _closing.add(closing)
        closing.add_done_callback(_finished)
        raise


def _wake(waiter: asyncio.Future[None], _: object) -> None:
    if not waiter.done():
        waiter.set_result(None)


@types.coroutine
def _close_uncut(
    close: Coroutine[Any, Any, None], loop: asyncio.AbstractEventLoop
) -> Generator[Any, None, None]:
    """Drive `close` in the caller's task without ever throwing a cancellation into it.

    asyncio resumes a task with ``send(None)`` whatever it waited for, so the
    close's own steps are passed on as they are, except that a future it
    waits on is watched through one of this driver's own: a ``task.cancel()``
    cancels the future the task waits on, and that must not be the close's.
    The first cancellation caught meanwhile is raised when the close is done
    (or has failed: nobody is left to be told of its error).
    """
    cancelled: asyncio.CancelledError | None = None
    try:
        step = close.send(None)
        while True:
            if step is None:  # a bare yield: one turn of the loop
                try:
                    yield None
                except asyncio.CancelledError as exc:
                    cancelled = cancelled or exc
            else:  # it waits on a future
                while not step.done():
                    waiter = loop.create_future()
                    step.add_done_callback(partial(_wake, waiter))
                    try:
                        yield from waiter
                    except asyncio.CancelledError as exc:
                        cancelled = cancelled or exc
            step = close.send(None)
    except StopIteration:
        pass
    except Exception:
        if cancelled is None:
            raise
    if cancelled is not None:
        raise cancelled


class AsyncDeadlineStream(httpx.AsyncByteStream):
    """An async response body that ends in `DeadlineExceeded` when the deadline passes.

    With `deadline_at` None, the body is passed through as it is, and only its
    close is made safe from cancellation.
    """

    def __init__(
        self,
        inner: httpx.AsyncByteStream,
        request: httpx.Request,
        response: httpx.Response,
        deadline_at: float | None,
        label: str,
        restore: dict[str, float | None] | None = None,
    ) -> None:
        self._inner = inner
        self._request = request
        self._response = response
        self._deadline_at = deadline_at
        self._label = label
        self._restore = restore  # the caller's own timeouts, put back on close

    def __aiter__(self) -> AsyncIterator[bytes]:
        if self._deadline_at is None:
            return self._inner.__aiter__()
        return self._bounded(self._deadline_at)

    async def _bounded(self, deadline_at: float) -> AsyncIterator[bytes]:
        clock = runtime.clock
        left = deadline_at - clock.now()
        if left <= 0.0:
            await self.aclose()
            raise _expired(self._label, self._request)
        _bound_body_read(self._request, left)
        expected = _expected_length(self._response.headers)
        chunks = self._inner.__aiter__()
        received = 0
        while True:
            try:
                if expected is not None and received >= expected:
                    # The whole body is in: what remains is h11 seeing its end,
                    # which needs no timer.
                    chunk = await chunks.__anext__()
                elif received == 0:
                    # The first read is bounded by httpcore's read timeout set
                    # above; a cancel scope here would cost every response.
                    chunk = await chunks.__anext__()
                else:
                    with anyio.fail_after(left):
                        chunk = await chunks.__anext__()
            except StopAsyncIteration:
                return
            except TimeoutError as exc:  # only fail_after(left) raises this: time is up
                raise _expired(self._label, self._request) from exc
            except httpx.TimeoutException as exc:
                if deadline_at - clock.now() <= DEADLINE_SLACK:
                    raise _expired(self._label, self._request) from exc
                raise
            received += len(chunk)
            yield chunk
            left = deadline_at - clock.now()
            if left <= 0.0:
                await self.aclose()
                raise _expired(self._label, self._request)

    async def aclose(self) -> None:
        _restore(self._request, self._restore)
        await close_shielded(self._inner)
