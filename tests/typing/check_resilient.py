"""Checked by `mypy --strict` in CI (not run by pytest): @resilient keeps signatures.

Each ``type: ignore[...]`` below marks a call that must be a type error; with
``warn_unused_ignores`` (part of --strict) mypy fails if the decorator ever
stops carrying the signature and the error disappears.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, assert_type

import httpx

import meshlib


class Receipt:
    pass


@meshlib.resilient(on=(ConnectionError, TimeoutError))
def charge(card: str, amount: int = 1) -> Receipt:
    return Receipt()


@meshlib.resilient(on=httpx.TransportError, key="users")
async def fetch_user(uid: str) -> dict[str, str]:
    return {"id": uid}


@meshlib.resilient(on=lambda exc: isinstance(exc, OSError))
def predicate_guarded() -> int:
    return 1


def uses() -> None:
    assert_type(charge("4242", amount=3), Receipt)
    coroutine = assert_type(fetch_user("u1"), Coroutine[Any, Any, dict[str, str]])
    coroutine.close()
    assert_type(predicate_guarded(), int)
    charge(4242)  # type: ignore[arg-type]
    charge("4242", amount="3")  # type: ignore[arg-type]
    fetch_user().close()  # type: ignore[call-arg]


policy = meshlib.Policy(retry=meshlib.Retry(attempts=2))
client: httpx.Client = meshlib.wrap(httpx.Client(), policy)
aclient: httpx.AsyncClient = meshlib.wrap(httpx.AsyncClient(), policy)
