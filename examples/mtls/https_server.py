"""A small HTTPS server on 127.0.0.1 that requires client certificates (stdlib only).

It answers every GET with the common name of the client certificate it saw on that
connection, and keeps a list of them, so the example can check what went on the wire.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["serve_mtls"]


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, context: ssl.SSLContext) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.context = context
        self.seen: list[str] = []

    def get_request(self) -> tuple[Any, Any]:
        sock, address = super().get_request()
        # The handshake runs in the connection's own thread (finish_request), so one
        # slow client cannot hold up accept().
        return self.context.wrap_socket(
            sock, server_side=True, do_handshake_on_connect=False
        ), address

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            request.do_handshake()
        except (ssl.SSLError, OSError) as exc:
            print(f"  server: refused a connection: {exc}")
            return
        super().finish_request(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so pooled connections can be shown
    server: _Server

    def do_GET(self) -> None:
        cert = self.connection.getpeercert()
        names = dict(rdn[0] for rdn in cert["subject"])
        common_name = str(names["commonName"])
        self.server.seen.append(common_name)
        body = f"hello, {common_name}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # no access log: the example prints what the server said instead


@contextmanager
def serve_mtls(context: ssl.SSLContext) -> Iterator[tuple[str, list[str]]]:
    """Serve in a daemon thread; yield the base URL and the list of client names seen."""
    server = _Server(context)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="mtls-server", daemon=True
    )
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_port}", server.seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5.0)
