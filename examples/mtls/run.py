"""mTLS with rotation: the server sees who calls, and a new certificate needs no restart.

Run it with no arguments: ``.venv/bin/python examples/mtls/run.py``. It needs trustme
to make certificates (in the ``dev`` extra: ``.venv/bin/pip install -e '.[dev]'``), and no
network beyond 127.0.0.1.

1. A throwaway CA issues a server certificate and a client certificate ("orders-v1")
   into a temporary directory.
2. An HTTPS server that requires client certificates answers with the name it saw.
3. A ``meshlib.Client`` with ``meshlib.TLS(..., reload=True)`` calls it: "orders-v1".
4. The files are replaced with a new certificate ("orders-v2"). The pooled keep-alive
   connection still carries the old one; once it has been idle longer than
   ``keepalive_expiry`` the pool drops it, and the next connection presents the new one.
   Same client object, no restart.
5. A broken pair (a key cut short, as by a writer caught mid-way) is refused with a
   warning, and new connections keep presenting "orders-v2".

The asserts make it a regression check as well as a demo.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from pathlib import Path

import httpx
from https_server import serve_mtls
from pki import MeshCA

import meshlib

# The files are looked at, when a new connection is made, at most this often.
RELOAD_INTERVAL = 0.1
# Pooled connections idle longer than this are closed and replaced by new ones, which
# present the current certificate: this bounds how long an old certificate stays in use.
KEEPALIVE_EXPIRY = 0.5


def show_meshlib_logs() -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("  log: %(levelname)s %(message)s"))
    log = logging.getLogger("meshlib")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def call(client: httpx.Client, headers: dict[str, str] | None = None) -> str:
    response = client.get("/", headers=headers)
    response.raise_for_status()
    answer = response.text.strip()
    print(f"client: the server said {answer!r}")
    return answer


def main() -> None:
    started = time.monotonic()
    show_meshlib_logs()
    with tempfile.TemporaryDirectory(prefix="meshlib-mtls-") as tmp:
        directory = Path(tmp)
        ca = MeshCA(directory)
        cert, key = directory / "orders.crt", directory / "orders.key"
        ca.issue_client("orders-v1", cert, key)

        tls = meshlib.TLS(cert, key, ca=ca.bundle, reload=True, reload_interval=RELOAD_INTERVAL)
        limits = httpx.Limits(keepalive_expiry=KEEPALIVE_EXPIRY)
        with (
            serve_mtls(ca.server_context()) as (url, seen),
            meshlib.Client(meshlib.STANDARD, tls=tls, base_url=url, limits=limits) as client,
        ):
            print(f"server: {url}, requires a client certificate from the mesh CA")
            assert call(client) == "hello, orders-v1"

            print("rotation: orders-v2 replaces orders-v1 on disk")
            ca.issue_client("orders-v2", cert, key)
            # The pooled connection was set up with orders-v1 and keeps it.
            assert call(client) == "hello, orders-v1"
            time.sleep(KEEPALIVE_EXPIRY + RELOAD_INTERVAL)
            # The idle connection has expired: a new one, with the new certificate.
            assert call(client) == "hello, orders-v2"

            print("a broken pair: the key file cut short")
            key.write_bytes(key.read_bytes()[:40])
            time.sleep(RELOAD_INTERVAL)
            # Connection: close makes the server hang up, so the next call connects anew.
            assert call(client, headers={"Connection": "close"}) == "hello, orders-v2"
            assert call(client) == "hello, orders-v2"

        assert seen == ["orders-v1", "orders-v1", "orders-v2", "orders-v2", "orders-v2"], seen
    elapsed = time.monotonic() - started
    print(f"done in {elapsed:.2f} s: the server saw {', '.join(seen)}")
    assert elapsed < 10, elapsed


if __name__ == "__main__":
    main()
