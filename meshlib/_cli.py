"""The ``meshlib`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import httpx

from ._config import MeshConfig, load_config, parse_config
from ._demo import run_demo
from ._errors import ConfigError
from ._explain import explain, plural
from ._mesh import Mesh
from ._policy import is_host
from ._state import Destination
from ._version import __version__
from .admin import _status_command

__all__ = ["main"]

STDIN = "-"
"""The file name that means standard input, as most command-line tools spell it."""

STDIN_SOURCE = "<stdin>"
"""How messages name a policy document read from standard input."""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("meshlib")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return __version__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``meshlib`` command and return its exit status."""
    parser = argparse.ArgumentParser(
        prog="meshlib", description="A service mesh's client-side smarts, inside the process."
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {_version()}", help="print the version"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "demo",
        help="retries, deadlines, a breaker, a bulkhead, a canary and a hedge against "
        "servers on 127.0.0.1, in a few seconds",
    )
    check = commands.add_parser(
        "check",
        help="validate policy files; exit 1 with the reason when one is bad",
        description="Validate policy files (TOML or JSON). Exit 0 when all are valid, "
        "else 1 with the reason on stderr. FILE '-' reads the document from standard "
        "input: JSON when its first character is '{', else TOML.",
    )
    check.add_argument(
        "files", nargs="+", metavar="FILE", help="a policy file (.toml or .json), or - for stdin"
    )
    explain = commands.add_parser(
        "explain",
        help="the effective policy for one destination",
        description="Show which pattern of a policy file applies to a destination, and the "
        "policy it gets, layer by layer, with the table each layer comes from. A URL fills "
        "in the scheme's default port, as requests do.",
    )
    explain.add_argument(
        "file", metavar="FILE", help="a policy file (.toml or .json), or - for stdin"
    )
    explain.add_argument(
        "destination", metavar="HOST[:PORT]", help="a host, host:port or URL, e.g. orders.internal"
    )
    status = commands.add_parser(
        "status",
        help="what a running process's mesh is doing (its meshlib.admin page)",
        description="Print the status table of a process serving meshlib.admin: every "
        "destination in use, the failing first. Exit 1 when the page cannot be read.",
    )
    status.add_argument("url", metavar="URL", help="the status page, e.g. http://127.0.0.1:15000")
    status.add_argument("--json", action="store_true", help="print /status.json as served")
    args = parser.parse_args(argv)
    if args.command == "status":
        return _status_command(args.url, args.json)
    if args.command == "demo":
        return run_demo()
    if args.command == "check":
        if args.files.count(STDIN) > 1:
            parser.error("check: - (standard input) may be given only once")
        return _check(args.files)
    if args.command == "explain":
        problem = None
        try:
            host, port = _destination(args.destination)
        except ValueError as exc:  # unless the file names a cluster so
            host, port, problem = args.destination, None, str(exc)
        return _explain(args.file, host, port, problem, parser)
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover - argparse refuses first
    return 2  # pragma: no cover


def _load(name: str) -> MeshConfig:
    """Read the policy document `name` names: a file, or standard input for ``-``."""
    if name == STDIN:
        # The format comes from the content: a TOML document cannot start with "{".
        return parse_config(sys.stdin.buffer.read(), STDIN_SOURCE)
    return load_config(name)


def _check(files: Sequence[str]) -> int:
    status = 0
    for name in files:
        try:
            config = _load(name)
            Mesh(config.default, config.destinations)  # what the Mesh itself refuses, too
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            status = 1
            continue
        shown = STDIN_SOURCE if name == STDIN else name
        print(f"{shown}: ok ({plural(len(config.destinations), 'destination')})")
    return status


def _destination(text: str) -> tuple[str, int | None]:
    """Split ``host``, ``host:port``, ``[v6]:port`` or a URL into the host and the port.

    Raises:
        ValueError: `text` is none of those, or names a host no request can have.
    """
    text = text.strip()
    port: int | None
    if "://" in text:
        try:
            destination = Destination.of(httpx.URL(text))
        except httpx.InvalidURL as exc:
            raise ValueError(f"not a URL: {text!r} ({exc})") from exc
        if destination.scheme not in ("http", "https"):
            raise ValueError(f"not an http or https URL: {text!r}")
        if not destination.host:
            raise ValueError(f"not a URL with a host: {text!r}")
        host, port = destination.host, destination.port
    else:
        host, port_text = text, ""
        if text.startswith("["):  # an IPv6 literal: [::1] or [::1]:8080
            host, bracket, rest = text[1:].partition("]")
            if not bracket or ":" not in host or (rest and not rest.startswith(":")):
                raise ValueError(f"not a host[:port]: {text!r}")
            port_text = rest[1:]
        elif text.count(":") == 1:
            host, _, port_text = text.partition(":")
        if not host:
            raise ValueError(f"not a host[:port]: {text!r}")
        if text.endswith(":") or (
            port_text
            and not (port_text.isascii() and port_text.isdigit() and 0 < int(port_text) < 65536)
        ):
            raise ValueError(f"not a port: {port_text!r} in {text!r}")
        port = int(port_text) if port_text else None
    if not is_host(host):
        where = "" if host == text else f" in {text!r}"
        raise ValueError(f"not a host name or IP address: {host!r}{where}")
    return host, port


def _explain(
    file: str, host: str, port: int | None, problem: str | None, parser: argparse.ArgumentParser
) -> int:
    try:
        config = _load(file)
        mesh = Mesh(config.default, config.destinations, clusters=config.clusters)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    if problem is not None and host not in config.clusters:
        parser.error(problem)
    shown = STDIN_SOURCE if file == STDIN else file
    print(f"{shown}: {explain(config, host, port, mesh=mesh)}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
