"""A fleet's policy file, read the way every service reads it.

Run it with no arguments: ``.venv/bin/python examples/fleet/run.py``. No network is used.

It builds the `meshlib.Mesh` a service would build from ``mesh.toml`` next to this
script, runs ``meshlib explain`` for three destinations (an exact host, one that a glob
catches, and one that no pattern names) and ``meshlib check -`` on the same document
written as JSON. Only public names and the ``meshlib`` command are used. The asserts
make it a regression check as well as a demo.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import meshlib

HERE = Path(__file__).resolve().parent
FILE = HERE / "mesh.toml"


def meshlib_command(*args: str, stdin: str | None = None) -> str:
    """Run ``meshlib ARGS...`` as a shell would, and return what it printed."""
    done = subprocess.run(
        [sys.executable, "-m", "meshlib", *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout


def show(destination: str) -> str:
    """Print what ``meshlib explain mesh.toml DESTINATION`` prints; return the table it names."""
    text = meshlib_command("explain", str(FILE), destination)
    print(text.replace(str(FILE), FILE.name))
    return text.splitlines()[0].split(" -> ")[1]


def main() -> None:
    mesh = meshlib.Mesh.from_file(FILE, reload=False)  # what a service does at start-up
    print(f"{FILE.name}: {len(mesh.destinations)} destinations\n")

    assert show("payments.internal:443") == 'destinations."payments.internal"'
    assert show("ledger.svc.cluster.local") == 'destinations."*.svc.cluster.local"'
    assert show("orders.internal") == "default"
    assert mesh.pattern_for("payments.internal", 443) == "payments.internal"
    assert mesh.pattern_for("orders.internal") is None

    # Payments: its own retry, timeout and breaker; the default's bulkhead; STANDARD's tracing.
    payments = mesh.policy_for("payments.internal", 443)
    assert payments.retry == meshlib.Retry(
        attempts=2,
        on_status=frozenset({503}),
        retry_after_cap=5.0,
        backoff=meshlib.Backoff(base=0.1, cap=0.5, jitter="equal"),
        budget=meshlib.Budget(ratio=0.1, min_per_second=2, ttl=10.0),
    )
    assert payments.timeout == meshlib.Timeout(total=5.0, attempt=2.0)
    assert payments.breaker == meshlib.Breaker(
        failure_ratio=0.25,
        min_calls=10,
        window=60.0,
        open_for=10.0,
        max_open_for=120.0,
        consecutive=5,
    )
    assert payments.bulkhead == mesh.default.bulkhead == meshlib.Bulkhead(200, max_queued=50)
    assert payments.tracing == meshlib.STANDARD.tracing

    # The glob changes only the timeout; everything else is the default's.
    cluster = mesh.policy_for("ledger.svc.cluster.local")
    assert cluster == mesh.default.replace(timeout=meshlib.Timeout(total=10.0, attempt=3.0))

    # No pattern: [default], whose unnamed breaker comes from STANDARD.
    orders = mesh.policy_for("orders.internal")
    assert orders is mesh.default
    assert orders.breaker == meshlib.STANDARD.breaker

    # `false` switches layers and optional settings off.
    assert mesh.policy_for("payments.internal", 8443).retry is None
    reports = mesh.policy_for("reports.internal")
    assert reports.breaker is None
    assert reports.timeout == meshlib.Timeout(total=300.0, attempt=None)

    # The same document as JSON configures the same mesh.
    as_json = json.dumps(
        {
            "default": {
                "retry": {"attempts": 3, "backoff": {"base": 0.05, "cap": 1, "jitter": "full"}},
                "timeout": {"total": 30, "attempt": 10},
                "bulkhead": {"max_concurrent": 200, "max_queued": 50},
            }
        }
    )
    checked = meshlib_command("check", "-", stdin=as_json)
    print(f"$ meshlib check - < mesh.json\n{checked}")
    assert checked == "<stdin>: ok (0 destinations)\n"
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "mesh.json"
        path.write_text(as_json)
        assert meshlib.Mesh.from_file(path, reload=False).default == mesh.default
    print("all assertions hold")


if __name__ == "__main__":
    main()
