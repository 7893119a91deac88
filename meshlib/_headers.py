"""Reading and writing request headers cheaply on the success path."""

from __future__ import annotations

import httpx

from ._compat import HEADERS_EDITABLE, header_items

__all__ = ["header_values", "put_header", "set_header"]


def put_header(headers: httpx.Headers, key: bytes, value: bytes) -> None:
    """Set the header named `key` (lowercase ASCII) to `value`, replacing any copy.

    The result is what ``headers[name] = value`` gives, at a fraction of its
    cost.
    """
    if not HEADERS_EDITABLE:  # pragma: no cover - a future httpx: the public way
        headers[key.decode("ascii")] = value.decode("latin-1")
        return
    items = header_items(headers)
    entry = (key, key, value)
    # A plain loop over a handful of headers: on a request's first touch its code is
    # already in the cache, where map and itemgetter's C paths would not be.
    for _, name, _ in items:
        if name == key:
            break
    else:  # the common case: a first attempt
        items.append(entry)
        return
    index = [name for _, name, _ in items].index(key)
    # Replace the first copy in place and drop later ones, as __setitem__ does.
    items[index:] = [entry, *(later for later in items[index + 1 :] if later[1] != key)]


def set_header(headers: httpx.Headers, name: str, value: str) -> None:
    """Set a header, taking `put_header`'s fast path when its name and value are ASCII."""
    try:
        key = name.lower().encode("ascii")
        encoded = value.encode("ascii")
    except UnicodeEncodeError:  # not ours to shortcut: let httpx pick the encoding
        headers[name] = value
        return
    put_header(headers, key, encoded)


def header_values(headers: httpx.Headers, key: bytes) -> tuple[bytes, ...]:
    """Return the values of the header named `key` (lowercase ASCII), in order, as sent.

    What ``headers.get_list(name)`` gives, undecoded and without its cost:
    httpx works out the whole list's encoding on every lookup.
    """
    if not HEADERS_EDITABLE:  # pragma: no cover - a future httpx: the public way
        return tuple(v.encode("latin-1") for v in headers.get_list(key.decode("ascii")))
    return tuple(value for _, name, value in header_items(headers) if name == key)
