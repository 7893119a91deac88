"""Run one request through a wrapped client, sync or async, from a sync test; and what failed."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx

import meshlib

URL = "http://orders.internal/items"
Handler = Callable[[httpx.Request], httpx.Response]


def send(
    mode: str,
    handler: Handler,
    policy: meshlib.Policy | meshlib.Mesh = meshlib.STANDARD,
    method: str = "GET",
    url: str = URL,
    **kwargs: Any,
) -> httpx.Response:
    """Send one request through a wrapped client over MockTransport(handler); read the body."""
    if mode == "sync":
        with meshlib.wrap(httpx.Client(transport=httpx.MockTransport(handler)), policy) as client:
            response = client.request(method, url, **kwargs)
            response.read()
            return response

    async def go() -> httpx.Response:
        transport = httpx.MockTransport(handler)
        async with meshlib.wrap(httpx.AsyncClient(transport=transport), policy) as client:
            response = await client.request(method, url, **kwargs)
            await response.aread()
            return response

    return asyncio.run(go())


def one_shot_body(mode: str, chunks: list[bytes]) -> Iterator[bytes] | AsyncIterator[bytes]:
    """Return a request body that can be sent only once, of the kind `mode`'s client takes."""
    if mode == "sync":
        return iter(chunks)

    async def agen() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    return agen()


class Script:
    """A MockTransport handler that answers from a list, then 200, and records requests."""

    def __init__(self, *answers: int | BaseException | httpx.Response) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        if not self.answers:
            return httpx.Response(200, content=b"ok")
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        if isinstance(answer, httpx.Response):
            return answer
        return httpx.Response(answer, content=b"answer %d" % answer)

    @property
    def count(self) -> int:
        return len(self.requests)


def verification_failed(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """Return the certificate verification error down `exc`'s cause chain, or None."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
