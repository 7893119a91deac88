"""A fleet's policy file, read the way every service reads it.

Run it with no arguments: ``python examples/fleet/run.py``. No network is used.

It loads ``mesh.toml`` next to this script, builds the `meshlib.Mesh` a service would
use, and prints what ``meshlib explain`` prints for three destinations: an exact host,
one that a glob catches, and one that no pattern names. The asserts make it a
regression check as well as a demo.
"""

from __future__ import annotations

import json
from pathlib import Path

import meshlib
from meshlib._config import MeshConfig, explain, load_config, parse_config

HERE = Path(__file__).resolve().parent


def show(config: MeshConfig, mesh: meshlib.Mesh, host: str, port: int | None = None) -> str:
    """Print what ``meshlib explain FILE HOST[:PORT]`` prints; return the table that applies."""
    text = explain(config, host, port, mesh=mesh)
    print(text, end="\n\n")
    return text.splitlines()[0].split(" -> ")[1]


def main() -> None:
    config = load_config(HERE / "mesh.toml")
    mesh = meshlib.Mesh(config.default, config.destinations)
    name = Path(config.source).name
    print(f"{name}: {len(config.destinations)} destinations, sha256 {config.digest[:12]}")
    print()

    assert show(config, mesh, "payments.internal", 443) == 'destinations."payments.internal"'
    assert show(config, mesh, "ledger.svc.cluster.local") == 'destinations."*.svc.cluster.local"'
    assert show(config, mesh, "orders.internal") == "default"

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
    assert payments.bulkhead == config.default.bulkhead == meshlib.Bulkhead(200, max_queued=50)
    assert payments.tracing == meshlib.STANDARD.tracing

    # The glob changes only the timeout; everything else is the default's.
    cluster = mesh.policy_for("ledger.svc.cluster.local")
    assert cluster == config.default.replace(timeout=meshlib.Timeout(total=10.0, attempt=3.0))

    # No pattern: [default], whose unnamed breaker comes from STANDARD.
    orders = mesh.policy_for("orders.internal")
    assert orders is config.default
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
    assert parse_config(as_json.encode(), "mesh.json").default == config.default
    print("all assertions hold")


if __name__ == "__main__":
    main()
