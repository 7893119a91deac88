"""The outbound deadline header stays within what meshlib's own inbound side adopts."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import httpx
import pytest

import meshlib
import meshlib.asgi
import meshlib.wsgi
from meshlib._deadline import DEFAULT_HEADER, GRPC_HEADER

pytestmark = pytest.mark.usefixtures("clock")

URL = "http://orders.internal/"


def _policy(total: float, header: str) -> meshlib.Policy:
    return meshlib.Policy(
        retry=None, breaker=None, timeout=meshlib.Timeout(total=total, header=header)
    )


def _through_wsgi(policy: meshlib.Policy) -> tuple[str, float | None]:
    """Send one request to a WSGI app behind meshlib's middleware; what it received, adopted."""
    seen: dict[str, Any] = {}

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        seen["remaining"] = meshlib.remaining()
        seen["sent"] = environ.get("HTTP_X_ENVOY_EXPECTED_RQ_TIMEOUT_MS") or environ.get(
            "HTTP_GRPC_TIMEOUT"
        )
        start_response("200 OK", [("content-type", "text/plain")])
        return [b"ok"]

    transport = httpx.WSGITransport(app=meshlib.wsgi.MeshMiddleware(app))
    client = httpx.Client(transport=transport)
    with meshlib.wrap(client, policy):
        assert client.get(URL).status_code == 200
    return seen["sent"], seen["remaining"]


def _through_asgi(policy: meshlib.Policy) -> tuple[str, float | None]:
    seen: dict[str, Any] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen["remaining"] = meshlib.remaining()
        headers = dict(scope["headers"])
        sent = headers.get(DEFAULT_HEADER.encode()) or headers.get(GRPC_HEADER.encode())
        seen["sent"] = sent.decode() if sent is not None else None
        start = {"type": "http.response.start", "status": 200, "headers": []}
        await send(start)
        await send({"type": "http.response.body", "body": b"ok"})

    async def go() -> None:
        transport = httpx.ASGITransport(app=meshlib.asgi.MeshMiddleware(app))
        client = httpx.AsyncClient(transport=transport)
        async with meshlib.wrap(client, policy):
            assert (await client.get(URL)).status_code == 200

    asyncio.run(go())
    return seen["sent"], seen["remaining"]


SIDES = {"wsgi": _through_wsgi, "asgi": _through_asgi}


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("total", [1.26e9, 1e15])
def test_a_very_long_budget_in_milliseconds_is_adopted_downstream(side: str, total: float) -> None:
    sent, adopted = SIDES[side](_policy(total, DEFAULT_HEADER))
    assert sent == "999999999999"  # 12 digits, the most meshlib's inbound side reads
    assert adopted is not None
    assert adopted == pytest.approx(999_999_999.999 - 0.01)  # less its margin


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize(
    ("total", "sent", "seconds"),
    [
        (99_999.0, "99999000m", 99_999.0),  # still milliseconds: 8 digits
        (100_000.5, "100000S", 100_000.0),  # seconds, rounded down
        (1.26e9, "21000000M", 1.26e9),  # minutes
        (1e12, "99999999H", 99_999_999 * 3600.0),  # 9 digits of hours: the longest it says
    ],
)
def test_a_long_grpc_timeout_moves_to_a_coarser_unit_and_is_adopted(
    side: str, total: float, sent: str, seconds: float
) -> None:
    header, adopted = SIDES[side](_policy(total, GRPC_HEADER))
    assert header == sent
    assert adopted is not None
    assert adopted == pytest.approx(seconds - 0.01)


def test_an_ordinary_budget_is_unchanged() -> None:
    assert _through_wsgi(_policy(2.5, DEFAULT_HEADER))[0] == "2500"
    assert _through_wsgi(_policy(2.5, GRPC_HEADER))[0] == "2500m"
