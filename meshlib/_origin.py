"""The connections meshlib opens itself: one inner transport per `TLS` a policy names.

A request whose plan has ``tls`` (a `Policy`'s TLS origination) does not go
through the caller's inner transport but through one meshlib makes for that
TLS value: httpx's own ``HTTPTransport`` (or ``AsyncHTTPTransport``) with
``verify=tls.ssl_context()``, so every connection presents the policy's
certificate and verifies the server with its CA and names, and a rotation
(``reload=True``) reaches every new connection. `Origins` keeps them per
meshlib transport, at most `CAPACITY`, and hands them back to be closed with
it; the success path to a destination without ``tls`` never comes here.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import httpx

from ._tls import TLS

__all__ = ["CAPACITY", "Origins", "async_transport", "sync_transport"]

#: Inner transports kept per meshlib transport: one per distinct TLS value (in Istio, one
#: per service identity called); beyond it, the least recently used one is closed.
CAPACITY = 256

T = TypeVar("T")


def sync_transport(tls: TLS) -> httpx.HTTPTransport:
    """Return a new sync inner transport that connects with `tls`."""
    return httpx.HTTPTransport(verify=tls.ssl_context())


def async_transport(tls: TLS) -> httpx.AsyncHTTPTransport:
    """Return a new async inner transport that connects with `tls`."""
    return httpx.AsyncHTTPTransport(verify=tls.ssl_context())


class Origins(Generic[T]):
    """The inner transports made for TLS values, by value; thread-safe.

    Equal TLS values share one transport (a policy reloaded from the same file
    builds an equal one). The last one handed out is checked first, by identity,
    so a destination's requests find theirs without hashing the value.
    """

    __slots__ = ("_last", "_lock", "_make", "_open")

    def __init__(self, make: Callable[[TLS], T]) -> None:
        self._make = make
        self._open: OrderedDict[TLS, T] = OrderedDict()
        self._lock = threading.Lock()
        self._last: tuple[TLS, T] | None = None

    def get(self, tls: TLS) -> tuple[T, Sequence[T]]:
        """Return the transport for `tls`, and those it pushed out, for the caller to close."""
        last = self._last
        if last is not None and last[0] is tls:
            return last[1], ()
        found = self._open.get(tls)
        evicted: list[T] = []
        if found is not None:
            # Lock-free, as BoundedMap's hits; KeyError: closed meanwhile.
            try:  # noqa: SIM105 - suppress() would cost an object per hit
                self._open.move_to_end(tls)
            except KeyError:
                pass
        else:
            with self._lock:
                found = self._open.get(tls)
                if found is None:
                    found = self._open[tls] = self._make(tls)
                    while len(self._open) > CAPACITY:
                        oldest = next(iter(self._open))
                        if last is not None and oldest == last[0]:
                            # The one in constant use never reaches the end of the order.
                            self._open.move_to_end(oldest)
                            continue
                        evicted.append(self._open.pop(oldest))
        self._last = (tls, found)
        return found, evicted

    def close_all(self) -> list[T]:
        """Forget every transport and return them, for the caller to close."""
        with self._lock:
            every = list(self._open.values())
            self._open.clear()
            self._last = None
        return every
