"""Retry-After parsing and what is retryable (meshlib._retry's pure decisions)."""

from __future__ import annotations

import math
import random
import ssl
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import meshlib
import meshlib.testing
from meshlib import Retry
from meshlib._retry import (
    body_is_replayable,
    exception_is_retryable,
    parse_retry_after,
    request_is_idempotent,
)
from meshlib.testing import FakeClock

from .helpers import Script, send

URL = "http://orders.internal/items"


def retryable(error: Exception, request: httpx.Request, retry: Retry, body: object = None) -> bool:
    """Ask exception_is_retryable with the body as it was before the first attempt."""
    return exception_is_retryable(error, request, request.stream if body is None else body, retry)


# --- Retry-After -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("5", 5.0), (" 7 ", 7.0), ("0", 0.0), ("120", 120.0), ("007", 7.0)],
)
def test_delay_seconds_are_parsed(header: str, seconds: float) -> None:
    parsed = parse_retry_after(header)
    assert parsed == seconds
    assert isinstance(parsed, float)


@pytest.mark.parametrize(
    "header",
    [
        "-1",
        "abc",
        "",
        "   ",
        "1.5",
        "1e3",
        "+5",
        "5s",
        "٣",  # ARABIC-INDIC DIGIT THREE: str.isdigit() says yes, HTTP says no
        "５",  # FULLWIDTH DIGIT FIVE
        "Fri, 31 Dec 99999 23:59:59 GMT",
        "Mon, 32 Jan 2020 00:00:00 GMT",
    ],
)
def test_unparsable_values_give_none(header: str) -> None:
    assert parse_retry_after(header) is None


def test_http_date_in_the_future_gives_the_seconds_until_it() -> None:
    when = datetime.now(UTC) + timedelta(seconds=120)
    parsed = parse_retry_after(format_datetime(when, usegmt=True))
    assert parsed is not None
    assert parsed == pytest.approx(120.0, abs=2.0)


def test_http_date_in_the_past_means_no_wait() -> None:
    when = datetime.now(UTC) - timedelta(hours=1)
    assert parse_retry_after(format_datetime(when, usegmt=True)) == 0.0


def test_http_date_long_ago_means_no_wait() -> None:
    assert parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT") == 0.0


def test_huge_delay_seconds_is_infinite_for_the_cap_to_clamp() -> None:
    assert parse_retry_after("9" * 5000) == math.inf
    assert parse_retry_after("1" + "0" * 4999) == math.inf


@given(st.text())
@settings(max_examples=300, deadline=None, database=None)
def test_any_text_never_raises_and_gives_none_or_a_non_negative_float(text: str) -> None:
    parsed = parse_retry_after(text)
    assert parsed is None or (isinstance(parsed, float) and parsed >= 0.0)


@given(st.integers(min_value=0, max_value=10**40))
@settings(max_examples=200, deadline=None, database=None)
def test_any_ascii_integer_parses_to_a_float_at_least_as_large(seconds: int) -> None:
    parsed = parse_retry_after(str(seconds))
    assert parsed is not None
    assert parsed >= 0.0
    if seconds < 10**15:
        assert parsed == float(seconds)


@given(zeros=st.integers(min_value=1, max_value=30), seconds=st.integers(0, 10**6))
@settings(max_examples=100, deadline=None, database=None)
def test_leading_zeros_do_not_change_the_delay(zeros: int, seconds: int) -> None:
    # delay-seconds is 1*DIGIT: "0000000000000005" is five seconds, not "too long to read".
    assert parse_retry_after("0" * zeros + str(seconds)) == float(seconds)


@given(st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(9999, 1, 1)))
@settings(max_examples=200, deadline=None, database=None)
def test_any_http_date_parses_to_a_non_negative_float(when: datetime) -> None:
    parsed = parse_retry_after(format_datetime(when.replace(tzinfo=UTC), usegmt=True))
    assert parsed is not None
    assert parsed >= 0.0


# --- Which requests may be sent twice ------------------------------------------------------


def test_idempotent_methods_and_idempotency_key() -> None:
    retry = Retry()
    assert request_is_idempotent(httpx.Request("GET", URL), retry)
    assert request_is_idempotent(httpx.Request("PUT", URL), retry)
    assert not request_is_idempotent(httpx.Request("POST", URL), retry)
    assert not request_is_idempotent(httpx.Request("PATCH", URL), retry)
    keyed = httpx.Request("POST", URL, headers={"Idempotency-Key": "k-1"})
    assert request_is_idempotent(keyed, retry)
    lower = httpx.Request("POST", URL, headers={"idempotency-key": "k-1"})
    assert request_is_idempotent(lower, retry)


def test_idempotent_methods_follow_the_policy() -> None:
    only_post = Retry(methods=["post"])
    assert request_is_idempotent(httpx.Request("POST", URL), only_post)
    assert not request_is_idempotent(httpx.Request("GET", URL), only_post)


def test_bytes_bodies_are_replayable_and_streams_are_not() -> None:
    assert body_is_replayable(httpx.Request("GET", URL).stream)
    assert body_is_replayable(httpx.Request("PUT", URL, content=b"abc").stream)
    assert body_is_replayable(httpx.Request("PUT", URL, json={"a": 1}).stream)
    assert not body_is_replayable(httpx.Request("PUT", URL, content=iter([b"a"])).stream)


def test_a_one_shot_body_stays_unreplayable_after_it_was_read() -> None:
    request = httpx.Request("PUT", URL, content=iter([b"a", b"b"]))
    before = request.stream
    request.read()  # sending a request reads its body; the bytes then replace the stream
    assert not body_is_replayable(before)
    error = httpx.ReadError("reset", request=request)
    assert not retryable(error, request, Retry(), body=before)


# --- Which errors are retried ----------------------------------------------------------------


def connect_error(request: httpx.Request) -> httpx.ConnectError:
    return httpx.ConnectError("connection refused", request=request)


def tls_failure(request: httpx.Request) -> httpx.ConnectError:
    """A ConnectError as httpx raises it for a bad certificate: the SSL error down its chain."""
    verification = ssl.SSLCertVerificationError(1, "certificate verify failed")
    try:
        try:
            raise verification
        except ssl.SSLError as exc:
            raise OSError("handshake failed") from exc
    except OSError as exc:
        error = httpx.ConnectError(str(exc), request=request)
        error.__cause__ = exc
        return error


@pytest.mark.parametrize("method", ["GET", "POST", "PATCH"])
def test_connect_errors_are_retried_for_any_method(method: str) -> None:
    request = httpx.Request(method, URL, content=b"body")
    assert retryable(connect_error(request), request, Retry())
    timeout = httpx.ConnectTimeout("connect timed out", request=request)
    assert retryable(timeout, request, Retry())


def test_connect_error_caused_by_tls_verification_is_not_retried() -> None:
    request = httpx.Request("GET", URL)
    error = tls_failure(request)
    assert error.__cause__ is not None
    assert isinstance(error.__cause__.__cause__, ssl.SSLCertVerificationError)
    assert not retryable(error, request, Retry())


def test_connect_error_directly_caused_by_tls_verification_is_not_retried() -> None:
    request = httpx.Request("POST", URL)
    error = connect_error(request)
    error.__cause__ = ssl.SSLCertVerificationError(1, "certificate verify failed")
    assert not retryable(error, request, Retry())


def test_read_error_is_retried_for_get() -> None:
    request = httpx.Request("GET", URL)
    assert retryable(httpx.ReadError("reset", request=request), request, Retry())


def test_read_error_is_not_retried_for_post() -> None:
    request = httpx.Request("POST", URL, content=b"order")
    assert not retryable(httpx.ReadError("reset", request=request), request, Retry())


def test_read_error_is_retried_for_post_with_an_idempotency_key() -> None:
    request = httpx.Request("POST", URL, content=b"order", headers={"Idempotency-Key": "k-1"})
    assert retryable(httpx.ReadError("reset", request=request), request, Retry())


@pytest.mark.parametrize(
    "error_type",
    [httpx.WriteError, httpx.ReadTimeout, httpx.WriteTimeout, httpx.RemoteProtocolError],
)
def test_errors_after_sending_follow_idempotency(error_type: type[httpx.HTTPError]) -> None:
    get = httpx.Request("GET", URL)
    post = httpx.Request("POST", URL, content=b"order")
    assert retryable(error_type("x", request=get), get, Retry())
    assert not retryable(error_type("x", request=post), post, Retry())


def test_read_error_with_a_generator_body_is_not_retried() -> None:
    request = httpx.Request("GET", URL, content=iter([b"a"]))
    assert not retryable(httpx.ReadError("reset", request=request), request, Retry())


def test_read_error_with_a_keyed_generator_body_is_not_retried() -> None:
    request = httpx.Request("POST", URL, content=iter([b"a"]), headers={"Idempotency-Key": "k-1"})
    assert not retryable(httpx.ReadError("reset", request=request), request, Retry())


def mesh_rejections(request: httpx.Request) -> list[Exception]:
    return [
        meshlib.CircuitOpen("http://orders.internal:80", 1.0, request=request),
        meshlib.BulkheadFull("http://orders.internal:80", request=request),
        meshlib.DeadlineExceeded("deadline exceeded", request=request),
    ]


@pytest.mark.parametrize("index", [0, 1, 2], ids=["CircuitOpen", "BulkheadFull", "Deadline"])
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_meshlib_rejections_are_never_retried(method: str, index: int) -> None:
    request = httpx.Request(method, URL)
    error = mesh_rejections(request)[index]
    everything = Retry(methods=["GET", "POST"])
    assert not retryable(error, request, everything)


def test_unsupported_protocol_is_never_retried() -> None:
    request = httpx.Request("GET", "ftp://orders.internal/items")
    error = httpx.UnsupportedProtocol("no ftp", request=request)
    assert not retryable(error, request, Retry())


# --- Retry-After that means "no wait": the backoff, with its jitter ----------------------


def _past_date() -> str:
    return format_datetime(datetime.now(UTC) - timedelta(minutes=5), usegmt=True)


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize(
    ("header", "cap"),
    [("0", 30.0), ("000", 30.0), ("past", 30.0), ("5", 0.0), ("past", 0.0)],
    ids=["zero", "zeros", "date-past", "cap-0", "cap-0-date-past"],
)
def test_a_no_wait_retry_after_waits_the_jittered_backoff(
    mode: str, header: str, cap: float, clock: FakeClock
) -> None:
    policy = meshlib.Policy(retry=Retry(attempts=2, retry_after_cap=cap, budget=None))
    value = _past_date() if header == "past" else header
    waits = []
    for headers in ({}, {"Retry-After": value}):
        clock.sleeps.clear()
        # The same draws each time: the wait with the header must be the wait without it.
        with meshlib.testing.use_random(random.Random(7)):
            script = Script(httpx.Response(503, headers=headers))
            assert send(mode, script, policy).status_code == 200
        assert script.count == 2
        waits.append(list(clock.sleeps))
    without, with_header = waits
    assert len(without) == 1
    assert 0 < without[0] <= 0.05  # full jitter over the first backoff
    assert with_header == without


def test_the_jitter_spreads_a_fleet_told_to_retry_now(clock: FakeClock) -> None:
    policy = meshlib.Policy(retry=Retry(attempts=2, budget=None), breaker=None)
    for _ in range(20):
        send("sync", Script(httpx.Response(503, headers={"Retry-After": "0"})), policy)
    assert len(clock.sleeps) == 20
    assert len(set(clock.sleeps)) == 20  # twenty clients, twenty different instants


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_retry_after_cap_of_zero_ignores_a_long_header(mode: str, clock: FakeClock) -> None:
    policy = meshlib.Policy(retry=Retry(attempts=2, retry_after_cap=0, budget=None))
    script = Script(httpx.Response(429, headers={"Retry-After": "3600"}))
    assert send(mode, script, policy).status_code == 200
    assert len(clock.sleeps) == 1
    assert 0 < clock.sleeps[0] <= 0.05  # the backoff, not the header's hour nor no wait
