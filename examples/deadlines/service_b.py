"""Service B: a Starlette app that calls C and passes on whatever is left of the budget."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import meshlib
import meshlib.asgi

__all__ = ["make_app"]


def make_app(
    c_url: str, policy: meshlib.Policy, seen: dict[str, Any], done: threading.Event
) -> Any:
    """Return B, wrapped in meshlib's ASGI middleware; it records what it saw in `seen`."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # One client for the app's life. The lifespan scope passes through the
        # middleware untouched: no request, so no deadline.
        async with meshlib.AsyncClient(policy, base_url=c_url) as client:
            app.state.c = client
            yield

    async def work(request: Request) -> PlainTextResponse:
        seen["arrived"] = time.monotonic()
        seen["header"] = request.headers.get("x-envoy-expected-rq-timeout-ms")
        seen["adopted"] = meshlib.remaining()
        try:
            # 127.0.0.1 is inside the mesh, so this request carries what is left.
            response = await request.app.state.c.get("/work")
        except meshlib.DeadlineExceeded:
            seen["answered"] = time.monotonic()
            seen["outcome"] = "DeadlineExceeded"
            done.set()
            return PlainTextResponse("B: out of time\n", status_code=504)
        seen["answered"] = time.monotonic()
        seen["outcome"] = f"C answered {response.status_code}"
        done.set()
        if response.status_code == 504:
            return PlainTextResponse("B: C ran out of time\n", status_code=504)
        return PlainTextResponse(response.text, status_code=response.status_code)

    return meshlib.asgi.MeshMiddleware(Starlette(routes=[Route("/", work)], lifespan=lifespan))
