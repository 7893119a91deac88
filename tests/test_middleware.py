"""The ASGI and WSGI middleware: real apps adopt the caller's deadline from its headers."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from datetime import timedelta
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import meshlib
import meshlib.asgi
import meshlib.wsgi
from meshlib._deadline import DEFAULT_HEADER, GRPC_HEADER, parse_budget_header
from meshlib.testing import FakeClock

ENVOY = DEFAULT_HEADER
GRPC = GRPC_HEADER
INSIDE = "http://c.internal/"
OUTSIDE = "http://api.example.com/"

Seen = dict[str, Any]
Scope = MutableMapping[str, Any]


# -- apps -----------------------------------------------------------------------------------


def make_asgi(
    seen: Seen, outbound: str | None = None, *, count: list[httpx.Request] | None = None
) -> Callable[..., Any]:
    """A bare ASGI app that records meshlib.remaining() and optionally calls out."""

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        seen["remaining"] = meshlib.remaining()
        status = 200
        if outbound is not None:
            status = await call_out_async(outbound, seen, count)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        await send({"type": "http.response.body", "body": b"ok"})

    return app


def make_wsgi(
    seen: Seen, outbound: str | None = None, *, count: list[httpx.Request] | None = None
) -> Callable[..., Any]:
    """A bare WSGI app that records meshlib.remaining() and optionally calls out."""

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        seen["remaining"] = meshlib.remaining()
        status = 200
        if outbound is not None:
            status = call_out_sync(outbound, seen, count)
        start_response(f"{status} X", [("content-type", "text/plain")])
        return [b"ok"]

    return app


def _recorder(
    seen: Seen, count: list[httpx.Request] | None
) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        if count is not None:
            count.append(request)
        seen["outbound_header"] = request.headers.get(ENVOY)
        return httpx.Response(200)

    return handler


async def call_out_async(url: str, seen: Seen, count: list[httpx.Request] | None) -> int:
    transport = httpx.MockTransport(_recorder(seen, count))
    async with meshlib.wrap(httpx.AsyncClient(transport=transport)) as client:
        try:
            await client.get(url)
        except meshlib.DeadlineExceeded as exc:
            seen["error"] = exc
            return 504
    return 200


def call_out_sync(url: str, seen: Seen, count: list[httpx.Request] | None) -> int:
    transport = httpx.MockTransport(_recorder(seen, count))
    with meshlib.wrap(httpx.Client(transport=transport)) as client:
        try:
            client.get(url)
        except meshlib.DeadlineExceeded as exc:
            seen["error"] = exc
            return 504
    return 200


async def asgi_get(app: Any, headers: Any = None) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://b.test") as client:
        return await client.get("/", headers=headers)


def wsgi_get(app: Any, headers: Any = None) -> httpx.Response:
    transport = httpx.WSGITransport(app=app)
    with httpx.Client(transport=transport, base_url="http://b.test") as client:
        response = client.get("/", headers=headers)
        response.read()
        return response


# -- what the handler sees ------------------------------------------------------------------

# (headers sent, middleware kwargs, what meshlib.remaining() should be at most: the budget
# minus the margin; the handler runs a moment later, so it may see slightly less).
ADOPTED = [
    pytest.param({ENVOY: "1000"}, {}, 0.99, id="envoy-1000ms"),
    pytest.param({GRPC: "500m"}, {}, 0.49, id="grpc-500m"),
    pytest.param({GRPC: "2S"}, {}, 1.99, id="grpc-2S"),
    pytest.param({GRPC: "1H"}, {}, 3599.99, id="grpc-1H"),
    pytest.param({ENVOY: "1000", GRPC: "5S"}, {}, 0.99, id="both-envoy-wins"),
    pytest.param([(GRPC, "5S"), (ENVOY, "1000")], {}, 0.99, id="both-envoy-wins-sent-second"),
    pytest.param({ENVOY: "abc", GRPC: "300m"}, {}, 0.29, id="bad-envoy-falls-back-to-grpc"),
    pytest.param({"x-deadline": "1000"}, {"headers": ("x-deadline",)}, 0.99, id="custom-header"),
    pytest.param({"X-Deadline": "1000"}, {"headers": ("X-DEADLINE",)}, 0.99, id="custom-case"),
    pytest.param({ENVOY: "1000"}, {"margin": 0.2}, 0.8, id="margin-0.2"),
    pytest.param(
        {"x-deadline": "1000"}, {"headers": ("x-deadline",), "margin": 0.2}, 0.8, id="custom-both"
    ),
    pytest.param({ENVOY: "100"}, {"margin": 0.5}, 0.0, id="margin-beyond-budget"),
    pytest.param({ENVOY: "0"}, {}, 0.0, id="zero-budget"),
]

NOT_ADOPTED = [
    pytest.param({}, {}, id="no-header"),
    pytest.param({ENVOY: "1000"}, {"headers": ("x-deadline",)}, id="custom-ignores-envoy"),
    pytest.param({GRPC: "1S"}, {"headers": (ENVOY,)}, id="envoy-only-ignores-grpc"),
]

# (header, value) pairs no caller may use to set a deadline.
MALFORMED = [
    pytest.param(ENVOY, "abc", id="envoy-abc"),
    pytest.param(ENVOY, "-5", id="envoy-negative"),
    pytest.param(ENVOY, "1.5", id="envoy-fraction"),
    pytest.param(ENVOY, "123456789S", id="envoy-with-unit"),
    pytest.param(ENVOY, "", id="envoy-empty"),
    pytest.param(GRPC, "abc", id="grpc-abc"),
    pytest.param(GRPC, "-5S", id="grpc-negative"),
    pytest.param(GRPC, "1.5S", id="grpc-fraction"),
    pytest.param(GRPC, "123456789S", id="grpc-9-digits"),
    pytest.param(GRPC, "5", id="grpc-no-unit"),
    pytest.param(GRPC, "5s", id="grpc-lowercase-s"),
]


def check_adopted(seen: Seen, most: float) -> None:
    # On the fake clock no time passes between the header's arrival and the handler.
    remaining = seen["remaining"]
    assert remaining is not None
    if most == 0.0:
        assert remaining == 0.0
    else:
        assert remaining == pytest.approx(most, abs=1e-9)


@pytest.mark.anyio
@pytest.mark.parametrize(("headers", "options", "most"), ADOPTED)
async def test_asgi_handler_sees_the_callers_budget(
    headers: Any, options: dict[str, Any], most: float, clock: FakeClock
) -> None:
    seen: Seen = {}
    app = meshlib.asgi.MeshMiddleware(make_asgi(seen), **options)
    response = await asgi_get(app, headers)
    assert response.status_code == 200
    check_adopted(seen, most)
    assert meshlib.remaining() is None  # nothing leaks out of the request


@pytest.mark.parametrize(("headers", "options", "most"), ADOPTED)
def test_wsgi_handler_sees_the_callers_budget(
    headers: Any, options: dict[str, Any], most: float, clock: FakeClock
) -> None:
    seen: Seen = {}
    app = meshlib.wsgi.MeshMiddleware(make_wsgi(seen), **options)
    response = wsgi_get(app, headers)
    assert response.status_code == 200
    check_adopted(seen, most)
    assert meshlib.remaining() is None


def test_envoy_1000ms_is_between_900ms_and_990ms_when_it_arrives(clock: FakeClock) -> None:
    # The brief's headline numbers, spelled out: 1000 ms in, 10 ms kept back.
    seen: Seen = {}
    wsgi_get(meshlib.wsgi.MeshMiddleware(make_wsgi(seen)), {ENVOY: "1000"})
    assert seen["remaining"] == pytest.approx(0.99, abs=1e-9)  # on the fake clock: 990 ms


@pytest.mark.anyio
async def test_margin_is_kept_back_exactly_on_a_fake_clock(clock: FakeClock) -> None:
    seen: Seen = {}
    await asgi_get(meshlib.asgi.MeshMiddleware(make_asgi(seen)), {GRPC: "1H"})
    assert seen["remaining"] == pytest.approx(3599.99, abs=1e-9)
    seen.clear()
    wsgi_get(meshlib.wsgi.MeshMiddleware(make_wsgi(seen), margin=0.2), {ENVOY: "1000"})
    assert seen["remaining"] == pytest.approx(0.8, abs=1e-9)


@pytest.mark.anyio
@pytest.mark.parametrize(("headers", "options"), NOT_ADOPTED)
async def test_asgi_without_a_usable_header_there_is_no_deadline(
    headers: Any, options: dict[str, Any]
) -> None:
    seen: Seen = {}
    response = await asgi_get(meshlib.asgi.MeshMiddleware(make_asgi(seen), **options), headers)
    assert response.status_code == 200
    assert seen["remaining"] is None


@pytest.mark.parametrize(("headers", "options"), NOT_ADOPTED)
def test_wsgi_without_a_usable_header_there_is_no_deadline(
    headers: Any, options: dict[str, Any]
) -> None:
    seen: Seen = {}
    response = wsgi_get(meshlib.wsgi.MeshMiddleware(make_wsgi(seen), **options), headers)
    assert response.status_code == 200
    assert seen["remaining"] is None


def _debug_records_naming(caplog: pytest.LogCaptureFixture, header: str) -> list[logging.LogRecord]:
    return [
        record
        for record in caplog.records
        if record.name == "meshlib"
        and record.levelno == logging.DEBUG
        and header in record.getMessage()
        and getattr(record, "meshlib_header", None) == header
    ]


@pytest.mark.anyio
@pytest.mark.parametrize(("header", "value"), MALFORMED)
async def test_asgi_malformed_header_is_ignored_and_logged(
    header: str, value: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="meshlib")
    seen: Seen = {}
    response = await asgi_get(meshlib.asgi.MeshMiddleware(make_asgi(seen)), {header: value})
    assert response.status_code == 200
    assert seen["remaining"] is None
    assert len(_debug_records_naming(caplog, header)) == 1


@pytest.mark.parametrize(("header", "value"), MALFORMED)
def test_wsgi_malformed_header_is_ignored_and_logged(
    header: str, value: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="meshlib")
    seen: Seen = {}
    response = wsgi_get(meshlib.wsgi.MeshMiddleware(make_wsgi(seen)), {header: value})
    assert response.status_code == 200
    assert seen["remaining"] is None
    assert len(_debug_records_naming(caplog, header)) == 1


@pytest.mark.anyio
@pytest.mark.parametrize("header", [ENVOY, GRPC])
async def test_asgi_non_ascii_digits_are_malformed(
    header: str, caplog: pytest.LogCaptureFixture
) -> None:
    # "٣" (ARABIC-INDIC DIGIT THREE) passes str.isdigit(); it must not pass as a budget.
    caplog.set_level(logging.DEBUG, logger="meshlib")
    value = "٣" if header == ENVOY else "٣S"
    seen: Seen = {}
    response = await asgi_get(
        meshlib.asgi.MeshMiddleware(make_asgi(seen)), {header: value.encode("utf-8")}
    )
    assert response.status_code == 200
    assert seen["remaining"] is None
    assert len(_debug_records_naming(caplog, header)) == 1


@pytest.mark.parametrize("header", [ENVOY, GRPC])
@pytest.mark.parametrize("encoding", ["latin-1", "utf-8"])
def test_wsgi_non_ascii_digits_are_malformed(
    header: str, encoding: str, caplog: pytest.LogCaptureFixture
) -> None:
    # httpx's WSGITransport only passes ASCII header values, so build the environ as a
    # PEP 3333 server would (bytes decoded as latin-1), and as a lax one might (utf-8).
    caplog.set_level(logging.DEBUG, logger="meshlib")
    value = ("٣" if header == ENVOY else "٣S").encode("utf-8").decode(encoding)
    seen: Seen = {}
    statuses: list[str] = []
    app = meshlib.wsgi.MeshMiddleware(make_wsgi(seen))
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/",
        "HTTP_" + header.upper().replace("-", "_"): value,
    }
    body = b"".join(app(environ, lambda status, headers, exc_info=None: statuses.append(status)))
    assert body == b"ok"
    assert statuses == ["200 X"]
    assert seen["remaining"] is None
    assert len(_debug_records_naming(caplog, header)) == 1


# -- what the handler's own calls carry -----------------------------------------------------


@pytest.mark.anyio
async def test_asgi_outbound_call_inside_the_mesh_carries_what_is_left() -> None:
    seen: Seen = {}
    app = meshlib.asgi.MeshMiddleware(make_asgi(seen, INSIDE))
    response = await asgi_get(app, {ENVOY: "1000"})
    assert response.status_code == 200
    sent = seen["outbound_header"]
    assert sent is not None
    assert sent.isdigit()
    assert 900 < int(sent) <= 1000 - 10  # whole ms, the inbound budget minus the margin


def test_wsgi_outbound_call_inside_the_mesh_carries_what_is_left() -> None:
    seen: Seen = {}
    app = meshlib.wsgi.MeshMiddleware(make_wsgi(seen, INSIDE))
    response = wsgi_get(app, {GRPC: "1S"})
    assert response.status_code == 200
    sent = seen["outbound_header"]
    assert sent is not None
    assert sent.isdigit()
    assert 900 < int(sent) <= 1000 - 10


@pytest.mark.anyio
async def test_asgi_outbound_call_outside_the_mesh_carries_no_header() -> None:
    seen: Seen = {}
    count: list[httpx.Request] = []
    app = meshlib.asgi.MeshMiddleware(make_asgi(seen, OUTSIDE, count=count))
    response = await asgi_get(app, {ENVOY: "1000"})
    assert response.status_code == 200
    assert len(count) == 1
    assert seen["outbound_header"] is None
    assert GRPC not in count[0].headers


def test_wsgi_outbound_call_outside_the_mesh_carries_no_header() -> None:
    seen: Seen = {}
    count: list[httpx.Request] = []
    app = meshlib.wsgi.MeshMiddleware(make_wsgi(seen, OUTSIDE, count=count))
    response = wsgi_get(app, {ENVOY: "1000"})
    assert response.status_code == 200
    assert len(count) == 1
    assert seen["outbound_header"] is None
    assert GRPC not in count[0].headers


@pytest.mark.anyio
async def test_asgi_no_budget_left_means_no_request_sent() -> None:
    seen: Seen = {}
    count: list[httpx.Request] = []
    app = meshlib.asgi.MeshMiddleware(make_asgi(seen, INSIDE, count=count), margin=0.5)
    response = await asgi_get(app, {ENVOY: "100"})
    assert seen["remaining"] == 0.0
    assert isinstance(seen["error"], meshlib.DeadlineExceeded)
    assert count == []
    assert response.status_code == 504


def test_wsgi_no_budget_left_means_no_request_sent() -> None:
    seen: Seen = {}
    count: list[httpx.Request] = []
    app = meshlib.wsgi.MeshMiddleware(make_wsgi(seen, INSIDE, count=count), margin=0.5)
    response = wsgi_get(app, {ENVOY: "100"})
    assert seen["remaining"] == 0.0
    assert isinstance(seen["error"], meshlib.DeadlineExceeded)
    assert count == []
    assert response.status_code == 504


# -- WSGI bodies produced after the app returns ---------------------------------------------


def test_wsgi_generator_body_still_sees_the_deadline(clock: FakeClock) -> None:
    during: list[float | None] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("content-type", "text/plain")])
        for part in (b"a", b"b", b"c"):
            during.append(meshlib.remaining())  # runs while the server iterates the body
            yield part

    wrapped = meshlib.wsgi.MeshMiddleware(app)
    transport = httpx.WSGITransport(app=wrapped)
    client = httpx.Client(transport=transport, base_url="http://b.test")
    with client, client.stream("GET", "/", headers={ENVOY: "1000"}) as response:
        chunks = list(response.iter_bytes())
        # Between chunks the server's own code runs: no deadline there.
        assert meshlib.remaining() is None
    assert b"".join(chunks) == b"abc"
    assert len(during) == 3
    for value in during:
        assert value is not None
        assert value == pytest.approx(0.99, abs=1e-9)


def test_wsgi_generator_body_calls_out_with_the_deadline() -> None:
    seen: Seen = {}

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("content-type", "text/plain")])
        yield str(call_out_sync(INSIDE, seen, None)).encode()

    response = wsgi_get(meshlib.wsgi.MeshMiddleware(app), {ENVOY: "1000"})
    assert response.content == b"200"
    assert 900 < int(seen["outbound_header"]) <= 990


def test_wsgi_body_close_is_passed_through() -> None:
    closed: list[bool] = []

    class Body:
        def __iter__(self) -> Iterator[bytes]:
            yield b"x"

        def close(self) -> None:
            closed.append(True)

    def app(environ: dict[str, Any], start_response: Any) -> Body:
        start_response("200 OK", [])
        return Body()

    response = wsgi_get(meshlib.wsgi.MeshMiddleware(app), {ENVOY: "1000"})
    assert response.content == b"x"
    assert closed == [True]


# -- Starlette and other ASGI scopes --------------------------------------------------------


def make_starlette(seen: Seen, *, wrap_with_middleware_list: bool = False) -> Any:
    async def async_view(request: Request) -> PlainTextResponse:
        seen["async"] = meshlib.remaining()
        return PlainTextResponse("ok")

    def sync_view(request: Request) -> PlainTextResponse:
        # Starlette runs this in its thread pool; the context must follow it there.
        seen["sync"] = meshlib.remaining()
        return PlainTextResponse("ok")

    routes = [Route("/async", async_view), Route("/sync", sync_view)]
    if wrap_with_middleware_list:
        return Starlette(routes=routes, middleware=[Middleware(meshlib.asgi.MeshMiddleware)])
    return meshlib.asgi.MeshMiddleware(Starlette(routes=routes))


@pytest.mark.anyio
@pytest.mark.parametrize("as_list", [False, True], ids=["wrapped", "middleware-list"])
async def test_starlette_app_sees_the_callers_budget(as_list: bool, clock: FakeClock) -> None:
    seen: Seen = {}
    app = make_starlette(seen, wrap_with_middleware_list=as_list)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://b.test") as client:
        for path in ("/async", "/sync"):
            response = await client.get(path, headers={ENVOY: "1000"})
            assert response.status_code == 200
            assert response.text == "ok"
            assert seen[path.lstrip("/")] == pytest.approx(0.99, abs=1e-9)
            # The next request without the header runs without a deadline.
            response = await client.get(path)
            assert response.status_code == 200
            assert seen[path.lstrip("/")] is None


@pytest.mark.anyio
async def test_starlette_app_without_header_has_no_deadline() -> None:
    seen: Seen = {}
    transport = httpx.ASGITransport(app=make_starlette(seen))
    async with httpx.AsyncClient(transport=transport, base_url="http://b.test") as client:
        assert (await client.get("/async")).status_code == 200
        assert (await client.get("/sync")).status_code == 200
    assert seen == {"async": None, "sync": None}


@pytest.mark.anyio
async def test_lifespan_scope_passes_through_untouched() -> None:
    calls: list[tuple[Any, Any, Any, float | None]] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        calls.append((scope, receive, send, meshlib.remaining()))

    async def receive() -> dict[str, Any]:
        return {"type": "lifespan.startup"}

    async def send(message: Any) -> None:
        pass

    scope: dict[str, Any] = {"type": "lifespan"}
    await meshlib.asgi.MeshMiddleware(app)(scope, receive, send)
    assert len(calls) == 1
    got_scope, got_receive, got_send, remaining = calls[0]
    assert got_scope is scope
    assert got_scope == {"type": "lifespan"}
    assert got_receive is receive
    assert got_send is send
    assert remaining is None


@pytest.mark.anyio
async def test_websocket_scope_adopts_the_budget_too(clock: FakeClock) -> None:
    seen: Seen = {}

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        seen["remaining"] = meshlib.remaining()

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: Any) -> None:
        pass

    scope = {"type": "websocket", "headers": [(b"grpc-timeout", b"2S")]}
    await meshlib.asgi.MeshMiddleware(app)(scope, receive, send)
    assert seen["remaining"] == pytest.approx(1.99, abs=1e-9)


# -- parse_budget_header --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("1H", 3600.0),
        ("2M", 120.0),
        ("3S", 3.0),
        ("500m", 0.5),
        ("250u", 250e-6),
        ("7n", 7e-9),
        ("0S", 0.0),
        ("0n", 0.0),
        ("99999999H", 99999999 * 3600.0),  # 8 digits: the most gRPC allows
        ("00000001S", 1.0),
        ("12345678n", 12345678e-9),
    ],
)
def test_parse_grpc_every_unit(value: str, seconds: float) -> None:
    result = parse_budget_header(GRPC, value)
    assert result is not None
    assert math.isclose(result, seconds, rel_tol=1e-12, abs_tol=0.0)


@pytest.mark.parametrize(
    "value",
    [
        "123456789S",  # 9 digits
        "000000001S",  # 9 digits, even if leading zeros
        "5",
        "S",
        "",
        "   ",
        "5s",
        "5h",
        "5SS",
        "5 S",
        "-5S",
        "+5S",
        "1.5S",
        "1e3m",
        "0x10S",
        "٣S",
        "５S",  # FULLWIDTH DIGIT FIVE
        "5S,6S",
    ],
)
def test_parse_grpc_malformed(value: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="meshlib")
    assert parse_budget_header(GRPC, value) is None
    records = [r for r in caplog.records if r.name == "meshlib"]
    assert len(records) == 1
    assert records[0].levelno == logging.DEBUG
    assert GRPC in records[0].getMessage()
    assert getattr(records[0], "meshlib_event", None) == "bad_deadline_header"
    assert getattr(records[0], "meshlib_header", None) == GRPC


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("1000", 1.0),
        ("0", 0.0),
        ("1", 0.001),
        ("250", 0.25),
        ("999999999999", 999999999.999),  # 12 digits
    ],
)
def test_parse_milliseconds(value: str, seconds: float) -> None:
    assert parse_budget_header(ENVOY, value) == pytest.approx(seconds)
    assert parse_budget_header("x-deadline", value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    ["abc", "-5", "+5", "1.5", "1e3", "123456789S", "500m", "", " ", "٣", "５", "²", "1 000"],
)
def test_parse_milliseconds_malformed(value: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="meshlib")
    assert parse_budget_header(ENVOY, value) is None
    records = [r for r in caplog.records if r.name == "meshlib"]
    assert len(records) == 1
    assert records[0].levelno == logging.DEBUG
    assert ENVOY in records[0].getMessage()
    assert getattr(records[0], "meshlib_header", None) == ENVOY


@pytest.mark.parametrize(
    ("name", "value", "seconds"),
    [
        (GRPC, " 500m", 0.5),
        (GRPC, "500m ", 0.5),
        (GRPC, "\t2S\t", 2.0),
        (GRPC, "  1H  ", 3600.0),
        (ENVOY, " 1000", 1.0),
        (ENVOY, "1000 ", 1.0),
        (ENVOY, "\t250 ", 0.25),
    ],
)
def test_parse_tolerates_surrounding_whitespace(name: str, value: str, seconds: float) -> None:
    assert parse_budget_header(name, value) == pytest.approx(seconds)


def test_parse_well_formed_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="meshlib")
    assert parse_budget_header(GRPC, "1S") == 1.0
    assert parse_budget_header(ENVOY, "1") == 0.001
    assert [r for r in caplog.records if r.name == "meshlib"] == []


# -- options --------------------------------------------------------------------------------


@pytest.mark.parametrize("margin", [-0.01, math.nan, math.inf, "10ms", None])
@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_bad_margin_is_rejected_when_built(kind: str, margin: Any) -> None:
    middleware: Any = meshlib.asgi.MeshMiddleware if kind == "asgi" else meshlib.wsgi.MeshMiddleware
    with pytest.raises(meshlib.ConfigError, match="margin"):
        middleware(make_wsgi({}), margin=margin)


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        (5, "MeshMiddleware.headers: expected a header name or a list of them, got 5"),
        (None, "MeshMiddleware.headers: expected a header name or a list of them, got None"),
        (b"x-deadline", "MeshMiddleware.headers: expected a header name or a list of them"),
        ((), "MeshMiddleware.headers: expected at least one header name, got ()"),
        ([], "MeshMiddleware.headers: expected at least one header name, got []"),
        (("bad header",), "MeshMiddleware.headers: expected HTTP header names, got 'bad header'"),
        ((ENVOY, ""), "MeshMiddleware.headers: expected HTTP header names, got ''"),
        ((ENVOY, 5), "MeshMiddleware.headers: expected HTTP header names, got 5"),
        ("x-dead:line", "MeshMiddleware.headers: expected HTTP header names, got 'x-dead:line'"),
    ],
)
@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_bad_headers_are_rejected_when_built(kind: str, headers: Any, message: str) -> None:
    middleware: Any = meshlib.asgi.MeshMiddleware if kind == "asgi" else meshlib.wsgi.MeshMiddleware
    app = make_asgi({}) if kind == "asgi" else make_wsgi({})
    with pytest.raises(meshlib.ConfigError) as caught:
        middleware(app, headers=headers)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize("app", [None, 5, "app"])
@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_an_app_that_cannot_be_called_is_rejected_when_built(kind: str, app: Any) -> None:
    middleware: Any = meshlib.asgi.MeshMiddleware if kind == "asgi" else meshlib.wsgi.MeshMiddleware
    with pytest.raises(meshlib.ConfigError) as caught:
        middleware(app)
    assert str(caught.value) == (
        f"MeshMiddleware.app: expected a callable {kind.upper()} application, got {app!r}"
    )


@pytest.mark.anyio
async def test_zero_margin_keeps_nothing_back(clock: FakeClock) -> None:
    seen: Seen = {}
    await asgi_get(meshlib.asgi.MeshMiddleware(make_asgi(seen), margin=0), {ENVOY: "1000"})
    assert seen["remaining"] == 1.0
    seen.clear()
    wsgi_get(meshlib.wsgi.MeshMiddleware(make_wsgi(seen), margin=0.0), {GRPC: "250m"})
    assert seen["remaining"] == 0.25


@pytest.mark.anyio
async def test_timedelta_margin_is_accepted(clock: FakeClock) -> None:
    seen: Seen = {}
    app = meshlib.asgi.MeshMiddleware(make_asgi(seen), margin=timedelta(milliseconds=200))
    await asgi_get(app, {ENVOY: "1000"})
    assert seen["remaining"] == pytest.approx(0.8, abs=1e-9)


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
async def test_headers_given_as_one_string_is_honoured_or_rejected(kind: str) -> None:
    # headers="x-deadline" (a str, not a tuple) is an easy slip. Options are validated when
    # built (DESIGN.md), so it must either raise ConfigError or mean ("x-deadline",); it must
    # not silently look for the one-letter headers "x", "-", "d", ...
    seen: Seen = {}
    try:
        if kind == "asgi":
            app: Any = meshlib.asgi.MeshMiddleware(make_asgi(seen), headers="x-deadline")
        else:
            app = meshlib.wsgi.MeshMiddleware(make_wsgi(seen), headers="x-deadline")
    except meshlib.ConfigError:
        return
    if kind == "asgi":
        await asgi_get(app, {"x-deadline": "1000"})
    else:
        wsgi_get(app, {"x-deadline": "1000"})
    assert seen["remaining"] is not None


@pytest.mark.anyio
async def test_outbound_grpc_timeout_header_round_trips_through_the_middleware(
    clock: FakeClock,
) -> None:
    # A client told to send its budget as grpc-timeout (Timeout(header=...)) must send it in
    # grpc-timeout's own format (digits and a unit): meshlib's middleware, like any gRPC
    # server, reads that header that way and would otherwise drop the caller's deadline.
    seen: Seen = {}
    policy = meshlib.Policy(timeout=meshlib.Timeout(total=2.0, header=GRPC))
    inner = httpx.ASGITransport(app=meshlib.asgi.MeshMiddleware(make_asgi(seen)))
    client = meshlib.wrap(httpx.AsyncClient(transport=inner, base_url="http://b.internal"), policy)
    async with client:
        response = await client.get("/")
    assert response.status_code == 200
    assert parse_budget_header(GRPC, response.request.headers[GRPC]) is not None
    assert seen["remaining"] is not None
    assert seen["remaining"] == pytest.approx(1.99, abs=1e-9)


# -- the outbound header's presence, from a handler's point of view -------------------------


@pytest.mark.parametrize(
    ("headers", "policy", "expect"),
    [
        pytest.param({}, meshlib.Policy(timeout=None), None, id="no-deadline-no-header"),
        pytest.param(
            {}, meshlib.Policy(timeout=meshlib.Timeout(total=None)), None, id="total-none"
        ),
        pytest.param({}, meshlib.STANDARD, (29_000, 30_000), id="standard-total-30s"),
        pytest.param({ENVOY: "1000"}, meshlib.STANDARD, (900, 990), id="inbound-wins"),
        pytest.param(
            {ENVOY: "1000"},
            meshlib.Policy(timeout=meshlib.Timeout(total=0.5)),
            (400, 500),
            id="own-total-wins",
        ),
        pytest.param(
            {ENVOY: "1000"},
            meshlib.Policy(timeout=meshlib.Timeout(header=None)),
            None,
            id="header-off",
        ),
    ],
)
def test_wsgi_outbound_header_follows_the_effective_deadline(
    headers: dict[str, str], policy: meshlib.Policy, expect: tuple[int, int] | None
) -> None:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200)

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        transport = httpx.MockTransport(handler)
        with meshlib.wrap(httpx.Client(transport=transport), policy) as client:
            client.get(INSIDE)
        start_response("200 OK", [])
        return [b""]

    assert wsgi_get(meshlib.wsgi.MeshMiddleware(app), headers).status_code == 200
    value = sent[0].headers.get(ENVOY)
    if expect is None:
        assert value is None
    else:
        assert value is not None
        assert expect[0] < int(value) <= expect[1]


def test_renamed_outbound_header_carries_whole_ms() -> None:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200)

    policy = meshlib.Policy(timeout=meshlib.Timeout(total=5.0, header="X-Deadline-Ms"))

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        with meshlib.wrap(httpx.Client(transport=httpx.MockTransport(handler)), policy) as c:
            c.get(INSIDE)
        start_response("200 OK", [])
        return [b""]

    wsgi_get(meshlib.wsgi.MeshMiddleware(app), {ENVOY: "1000"})
    assert ENVOY not in sent[0].headers
    assert 900 < int(sent[0].headers["x-deadline-ms"]) <= 990
