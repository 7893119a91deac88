"""Per-destination state in bounded maps.

State (budgets, breakers, bulkheads, endpoint pools, latency windows) is keyed
by the normalised destination and the layer's own settings, so clients that share a `Mesh`
share it, and a change of settings starts fresh state.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, NamedTuple, TypeVar

import httpx

__all__ = ["BoundedMap", "Destination", "SharedState"]

K = TypeVar("K")
V = TypeVar("V")

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


class Destination(NamedTuple):
    """A normalised destination: scheme, lowercase host without a trailing dot, port."""

    scheme: str
    host: str
    port: int

    @classmethod
    def of(cls, url: httpx.URL) -> Destination:
        """Return the destination `url` points at, with the default port filled in."""
        scheme = url.scheme.lower()
        port = url.port if url.port is not None else _DEFAULT_PORTS.get(scheme, 0)
        return cls(scheme, url.host.lower().rstrip("."), port)

    def __str__(self) -> str:
        if self.scheme == "function":
            return self.host
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


class BoundedMap(Generic[K, V]):
    """A thread-safe map that keeps the `capacity` most recently used entries.

    Lookups take no lock: a dict read and OrderedDict's move_to_end are each
    atomic under the GIL, and keys here are tuples of ints and strings, whose
    hashing runs no Python code. Inserts and evictions take the lock.
    """

    __slots__ = ("_data", "_lock", "capacity")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._data: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        """Return the value for `key` and mark it recently used, or None."""
        value = self._data.get(key)
        if value is not None:
            # suppress() would cost an object per hit; KeyError: evicted meanwhile.
            try:  # noqa: SIM105
                self._data.move_to_end(key)
            except KeyError:
                pass
        return value

    def replace(self, key: K, value: V) -> V:
        """Store `value` under `key` as the most recently used entry and return it."""
        with self._lock:
            self._data.pop(key, None)
            return self._insert(key, value)

    def _insert(self, key: K, value: V) -> V:
        self._data[key] = value
        if len(self._data) > self.capacity:
            self._data.popitem(last=False)
        return value

    def clear(self) -> None:
        """Forget every entry."""
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)

    def values(self) -> list[V]:
        """Return a snapshot of the entries, least recently used first."""
        with self._lock:
            return list(self._data.values())


class SharedState(Generic[K, V]):
    """Per-destination state (budgets, breakers, ...), shared by every plan using it.

    Held weakly: a state lives exactly as long as some cached plan uses it,
    so it is bounded by the plan map and is never split in two while in use
    (a strong map of its own could evict a busy destination's state while
    a plan still holds it, and the next plan would get a fresh copy).
    """

    __slots__ = ("_data", "_lock")

    def __init__(self) -> None:
        self._data: weakref.WeakValueDictionary[K, V] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()

    def get_or_create(self, key: K, create: Callable[[], V]) -> V:
        """Return the live state for `key`, creating it if no plan holds one."""
        with self._lock:
            value = self._data.get(key)
            if value is None:
                value = create()
                self._data[key] = value
            return value

    def clear(self) -> None:
        """Forget every entry (plans that hold one keep using it)."""
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)

    def values(self) -> list[V]:
        """Return a snapshot of the live states."""
        with self._lock:
            return list(self._data.values())
