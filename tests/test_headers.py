"""put_header: the success path's way of setting a header gives what httpx's own would."""

from __future__ import annotations

import httpx
import pytest

from meshlib._headers import put_header, set_header

CASES = [
    [],
    [("accept", "*/*")],
    [("x-deadline", "1")],
    [("X-Deadline", "1"), ("accept", "*/*")],
    [("accept", "*/*"), ("x-deadline", "1"), ("host", "a"), ("X-DEADLINE", "2"), ("z", "z")],
]


@pytest.mark.parametrize("items", CASES)
def test_put_header_matches_httpx_setitem(items: list[tuple[str, str]]) -> None:
    expected = httpx.Headers(items)
    expected["x-deadline"] = "750"
    headers = httpx.Headers(items)
    put_header(headers, b"x-deadline", b"750")
    assert headers.raw == expected.raw  # same names, values and order
    assert headers.get_list("x-deadline") == ["750"]


def test_set_header_leaves_non_ascii_values_to_httpx() -> None:
    headers = httpx.Headers({"accept": "*/*"})
    set_header(headers, "X-Note", "café")
    assert headers["x-note"] == "café"
    set_header(headers, "X-Note", "plain")
    assert headers.get_list("x-note") == ["plain"]
