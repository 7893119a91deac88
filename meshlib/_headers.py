"""Writing request headers cheaply on the success path."""

from __future__ import annotations

import httpx

__all__ = ["set_header"]


def set_header(headers: httpx.Headers, name: str, value: str) -> None:
    """Set a header whose lowercase name and value are ASCII, replacing any copy.

    ``Headers.__setitem__`` re-encodes and rescans on every call; on the
    success path the same result is had by editing httpx's item list, whose
    entries are (raw name, lowercase name, value) bytes (httpx < 0.29).
    """
    items = getattr(headers, "_list", None)
    if not isinstance(items, list):  # pragma: no cover - a future httpx: the public way
        headers[name] = value
        return
    try:
        key = name.lower().encode("ascii")
        entry = (key, key, value.encode("ascii"))
    except UnicodeEncodeError:  # not ours to shortcut: let httpx pick the encoding
        headers[name] = value
        return
    for index, item in enumerate(items):
        if item[1] == key:
            items[index] = entry
            # Drop later duplicates, as __setitem__ does.
            items[index + 1 :] = [later for later in items[index + 1 :] if later[1] != key]
            return
    items.append(entry)
