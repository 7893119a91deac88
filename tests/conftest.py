"""Shared fixtures: a fake clock, seeded randomness, a real faulty server, clean state."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

import meshlib.testing
from meshlib.testing import FakeClock, FaultServer


@pytest.fixture(autouse=True)
def _fresh_state() -> Iterator[None]:
    # Budgets and breakers live in the process-wide Mesh: no test may see another's.
    meshlib.testing.reset()
    yield
    meshlib.testing.reset()


@pytest.fixture
def clock() -> Iterator[FakeClock]:
    """A fake clock for every timer and wait meshlib runs inside the test."""
    fake = FakeClock()
    with meshlib.testing.use_clock(fake):
        yield fake


@pytest.fixture
def rng() -> Iterator[random.Random]:
    """A seeded random source for every jitter draw inside the test."""
    seeded = random.Random(1234)
    with meshlib.testing.use_random(seeded):
        yield seeded


@pytest.fixture
def no_waits() -> Iterator[None]:
    """Backoff waits return at once."""
    with meshlib.testing.set_testing(True):
        yield


@pytest.fixture
def server() -> Iterator[FaultServer]:
    """A real HTTP/1.1 server on 127.0.0.1 whose answers the test scripts."""
    with FaultServer() as running:
        yield running


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
