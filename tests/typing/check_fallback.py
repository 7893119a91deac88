"""Checked by `mypy --strict` in CI (not run by pytest): a fallback must fit the function.

The decorated function's return type is the fallback's, and the function's own must fit
in it. Each ``type: ignore[...]`` marks a fallback that must be a type error; with
``warn_unused_ignores`` (part of --strict) mypy fails if one is ever accepted.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, assert_type

import meshlib


class Receipt:
    pass


def no_receipt(exc: Exception) -> Receipt:
    return Receipt()


def maybe_receipt(exc: Exception) -> Receipt | None:
    return None


def nothing(exc: Exception) -> None:
    return None


async def receipt_later(exc: Exception) -> Receipt:
    return Receipt()


@meshlib.resilient(on=ConnectionError, fallback=no_receipt)
def charge(card: str) -> Receipt:
    return Receipt()


@meshlib.resilient(on=ConnectionError, fallback=maybe_receipt)
def charge_or_none(card: str) -> Receipt:
    return Receipt()


@meshlib.resilient(on=ConnectionError, fallback=no_receipt)  # a sync fallback, an async function
async def fetch(uid: str) -> Receipt:
    return Receipt()


@meshlib.resilient(on=ConnectionError, fallback=receipt_later)
async def fetch_later(uid: str) -> Receipt:
    return Receipt()


@meshlib.resilient(on=ConnectionError, fallback=nothing)  # type: ignore[arg-type]
def charge_wrongly(card: str) -> Receipt:
    return Receipt()


@meshlib.resilient(on=ConnectionError, fallback=lambda exc: "declined")  # type: ignore[arg-type]
async def fetch_wrongly(uid: str) -> Receipt:
    return Receipt()


@meshlib.resilient(on=ConnectionError, fallback=receipt_later)  # type: ignore[arg-type]
def charge_with_a_coroutine(card: str) -> Receipt:  # an async fallback, a sync function
    return Receipt()


def uses() -> None:
    assert_type(charge("4242"), Receipt)
    assert_type(charge_or_none("4242"), Receipt | None)
    coroutine = assert_type(fetch("u1"), Coroutine[Any, Any, Receipt])
    coroutine.close()
    later = assert_type(fetch_later("u1"), Coroutine[Any, Any, Receipt])
    later.close()
    charge(4242)  # type: ignore[arg-type]
