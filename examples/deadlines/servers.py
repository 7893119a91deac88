"""Run a real ASGI server (uvicorn) and a real WSGI server (wsgiref) in background threads.

Both listen on 127.0.0.1 on a port the OS picks, run in daemon threads (so a bug can
never keep the process alive) and are stopped explicitly by the context managers.
"""

from __future__ import annotations

import socketserver
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import uvicorn

__all__ = ["serve_asgi", "serve_wsgi"]


@contextmanager
def serve_asgi(app: Any, *, startup_timeout: float = 5.0) -> Iterator[str]:
    """Serve `app` with uvicorn in a daemon thread; yield its base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    # Off the main thread uvicorn installs no signal handlers; Ctrl-C stays with us.
    thread = threading.Thread(target=server.run, name="uvicorn-B", daemon=True)
    thread.start()
    try:
        limit = time.monotonic() + startup_timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > limit:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=5.0)


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    """wsgiref's server, one thread per request, so a slow request blocks nobody."""

    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # no access log: the example prints what each hop saw instead


@contextmanager
def serve_wsgi(app: Any) -> Iterator[str]:
    """Serve `app` with wsgiref (threaded) in a daemon thread; yield its base URL."""
    server = make_server(
        "127.0.0.1", 0, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler
    )
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="wsgiref-C", daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()  # returns once serve_forever has stopped
        server.server_close()
        thread.join(timeout=5.0)
