"""Graceful fallback: what a call that finally failed answers instead, decided without I/O.

Two levels (docs/fallback.md):

- **Stale-if-error** (RFC 5861): the last good response to the same idempotent
  request, kept in a bounded store per destination (`StaleStore`: entries and
  bytes, least recently used out first) for `Fallback.stale` seconds, served
  with ``x-meshlib-fallback: stale`` and an ``Age`` header.
- **A static answer** (`Fallback.status`, ``headers``, ``content``), marked
  ``x-meshlib-fallback: static``, when nothing fresh enough is stored.

`FallbackPlan` holds the decisions: which requests may have a fallback (the
retry layer's idempotency rule), what identifies "the same request" (method,
URL, ``Idempotency-Key``, body, and the values of the headers the response's
``Vary`` names), which responses are kept, how old a kept one is, and the
answer to serve. `_call.Call` asks it at the one place a call ends in failure
and the one place a good response is handed back; with fallback off, a call
never reaches this module.

A body is kept as the caller reads it: `SyncCapture` and `AsyncCapture`
wrap the response stream and store the entry when the body has been read to
its end, so a streaming caller is never made to buffer. A body larger than
`Fallback.max_body` is passed through untouched and not kept.

Over 400 lines because the store, the key, freshness and the body capture are one
contract (a copy is served only if it was kept whole, fresh and for the same
request); split, each part would have to trust the others' invariants.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from typing import cast

import httpx

from ._compat import HEADERS_EDITABLE, header_items
from ._errors import BulkheadFull, CircuitOpen, DeadlineExceeded, MeshError
from ._headers import header_values
from ._policy import Fallback, Retry
from ._retry import body_is_replayable, request_is_idempotent

__all__ = [
    "KEPT_STATUSES",
    "AsyncCapture",
    "FallbackPlan",
    "StaleStore",
    "SyncCapture",
    "failure_reason",
    "function_failure_reason",
]

#: Statuses kept for stale-if-error: answers that are the resource itself, whole.
#: 201 and 202 describe one request's effect, 206 one Range of the body.
KEPT_STATUSES = frozenset({200, 203, 204})
#: The header that marks an answer given by the fallback, and how ("stale", "static").
MARK = "x-meshlib-fallback"
# Never replayed from the store: hop-by-hop headers (RFC 9110 7.6.1), the length
# (set again from the kept body), Age (computed when served) and Set-Cookie (one
# caller's session must never reach another through a shared store).
_DROPPED = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"te",
        b"trailer",
        b"upgrade",
        b"content-length",
        b"age",
        b"set-cookie",
        MARK.encode("ascii"),
    }
)
_DROPPED_FOR_HEAD = _DROPPED - {b"content-length"}
# Cache-Control directives that let a shared cache keep an answer to an authenticated request.
_SHARED_MAY = frozenset({b"public", b"s-maxage", b"must-revalidate"})
# What an entry costs beyond its body and headers (the objects holding them), for max_bytes.
_ENTRY_OVERHEAD = 200
_DEFAULT_RETRY = Retry()

Key = tuple[str, str, tuple[bytes, ...], bytes | None]
Vary = tuple[tuple[bytes, tuple[bytes, ...]], ...]


def failure_reason(exc: Exception) -> str | None:
    """Return the `Fallback.on` trigger a request's final exception stands for, or None.

    meshlib's own refusals by name; any other transport error (connection,
    timeout, protocol) is ``"error"``; anything else is not a failure of the
    destination (a bug, a bad argument) and never falls back.
    """
    if isinstance(exc, CircuitOpen):
        return "circuit_open"
    if isinstance(exc, BulkheadFull):
        return "bulkhead_full"
    if isinstance(exc, DeadlineExceeded):
        return "deadline"
    if isinstance(exc, httpx.TransportError) and not isinstance(exc, MeshError):
        return "error"
    return None


def function_failure_reason(exc: Exception, matches: Callable[[Exception], bool]) -> str | None:
    """Return why a `resilient` function's call failed, or None when `exc` is not a failure.

    meshlib's refusals, and the exceptions `on` covers (`matches`); an
    exception `on` does not cover is not a failure `resilient` handles.
    """
    if isinstance(exc, CircuitOpen | BulkheadFull | DeadlineExceeded):
        return failure_reason(exc)
    if isinstance(exc, MeshError):
        return None
    return "error" if matches(exc) else None


class Entry:
    """One kept response: what is served again, and what it was an answer to."""

    __slots__ = ("age", "content", "head", "headers", "size", "status", "stored_at", "vary")

    def __init__(
        self,
        status: int,
        headers: tuple[tuple[bytes, bytes, bytes], ...],
        head: bool,
        vary: Vary,
        stored_at: float,
        age: int,
        size: int,
    ) -> None:
        self.status = status
        # As httpx holds them, (name, lowercase name, value), all of them: what is not
        # replayed is left out when served (the failure path), not on every response.
        self.headers = headers
        self.head = head  # an answer to HEAD: its Content-Length is the GET body's
        self.vary = vary
        self.stored_at = stored_at
        self.age = age  # the response's own Age when it arrived (a cache upstream)
        self.content = b""
        self.size = _ENTRY_OVERHEAD + size

    def replayed_headers(self) -> list[tuple[bytes, bytes]]:
        """Return the headers served again: without hop-by-hop ones, Set-Cookie, Age."""
        dropped = _DROPPED_FOR_HEAD if self.head else _DROPPED
        return [(name, value) for name, lower, value in self.headers if lower not in dropped]


class StaleStore:
    """The good responses kept for one destination: at most `max_entries` and `max_bytes`.

    Least recently used (stored or served) out first. Thread-safe; the lock
    is held only to change the map, never across I/O.
    """

    __slots__ = ("__weakref__", "_entries", "_lock", "bytes", "max_bytes", "max_entries")

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0  # the sizes of the entries held, bodies and headers
        self._entries: OrderedDict[Key, Entry] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, key: Key, entry: Entry) -> None:
        """Keep `entry` as the answer to `key`, replacing any older one; evict to the bounds."""
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.bytes -= old.size
            if entry.size > self.max_bytes:
                return  # would push out everything else, and still not fit
            self._entries[key] = entry
            self.bytes += entry.size
            while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self.bytes -= evicted.size

    def get(self, key: Key) -> Entry | None:
        """Return the entry for `key`, marking it recently used, or None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def discard(self, key: Key, entry: Entry | None = None) -> None:
        """Forget the entry for `key` (only if it is still `entry`, when given)."""
        with self._lock:
            found = self._entries.get(key)
            if found is not None and (entry is None or found is entry):
                del self._entries[key]
                self.bytes -= found.size


def _items(headers: httpx.Headers) -> tuple[tuple[bytes, bytes, bytes], ...]:
    """Return `headers` as httpx holds them: (name, lowercase name, value), copied."""
    if HEADERS_EDITABLE:
        return tuple(header_items(headers))
    return tuple((k, k.lower(), v) for k, v in headers.raw)  # pragma: no cover - a future httpx


def _varied(request: httpx.Request, names: list[bytes]) -> Vary:
    headers = request.headers
    return tuple((name, header_values(headers, name)) for name in names)


class FallbackPlan:
    """One destination's fallback: the `Fallback` settings, its store, and every decision.

    Args:
        settings: the policy's `Fallback`.
        store: where good responses are kept; None when `settings.stale` is None.
        retry: the policy's retry layer: its methods say which requests are
            idempotent, its statuses which final responses count as failed.
    """

    __slots__ = ("failed_statuses", "on", "retry", "settings", "store")

    def __init__(self, settings: Fallback, store: StaleStore | None, retry: Retry | None) -> None:
        self.settings = settings
        self.store = store
        self.on = settings.on
        # With retries off, the default Retry's methods and statuses say what is
        # idempotent and what is a failed answer.
        self.retry = retry or _DEFAULT_RETRY
        # RFC 5861's errors (500, 502, 503, 504) and every other 5xx, and whatever
        # the retry layer retries: a final answer of one of these failed.
        self.failed_statuses = frozenset(range(500, 600)) | self.retry.on_status

    # --- keys ----------------------------------------------------------------------

    def key(self, request: httpx.Request, body: object) -> Key | None:
        """Return what identifies `request` in the store, or None if it may have no stale copy.

        Only idempotent requests (the retry methods, or an ``Idempotency-Key``)
        whose body is known (bytes, not a one-shot stream): the key holds the
        method, the URL, the ``Idempotency-Key`` and a digest of the body, so a
        PUT with another body, or a POST with another key, is another request.
        """
        method = request.method
        idempotency_key = header_values(request.headers, b"idempotency-key")
        if (method not in self.retry.methods and not idempotency_key) or not (
            body_is_replayable(body)
        ):
            return None
        assert isinstance(body, httpx.ByteStream)
        content = b"".join(body)  # not `request.content`: a request built with stream= is unread
        digest = hashlib.blake2b(content, digest_size=16).digest() if content else None
        return (method, str(request.url), idempotency_key, digest)

    # --- a good response: keep it ------------------------------------------------

    def keep(
        self,
        request: httpx.Request,
        body: object,
        response: httpx.Response,
        now: float,
        asynchronous: bool,
    ) -> None:
        """Keep `response` (handed back to the caller) as `request`'s stale copy, if it may be.

        A body already in memory is kept at once; a streamed one is captured as
        the caller reads it (`response.stream` is wrapped), and kept once read
        to its end. Responses that may not be kept are passed through
        untouched, and a copy kept earlier for the same request is forgotten
        (the destination's newest answer said not to keep it).
        """
        store = self.store
        if store is None or response.status_code not in KEPT_STATUSES:
            return
        key = self.key(request, body)
        if key is None:
            return
        entry = self._entry(request, response, now)
        if entry is None:
            store.discard(key)
            return
        stream = response.stream
        if isinstance(stream, httpx.ByteStream):
            content = b"".join(stream)
            if len(content) <= self.settings.max_body:
                entry.content = content
                entry.size += len(content)
                store.put(key, entry)
            return
        length = response.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.settings.max_body:
            return
        recorder = _Recorder(store, key, entry, self.settings.max_body)
        if asynchronous:
            response.stream = AsyncCapture(cast(httpx.AsyncByteStream, stream), recorder)
        else:
            response.stream = SyncCapture(cast(httpx.SyncByteStream, stream), recorder)

    def _entry(self, request: httpx.Request, response: httpx.Response, now: float) -> Entry | None:
        """Return a new entry for `response` (its body still to come), or None if not to keep."""
        # One pass over the headers as httpx holds them: this runs for every good response.
        directives: set[bytes] = set()
        names: list[bytes] = []
        age = size = 0
        items = _items(response.headers)
        for name, lower, value in items:
            size += len(name) + len(value)
            if lower == b"cache-control":
                directives.update(d.partition(b"=")[0].strip().lower() for d in value.split(b","))
            elif lower == b"vary":
                for part in value.split(b","):
                    varied = part.strip().lower()
                    if varied == b"*":
                        return None  # no later request is the same
                    if varied:
                        names.append(varied)
            elif lower == b"age" and value.isdigit():
                age = int(value)
        if not self.settings.keep_private and (
            b"no-store" in directives
            or b"private" in directives
            # RFC 9111 3.5: a shared store keeps an answer to an authenticated
            # request only when the response says a shared cache may.
            or (header_values(request.headers, b"authorization") and not directives & _SHARED_MAY)
        ):
            return None
        assert self.settings.stale is not None
        if age > self.settings.stale:
            return None
        return Entry(
            response.status_code,
            items,
            request.method == "HEAD",
            _varied(request, names),
            now,
            age,
            size,
        )

    # --- a failed call: what to answer -------------------------------------------

    def answer(
        self, request: httpx.Request, body: object, reason: str, now: float
    ) -> tuple[httpx.Response, str] | None:
        """Return the answer to a call that failed for `reason`, and how ("stale", "static").

        None: `reason` is not one of `on`, the request is not idempotent, or
        there is neither a fresh enough stale copy nor a static answer.
        """
        if reason not in self.on or not request_is_idempotent(request, self.retry):
            return None
        store = self.store
        key = self.key(request, body) if store is not None else None
        if key is not None:
            assert store is not None
            assert self.settings.stale is not None
            entry = store.get(key)
            if entry is not None:
                age = entry.age + (now - entry.stored_at)
                if age > self.settings.stale:
                    store.discard(key, entry)
                elif entry.vary == _varied(request, [name for name, _ in entry.vary]):
                    headers = [
                        *entry.replayed_headers(),
                        (b"age", b"%d" % age),
                        (MARK.encode("ascii"), b"stale"),
                    ]
                    return (
                        httpx.Response(
                            entry.status, headers=headers, content=entry.content, request=request
                        ),
                        "stale",
                    )
        settings = self.settings
        if settings.status is None:
            return None
        content = settings.content
        assert isinstance(content, bytes)
        return (
            httpx.Response(
                settings.status,
                headers=[*(settings.headers or ()), (MARK, "static")],
                content=content,
                request=request,
            ),
            "static",
        )


class _Recorder:
    """Collects a body as the caller reads it, up to a limit; keeps the entry at its end."""

    __slots__ = ("chunks", "entry", "key", "limit", "size", "store")

    def __init__(self, store: StaleStore, key: Key, entry: Entry, limit: int) -> None:
        self.store = store
        self.key = key
        self.entry = entry
        self.limit = limit
        self.size = 0
        self.chunks: list[bytes] | None = []  # None: too large, no longer collected

    def add(self, chunk: bytes) -> None:
        chunks = self.chunks
        if chunks is not None:
            self.size += len(chunk)
            if self.size > self.limit:
                self.chunks = None
            else:
                chunks.append(chunk)

    def finish(self) -> None:
        """The body was read to its end: keep the entry (unless it grew too large)."""
        chunks = self.chunks
        if chunks is not None:
            self.chunks = None  # kept once, even if the body is iterated again
            entry = self.entry
            entry.content = b"".join(chunks)
            entry.size += len(entry.content)
            self.store.put(self.key, entry)


class SyncCapture(httpx.SyncByteStream):
    """A sync response body that hands each chunk to the caller and to a `_Recorder`."""

    def __init__(self, inner: httpx.SyncByteStream, recorder: _Recorder) -> None:
        self._inner = inner
        self._recorder = recorder

    def __iter__(self) -> Iterator[bytes]:
        recorder = self._recorder
        for chunk in self._inner:
            recorder.add(chunk)
            yield chunk
        recorder.finish()  # only a body read to its end is kept

    def close(self) -> None:
        self._inner.close()


class AsyncCapture(httpx.AsyncByteStream):
    """An async response body that hands each chunk to the caller and to a `_Recorder`."""

    def __init__(self, inner: httpx.AsyncByteStream, recorder: _Recorder) -> None:
        self._inner = inner
        self._recorder = recorder

    async def __aiter__(self) -> AsyncIterator[bytes]:
        recorder = self._recorder
        async for chunk in self._inner:
            recorder.add(chunk)
            yield chunk
        recorder.finish()

    async def aclose(self) -> None:
        await self._inner.aclose()
