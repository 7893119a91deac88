"""The ``meshlib`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import httpx

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``meshlib`` command and return its exit status."""
    parser = argparse.ArgumentParser(
        prog="meshlib", description="A service mesh's client-side smarts, inside the process."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="a flaky upstream on 127.0.0.1 and what the mesh did about it")
    check = commands.add_parser(
        "check",
        help="validate policy files; exit 1 with the reason when one is bad",
        description="Validate policy files (TOML or JSON). Exit 0 when all are valid, "
        "else 1 with the reason on stderr.",
    )
    check.add_argument("files", nargs="+", metavar="FILE", help="a policy file (.toml or .json)")
    explain = commands.add_parser(
        "explain",
        help="the effective policy for one destination",
        description="Show which pattern of a policy file applies to a destination, and the "
        "policy it gets, layer by layer, with the table each layer comes from. A URL fills "
        "in the scheme's default port, as requests do.",
    )
    explain.add_argument("file", metavar="FILE", help="a policy file (.toml or .json)")
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
        from .admin import _status_command

        return _status_command(args.url, args.json)
    if args.command == "demo":
        from ._demo import run_demo

        return run_demo()
    if args.command == "check":
        return _check(args.files)
    if args.command == "explain":
        try:
            host, port = _destination(args.destination)
        except ValueError as exc:
            parser.error(str(exc))
        return _explain(args.file, host, port)
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover - argparse refuses first
    return 2  # pragma: no cover


def _check(files: Sequence[str]) -> int:
    from ._config import load_config
    from ._errors import ConfigError
    from ._mesh import Mesh

    status = 0
    for name in files:
        try:
            config = load_config(name)
            Mesh(config.default, config.destinations)  # what the Mesh itself refuses, too
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            status = 1
            continue
        count = len(config.destinations)
        print(f"{name}: ok ({count} destination{'' if count == 1 else 's'})")
    return status


def _destination(text: str) -> tuple[str, int | None]:
    """Split ``host``, ``host:port``, ``[v6]:port`` or a URL into the host and the port."""
    text = text.strip()
    if "://" in text:
        from ._state import Destination

        try:
            destination = Destination.of(httpx.URL(text))
        except httpx.InvalidURL as exc:
            raise ValueError(f"not a URL: {text!r} ({exc})") from exc
        if not destination.host:
            raise ValueError(f"not a URL with a host: {text!r}")
        return destination.host, destination.port
    host, port = text, ""
    if text.startswith("["):  # an IPv6 literal: [::1] or [::1]:8080
        host, _, rest = text[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise ValueError(f"not a host[:port]: {text!r}")
        port = rest[1:]
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    if not host:
        raise ValueError(f"not a host[:port]: {text!r}")
    if text.endswith(":") or (port and not (port.isdigit() and int(port) <= 65535)):
        raise ValueError(f"not a port: {port!r} in {text!r}")
    return host, int(port) if port else None


def _explain(file: str, host: str, port: int | None) -> int:
    from ._config import explain, load_config
    from ._errors import ConfigError
    from ._mesh import Mesh

    try:
        config = load_config(file)
        mesh = Mesh(config.default, config.destinations)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"{file}: {explain(config, host, port, mesh=mesh)}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
