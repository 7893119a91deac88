"""Helpers for testing code that uses meshlib.

- `set_testing` removes backoff waits (a switch, also a context manager).
- `FakeClock`, `use_clock` and `use_random` make timing and jitter exact.
- `reset` forgets the process-wide default Mesh and its per-destination state.
- `FaultServer` is a real HTTP server on 127.0.0.1 that injects faults; it and its
  behaviours (`Respond`, `Reset`, `Close`, `Hang`, `Drip`, `Chaos`, `RecordedRequest`)
  live in `meshlib.testing.faults`, imported on first use, so that importing
  `FakeClock` opens no socket code.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio

from .._mesh import forget_default_mesh
from .._runtime import Clock, runtime

if TYPE_CHECKING:
    from .faults import Chaos, Close, Drip, FaultServer, Hang, RecordedRequest, Reset, Respond

__all__ = [
    "Chaos",
    "Close",
    "Drip",
    "FakeClock",
    "FaultServer",
    "Hang",
    "RecordedRequest",
    "Reset",
    "Respond",
    "reset",
    "set_testing",
    "use_clock",
    "use_random",
]

# The fault server's names, served from `meshlib.testing.faults` when first asked for:
# the server is sockets and threads that code needing only the clock should not load.
_FAULTS = frozenset(
    ("Chaos", "Close", "Drip", "FaultServer", "Hang", "RecordedRequest", "Reset", "Respond")
)


def __getattr__(name: str) -> Any:
    if name in _FAULTS:
        from . import faults  # lazy on purpose: see _FAULTS

        value = getattr(faults, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _FAULTS)


class set_testing:
    """Switch test mode on or off: when on, backoff waits return at once.

    Takes effect at once; used as a context manager, it restores the previous
    mode on exit::

        meshlib.testing.set_testing(True)
        with meshlib.testing.set_testing(True): ...
    """

    __slots__ = ("_previous",)

    def __init__(self, on: bool = True) -> None:
        self._previous = runtime.skip_waits
        runtime.skip_waits = on

    def __enter__(self) -> set_testing:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        runtime.skip_waits = self._previous


class FakeClock:
    """A clock that moves only when told to, or when meshlib waits on it.

    ``sleep`` and ``asleep`` advance the clock by the wait instead of waiting,
    so a test sees exactly the waits meshlib chose, in no time.

    Attributes:
        sleeps: every wait meshlib asked for, in order.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by `seconds`."""
        self._now += seconds

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self._now += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self._now += seconds
        await anyio.lowlevel.checkpoint()


@contextmanager
def use_clock(clock: Clock) -> Iterator[Clock]:
    """Make `clock` the clock of every timer, deadline and wait inside the block."""
    previous = runtime.clock
    runtime.clock = clock
    try:
        yield clock
    finally:
        runtime.clock = previous


@contextmanager
def use_random(rng: random.Random) -> Iterator[random.Random]:
    """Make `rng` the source of every jitter and sampling draw inside the block."""
    previous = runtime.rng
    runtime.rng = rng
    try:
        yield rng
    finally:
        runtime.rng = previous


def reset() -> None:
    """Forget the process-wide default Mesh: its per-destination state, and the Mesh.

    Clients wrapped before keep their Mesh, with its breakers, budgets and
    bulkheads forgotten. The next client wrapped without a Mesh builds a new
    default one, so it reads ``$MESHLIB_CONFIG`` again (a test may set it with
    ``monkeypatch.setenv``). A bad file is reported then, never by `reset`.
    """
    forget_default_mesh()
