"""The ``meshlib`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``meshlib`` command and return its exit status."""
    parser = argparse.ArgumentParser(
        prog="meshlib", description="A service mesh's client-side smarts, inside the process."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="a flaky upstream on 127.0.0.1 and what the mesh did about it")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from ._demo import run_demo

        return run_demo()
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover - argparse refuses first
    return 2  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
