"""The status page: what the mesh is doing in this process, for a person and for a script.

```python
app = meshlib.admin.app(mesh)                  # an ASGI app: mount it, or serve it
server = meshlib.admin.serve(mesh, port=15000)  # a loopback-only server in a daemon thread
server.port, server.url; server.close()
```

Pages (GET and HEAD only; anything else is 405):

- ``/``: one table of every destination in use, the failing first, refreshing itself;
- ``/destination?name=...``: one destination, its endpoints and its effective policy;
- ``/status.json``: the same data, in the shape docs/status.md documents (``version``);
- ``/config``: the Mesh's policies as a policy file;
- ``/config_dump``: `Mesh.config_dump`, what its file, URL or control plane put in force.

Safe by default: `serve` binds 127.0.0.1 and answers only requests addressed
to a loopback name unless `allow_remote` is given; nothing it serves changes
any state; request URLs are never kept, a source URL is redacted as telemetry
redacts ``url.full``, and header values named Authorization, Proxy-Authorization,
Cookie or Set-Cookie never appear.

Near 700 lines, most of them the page itself (its HTML, CSS and script are
served from here, so the page needs no static files); the data comes from
`meshlib._snapshot`.
"""

from __future__ import annotations

import html
import ipaddress
import json
import math
import re
import socket
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote

from ._errors import ConfigError
from ._mesh import Mesh, default_mesh
from ._snapshot import COLUMNS, VERSION, cells, scrub, snapshot, table_toml, text_table
from ._telemetry import logger

if TYPE_CHECKING:
    import http.server

__all__ = ["Server", "app", "serve"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_ALLOW = "GET, HEAD"
_MAX_ROWS = 500  # a table a person can read; every destination is in /status.json
_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
_SECURITY_HEADERS = [
    ("cache-control", "no-store"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
    (
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
]

_Response = tuple[int, list[tuple[str, str]], bytes]


def _check_mesh(mesh: Mesh | None, where: str) -> Mesh:
    if mesh is None:
        return default_mesh()
    if not isinstance(mesh, Mesh):
        raise ConfigError(f"{where}: mesh: expected a meshlib.Mesh, got {mesh!r}")
    return mesh


def _check_refresh(refresh: float, where: str) -> float:
    if (
        isinstance(refresh, bool)
        or not isinstance(refresh, int | float)
        or not math.isfinite(refresh)
        or refresh <= 0
    ):
        raise ConfigError(f"{where}: refresh: expected seconds > 0, got {refresh!r}")
    return float(refresh)


class _Pages:
    """Every page as a pure function of the request: (status, headers, body)."""

    def __init__(self, mesh: Mesh, refresh: float, hosts: frozenset[str] | None) -> None:
        self.mesh = mesh
        self.refresh = refresh
        self.hosts = hosts  # the Host names answered; None: any
        mesh._measure_latency()

    def respond(self, method: str, path: str, query: str, host: str | None, base: str) -> _Response:
        """Answer one request; never changes any state."""
        try:
            status, headers, body = self._route(method, path, query, host, base)
        except Exception:  # a page must never take the service's thread down with it
            logger.exception("meshlib status page failed on %s %s", method, path)
            status, headers, body = _text(500, "the status page failed; see the meshlib log\n")
        headers = [*headers, *_SECURITY_HEADERS, ("content-length", str(len(body)))]
        return status, headers, b"" if method == "HEAD" else body

    def _route(self, method: str, path: str, query: str, host: str | None, base: str) -> _Response:
        if self.hosts is not None and _host_name(host) not in self.hosts:
            # This machine's loopback page asked for under another name: DNS
            # rebinding, a web page reading what it must not. Refused.
            names = ", ".join(sorted(self.hosts))
            return _text(403, f"this status page answers only to {names}\n")
        if method not in ("GET", "HEAD"):
            status, headers, body = _text(405, f"read-only: {_ALLOW} only\n")
            return status, [*headers, ("allow", _ALLOW)], body
        params = {name: values[-1] for name, values in parse_qs(query).items()}
        fragment = params.get("fragment") == "1"
        if path in ("", "/"):
            return self._overview(base, fragment)
        if path == "/destination":
            return self._destination(base, params.get("name", ""), fragment)
        if path == "/status.json":
            body = json.dumps(snapshot(self.mesh), indent=1, ensure_ascii=False).encode()
            return 200, [("content-type", "application/json")], body
        if path == "/config":
            return _text(200, self._config())
        if path == "/config_dump":
            body = json.dumps(self.mesh.config_dump(), indent=1, ensure_ascii=False).encode()
            return 200, [("content-type", "application/json")], body
        if path == "/admin.js":
            return 200, [("content-type", "text/javascript; charset=utf-8")], _SCRIPT
        if path == "/admin.css":
            return 200, [("content-type", "text/css; charset=utf-8")], _STYLE
        return _text(404, "not found: try /, /status.json, /config or /config_dump\n")

    def _config(self) -> str:
        mesh = self.mesh
        data = snapshot(mesh)
        lines = ["# The policies this process's Mesh has in force, as a policy file."]
        source = data["source"]
        if source is not None:
            lines.append(f"# From {source['location']}, version {source['version']}.")
        clients = [d for d in data["destinations"] if d["policy"]["from"] == "client"]
        if clients:
            lines.append(
                "# Clients given their own policy (not the table's): "
                + ", ".join(d["key"] for d in clients)
                + "; see /destination?name=..."
            )
        return (
            "\n".join(lines) + "\n\n" + table_toml(mesh.default, mesh.destinations, mesh.clusters)
        )

    def _overview(self, base: str, fragment: bool) -> _Response:
        data = snapshot(self.mesh)
        rows = []
        shown = data["destinations"][:_MAX_ROWS]  # the most urgent first: the rest can wait
        for row in shown:
            text = cells(row)
            link = f"{base}/destination?name={quote(row['key'], safe='')}"
            out = [f'<td><a href="{_e(link)}">{_e(text["destination"])}</a></td>']
            out.append(
                f'<td class="status"><span class="badge {row["status"]}">{_e(row["status"])}'
                f"</span> <small>{_e(row['reason'])}</small></td>"
            )
            breaker = row["breaker"]["state"] if row["breaker"] is not None else "off"
            out.append(f'<td class="breaker {breaker}" data-breaker="{breaker}">')
            out[-1] += f"{_e(text['breaker'])}</td>"
            out += [f"<td>{_e(text[c])}</td>" for c in COLUMNS[3:]]
            rows.append(
                f'<tr data-destination="{_e(row["key"])}" data-status="{row["status"]}">'
                + "".join(out)
                + "</tr>"
            )
        more = len(data["destinations"]) - len(shown)
        if more > 0:
            rows.append(
                f'<tr><td colspan="{len(COLUMNS)}" class="empty">and {more} more '
                f'destinations, each in <a href="{_e(base)}/status.json">status.json</a></td></tr>'
            )
        if not rows:
            rows.append(
                f'<tr><td colspan="{len(COLUMNS)}" class="empty">No destination has been '
                "called yet.</td></tr>"
            )
        head = "".join(f"<th>{_e(c)}</th>" for c in COLUMNS)
        live = (
            _header(data)
            + f'<table id="destinations"><thead><tr>{head}</tr></thead><tbody>'
            + "".join(rows)
            + "</tbody></table>"
            + f'<p class="note">Latency: {_e(data["latency_sketch"])}. Rates and success over '
            "the retry budget's and the breaker's windows.</p>"
        )
        return self._page(base, "meshlib status", live, fragment)

    def _destination(self, base: str, key: str, fragment: bool) -> _Response:
        data = snapshot(self.mesh)
        row = next((d for d in data["destinations"] if d["key"] == key), None)
        back = f'<p><a href="{_e(base)}/">&larr; all destinations</a></p>'
        if row is None:
            body = (
                back + f"<p>No destination {_e(key)} is in use (it may not have been called "
                "yet, or was forgotten).</p>"
            )
            _, headers, page = self._page(base, "meshlib status", body, fragment)
            return 404, headers, page
        text = cells(row)
        facts = [
            (
                "status",
                f'<span class="badge {row["status"]}">{_e(row["status"])}</span> '
                f"{_e(row['reason'])}",
            ),
            ("policy", _e(_origin(row["policy"]))),
        ]
        facts += [(c, _e(text[c])) for c in COLUMNS[2:10]]
        breaker = row["breaker"]
        if breaker is not None:
            facts.append(
                (
                    "breaker window",
                    _e(
                        f"{breaker['calls']} calls, {breaker['successes']} succeeded, "
                        f"{breaker['failures']} failed over {breaker['window']:g}s; "
                        f"last change {breaker['changed_at']}; trips in a row {breaker['trips']}"
                    ),
                )
            )
        budget = row["budget"]
        if budget is not None:
            facts.append(
                (
                    "budget window",
                    _e(
                        f"{budget['requests']} requests, {budget['retries']} retries over "
                        f"{budget['window']:g}s"
                    ),
                )
            )
        dl = "".join(f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in facts)
        endpoints = row["endpoints"]
        if endpoints is None:
            table = "<p>No endpoints: requests go to the destination's own address.</p>"
        else:
            names = (
                "address",
                "state",
                "ejected for",
                "ejections",
                "in flight",
                "failures in a row",
                "latency (peak EWMA)",
                "weight",
            )
            lines = []
            for e in endpoints:
                state = "ejected" if e["state"] == "ejected" else "in-use"
                ejected_for = f"{e['ejected_for']:.1f}s" if e["ejected_for"] else "-"
                latency = f"{e['latency'] * 1000:.3g}ms" if e["latency"] else "-"
                lines.append(
                    f'<tr data-endpoint="{_e(e["address"])}" data-state="{state}">'
                    f"<td>{_e(e['address'])}</td>"
                    f'<td><span class="badge {"failing" if state == "ejected" else "healthy"}">'
                    f"{_e(e['state'])}</span></td>"
                    f"<td>{_e(ejected_for)}</td>"
                    f"<td>{e['ejections']}</td><td>{e['in_flight']}</td>"
                    f"<td>{e['failures_in_a_row']}</td>"
                    f"<td>{_e(latency)}</td><td>{e['weight']:.6g}</td></tr>"
                )
            head = "".join(f"<th>{_e(n)}</th>" for n in names)
            table = (
                f'<table id="endpoints"><thead><tr>{head}</tr></thead>'
                f"<tbody>{''.join(lines)}</tbody></table>"
            )
        live = (
            _header(data)
            + f"<h2>{_e(row['key'])}</h2><dl>{dl}</dl><h3>Endpoints</h3>{table}"
            + f"<h3>Effective policy</h3><pre>{_e(row['described'])}</pre>"
            + f'<h3>As a policy file</h3><pre id="effective">{_e(row["effective"])}</pre>'
        )
        return self._page(base, f"meshlib status: {row['key']}", back + live, fragment)

    def _page(self, base: str, title: str, live: str, fragment: bool) -> _Response:
        kind = [("content-type", "text/html; charset=utf-8")]
        if fragment:
            return 200, kind, live.encode()
        every = round(self.refresh * 1000)
        page = (
            '<!doctype html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title>"
            f'<link rel="stylesheet" href="{_e(base)}/admin.css">'
            f'<script src="{_e(base)}/admin.js" defer></script></head><body>'
            f'<h1><a href="{_e(base)}/">meshlib</a> status</h1>'
            '<p id="stale" class="stale" hidden>Lost contact with the process: '
            "showing its last answer.</p>"
            f'<main id="live" data-refresh-ms="{every}">{live}</main>'
            f'<footer><a href="{_e(base)}/status.json">status.json</a> · '
            f'<a href="{_e(base)}/config">config</a> · refreshes every {self.refresh:g}s'
            "</footer></body></html>"
        )
        return 200, kind, page.encode()


def _origin(origin: dict[str, Any]) -> str:
    if origin["from"] == "client":
        return "the client's own policy (wrap / Transport)"
    where = "default" if origin["pattern"] is None else f'pattern "{origin["pattern"]}"'
    if origin["source"]:
        where += f" of {origin['source']} (version {origin['version']})"
    return where


def _header(data: dict[str, Any]) -> str:
    source = data["source"]
    if source is None:
        where = "policies set in code"
    else:
        where = (
            f"policies from {source['location']}, version {source['version']}, "
            f"loaded {source['loaded_at']}"
        )
    parts = [f"process {data['pid']}", where, f"at {data['generated_at']}"]
    text = f'<p class="meta" id="generated">{_e(" · ".join(parts))}</p>'
    if source is not None and source["last_refusal"] is not None:
        refusal = source["last_refusal"]
        kind = "refused" if source["failing"] else "past"
        text += (
            f'<p class="refusal {kind}">Last refused update ({_e(refusal["at"])}): '
            f"{_e(refusal['reason'])}"
            + (" — the last good policies stay in force." if source["failing"] else "")
            + "</p>"
        )
    return text


def _e(text: str) -> str:
    return html.escape(str(text), quote=True)


def _text(status: int, text: str) -> _Response:
    return status, [("content-type", "text/plain; charset=utf-8")], text.encode()


def _host_name(host: str | None) -> str:
    """Return the name part of a Host header, lower case, brackets kept for IPv6."""
    if not host:
        return ""
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class _ASGI:
    """The pages as an ASGI application; the snapshot is built off the event loop."""

    def __init__(self, pages: _Pages) -> None:
        self.pages = pages

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return
        import anyio.to_thread

        root = scope.get("root_path", "") or ""
        path = scope.get("path", "/")
        if root and path.startswith(root):
            path = path[len(root) :]  # mounted: the path under the mount point
        host = next(
            (v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"host"), None
        )
        query = scope.get("query_string", b"").decode("latin-1")
        status, headers, body = await anyio.to_thread.run_sync(
            self.pages.respond, scope["method"], path, query, host, root.rstrip("/")
        )
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.encode(), v.encode()) for k, v in headers],
            }
        )
        await send({"type": "http.response.body", "body": body})


def app(mesh: Mesh | None = None, *, refresh: float = 2.0) -> ASGIApp:
    """Return the status page of `mesh` as an ASGI application.

    Mount it in the service's own ASGI app (under any prefix) or serve it with
    any ASGI server. It answers GET and HEAD only. It does not check the Host
    header (the service it is mounted in decides who may reach it): serve it
    behind the same access rules as any other internal page.

    Args:
        mesh: the Mesh to show; None: the process-wide default one.
        refresh: seconds between the page's own updates.

    Raises:
        ConfigError: `mesh` is not a Mesh, or `refresh` is not a number of seconds > 0.
    """
    mesh = _check_mesh(mesh, "admin.app")
    return _ASGI(_Pages(mesh, _check_refresh(refresh, "admin.app"), None))


class Server:
    """A running status page server; `close` stops it.

    Attributes:
        host: the address it is bound to.
        port: the port it is bound to (the one the OS chose, for ``port=0``).
        url: ``http://host:port``, to open in a browser or pass to ``meshlib status``.
    """

    def __init__(self, httpd: http.server.ThreadingHTTPServer, host: str) -> None:
        self._httpd = httpd
        self.host = host
        self.port: int = httpd.server_address[1]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self.port}"
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"meshlib-admin {self.url}",
            daemon=True,
        )
        self._thread.start()
        self._closed = False

    def close(self) -> None:
        """Stop serving and free the port; calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def __enter__(self) -> Server:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<meshlib.admin.Server {self.url}{' closed' if self._closed else ''}>"


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(
    mesh: Mesh | None = None,
    port: int = 15000,
    host: str = "127.0.0.1",
    *,
    allow_remote: bool = False,
    refresh: float = 2.0,
) -> Server:
    """Serve the status page of `mesh` from a daemon thread, and return at once.

    For sync and async services alike: the server runs its own threads. By
    default it listens on 127.0.0.1 only and answers only requests addressed to
    a loopback name (so a web page cannot read it through DNS rebinding); to
    listen elsewhere, pass the address and ``allow_remote=True``.

    Args:
        mesh: the Mesh to show; None: the process-wide default one.
        port: the TCP port; 0 lets the OS choose (see `Server.port`).
        host: the address to bind: a loopback address or ``localhost`` unless
            `allow_remote`.
        allow_remote: allow a non-loopback `host`, and any Host header.
        refresh: seconds between the page's own updates.

    Returns:
        the running `Server`; `Server.close` stops it.

    Raises:
        ConfigError: a bad `port` or `host`, a non-loopback `host` without
            `allow_remote`, or an address that cannot be bound (in use, not
            this machine's).
    """
    mesh = _check_mesh(mesh, "admin.serve")
    every = _check_refresh(refresh, "admin.serve")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"admin.serve: port: expected an int from 0 to 65535, got {port!r}")
    if not isinstance(host, str) or not host.strip():
        raise ConfigError(
            f"admin.serve: host: expected an address such as '127.0.0.1', got {host!r}"
        )
    host = host.strip().strip("[]")
    if not isinstance(allow_remote, bool):
        raise ConfigError(
            f"admin.serve: allow_remote: expected True or False, got {allow_remote!r}"
        )
    if not allow_remote and not _is_loopback(host):
        raise ConfigError(
            f"admin.serve: host: {host!r} is not a loopback address; the status page "
            "binds to 127.0.0.1 unless allow_remote=True asks for more"
        )
    hosts = None if allow_remote else _LOOPBACK_NAMES | {host.lower(), f"[{host.lower()}]"}
    pages = _Pages(mesh, every, hosts)
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except (socket.gaierror, UnicodeError) as exc:
        raise ConfigError(f"admin.serve: host: cannot resolve {host!r}: {exc}") from exc

    try:
        httpd = _listen(pages, family, host, port)
    except OSError as exc:
        raise ConfigError(
            f"admin.serve: cannot listen on {host}:{port}: {exc.strerror or exc}"
        ) from exc
    return Server(httpd, host)


def _listen(pages: _Pages, family: int, host: str, port: int) -> http.server.ThreadingHTTPServer:
    """Bind the standard library's threaded server to (host, port), answering with `pages`."""
    import http.server  # here, not at the top: `import meshlib` does not pay for it

    class Handler(http.server.BaseHTTPRequestHandler):
        """Every method goes to the same read-only pages."""

        server_version = "meshlib-admin"
        sys_version = ""
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            path, _, query = self.path.partition("?")
            status, headers, body = pages.respond(
                self.command, path, query, self.headers.get("host"), ""
            )
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            if self.command not in ("GET", "HEAD"):
                self.send_header("connection", "close")  # its body, if any, is not read
                self.close_connection = True
            self.end_headers()
            self.wfile.write(body)

        def __getattr__(self, name: str) -> Any:
            # BaseHTTPRequestHandler looks up do_<METHOD>: every method is answered (405).
            if name.startswith("do_"):
                return self._answer
            raise AttributeError(name)

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("admin: " + format, *args)

    class Httpd(http.server.ThreadingHTTPServer):
        address_family = socket.AddressFamily(family)
        daemon_threads = True
        request_queue_size = 64  # several browsers and scripts polling at once
        allow_reuse_address = True

    return Httpd((host, port), Handler)


def _status_command(url: str, as_json: bool) -> int:
    """Run ``meshlib status URL``: print the table (or the JSON) and return the exit status."""
    import os
    import sys

    import httpx

    target = url.strip()
    if not target.rstrip("/").endswith("/status.json"):
        target = target.rstrip("/") + "/status.json"
    try:
        response = httpx.get(target, timeout=10.0)  # a plain client: no policy of its own
    except (httpx.HTTPError, ValueError) as exc:
        print(f"meshlib status: cannot read {scrub(target)}: {exc}", file=sys.stderr)
        return 1
    try:
        data = response.json() if response.status_code == 200 else None
    except ValueError:
        data = None
    if not isinstance(data, dict) or data.get("version") != VERSION:
        reason = (
            f"HTTP {response.status_code}"
            if response.status_code != 200
            else f"not a meshlib status page of version {VERSION}"
        )
        print(f"meshlib status: {scrub(target)}: {reason}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
        return 0
    colour = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    for paragraph in _header(data).split("</p>"):  # the page's header lines, as text
        text = html.unescape(_TAGS.sub("", paragraph)).strip()
        if text:
            print(text)
    rows = [cells(row) for row in data["destinations"]]
    if not rows:
        print("No destination has been called yet.")
        return 0
    lines = text_table(rows)
    print(lines[0])
    for row, line in zip(data["destinations"], lines[1:], strict=True):
        if colour:
            word = row["status"]
            line = line.replace(word, f"\x1b[{_ANSI[word]}m{word}\x1b[0m", 1)
        print(line)
    for row in data["destinations"]:
        if row["reason"]:
            print(f"{row['key']}: {row['reason']}")
    return 0


_TAGS = re.compile(r"<[^>]+>")
_ANSI = {"failing": "1;31", "recovering": "1;33", "degraded": "33", "healthy": "32", "idle": "2"}

_STYLE = b"""
:root { --failing: #b42318; --recovering: #b54708; --degraded: #a15c07; --healthy: #067647;
  --idle: #667085; font-family: system-ui, sans-serif; color: #101828; }
body { margin: 1.5rem; }
h1 { font-size: 1.3rem; margin: 0 0 .3rem; } h1 a { color: inherit; text-decoration: none; }
.meta, .note, footer { color: #475467; font-size: .85rem; }
table { border-collapse: collapse; width: 100%; font-size: .9rem; }
th, td { text-align: left; padding: .35rem .6rem; border-bottom: 1px solid #eaecf0;
  white-space: nowrap; }
th { background: #f9fafb; font-weight: 600; }
td.status small { color: #475467; white-space: normal; }
.badge { display: inline-block; min-width: 5.5em; text-align: center; border-radius: 1em;
  padding: .05rem .5rem; font-weight: 600; color: #fff; background: var(--idle); }
.badge.failing { background: var(--failing); } .badge.recovering { background: var(--recovering); }
.badge.degraded { background: var(--degraded); } .badge.healthy { background: var(--healthy); }
tr[data-status="failing"] td { background: #fef3f2; }
tr[data-status="recovering"] td, tr[data-status="degraded"] td { background: #fffaeb; }
td.breaker.open { color: var(--failing); font-weight: 600; }
td.breaker.half_open { color: var(--recovering); font-weight: 600; }
.refusal { border-left: 4px solid var(--degraded); padding: .3rem .6rem; background: #fffaeb; }
.refusal.refused { border-color: var(--failing); background: #fef3f2; }
.stale { background: #fef3f2; color: var(--failing); padding: .3rem .6rem; }
dl { display: grid; grid-template-columns: max-content auto; gap: .2rem 1rem; }
dt { color: #475467; } dd { margin: 0; }
pre { background: #f9fafb; padding: .6rem; overflow-x: auto; font-size: .85rem; }
.empty { color: #475467; text-align: center; }
"""

# Swap the live part in place from ?fragment=1: no reload, no flicker, no framework.
_SCRIPT = b"""\
"use strict";
(function () {
  var live = document.getElementById("live");
  if (!live || !window.fetch) { return; }
  var every = Number(live.getAttribute("data-refresh-ms")) || 2000;
  var stale = document.getElementById("stale");
  var last = null;
  function address() {
    var url = new URL(window.location.href);
    url.searchParams.set("fragment", "1");
    return url.toString();
  }
  function tick() {
    fetch(address(), { cache: "no-store" })
      .then(function (response) {
        // 404: a destination not in use (yet); its page still says so.
        if (!response.ok && response.status !== 404) { throw new Error("HTTP " + response.status); }
        return response.text();
      })
      .then(function (html) {
        if (html !== last) { live.innerHTML = html; last = html; }
        stale.hidden = true;
      })
      .catch(function () { stale.hidden = false; })
      .then(function () { window.setTimeout(tick, every); });
  }
  window.setTimeout(tick, every);
})();
"""
