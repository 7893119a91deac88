"""The xDS bootstrap: gRPC's proxyless format, its errors, where it is found."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import meshlib
from meshlib._xds.bootstrap import (
    DEFAULT_REFRESH_INTERVAL,
    Bootstrap,
    ChannelCreds,
    FileWatcher,
    Locality,
    load_bootstrap,
    parse_bootstrap,
)

# The shape Istio's agent writes for proxyless gRPC (GRPC_XDS_BOOTSTRAP).
ISTIO = {
    "xds_servers": [
        {
            "server_uri": "unix:///etc/istio/proxy/XDS",
            "channel_creds": [{"type": "insecure"}],
            "server_features": ["xds_v3"],
        }
    ],
    "node": {
        "id": "sidecar~10.244.0.7~orders-v1-5d9.default~default.svc.cluster.local",
        "metadata": {
            "GENERATOR": "grpc",
            "INSTANCE_IPS": "10.244.0.7",
            "LABELS": {"app": "orders", "version": "v1"},
            "ISTIO_VERSION": "1.24.0",
        },
        "locality": {"region": "eu-west1", "zone": "eu-west1-b"},
        "UserAgentVersionType": None,
    },
    "certificate_providers": {
        "default": {
            "plugin_name": "file_watcher",
            "config": {
                "certificate_file": "/var/lib/istio/data/cert-chain.pem",
                "private_key_file": "/var/lib/istio/data/key.pem",
                "ca_certificate_file": "/var/lib/istio/data/root-cert.pem",
                "refresh_interval": "900s",
            },
        }
    },
    "server_listener_resource_name_template": "xds.istio.io/grpc/lds/inbound/%s",
}


def parse(document: Any) -> Bootstrap:
    return parse_bootstrap(json.dumps(document), "xds-bootstrap.json")


def server(**fields: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "server_uri": "xds.internal:443",
        "channel_creds": [{"type": "insecure"}],
    }
    entry.update(fields)
    return {"xds_servers": [entry]}


def test_istio_agent_bootstrap() -> None:
    bootstrap = parse(ISTIO)
    assert bootstrap.source == "xds-bootstrap.json"
    assert bootstrap.xds_server.server_uri == "unix:///etc/istio/proxy/XDS"
    assert bootstrap.xds_server.channel_creds == ChannelCreds("insecure")
    assert bootstrap.xds_server.server_features == ("xds_v3",)
    assert not bootstrap.xds_server.ignore_resource_deletion
    node = bootstrap.node
    assert node.id == "sidecar~10.244.0.7~orders-v1-5d9.default~default.svc.cluster.local"
    assert node.cluster == ""
    assert node.metadata["GENERATOR"] == "grpc"
    assert node.metadata["LABELS"]["version"] == "v1"
    assert node.locality == Locality(region="eu-west1", zone="eu-west1-b")
    assert bootstrap.certificate_providers == {
        "default": FileWatcher(
            certificate_file="/var/lib/istio/data/cert-chain.pem",
            private_key_file="/var/lib/istio/data/key.pem",
            ca_certificate_file="/var/lib/istio/data/root-cert.pem",
            refresh_interval=900.0,
        )
    }
    assert bootstrap.unsupported_certificate_providers == {}


def test_values_are_frozen() -> None:
    bootstrap = parse(ISTIO)
    with pytest.raises(AttributeError):
        bootstrap.node.id = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        bootstrap.node.metadata["GENERATOR"] = "envoy"  # type: ignore[index]
    with pytest.raises(TypeError):
        bootstrap.node.metadata["LABELS"]["app"] = "x"
    with pytest.raises(TypeError):
        bootstrap.certificate_providers["x"] = FileWatcher(ca_certificate_file="/ca")  # type: ignore[index]


def test_minimal_bootstrap_takes_defaults() -> None:
    bootstrap = parse(server())
    assert bootstrap.node.id == ""
    assert bootstrap.node.metadata == {}
    assert bootstrap.node.locality == Locality()
    assert bootstrap.certificate_providers == {}
    assert bootstrap.xds_server.server_features == ()


def test_first_supported_channel_creds_win_and_later_ones_are_not_read() -> None:
    creds = [{"type": "google_default"}, {"type": "insecure"}, {"type": 42}]
    assert parse(server(channel_creds=creds)).xds_server.channel_creds.type == "insecure"


def test_tls_channel_creds() -> None:
    creds = [
        {
            "type": "tls",
            "config": {
                "ca_certificate_file": "/ca.pem",
                "certificate_file": "/c.pem",
                "private_key_file": "/k.pem",
                "refresh_interval": "1.5s",
            },
        }
    ]
    assert parse(server(channel_creds=creds)).xds_server.channel_creds == ChannelCreds(
        "tls", "/ca.pem", "/c.pem", "/k.pem", 1.5
    )
    plain = parse(server(channel_creds=[{"type": "tls"}])).xds_server.channel_creds
    assert plain == ChannelCreds("tls", refresh_interval=DEFAULT_REFRESH_INTERVAL)


def test_server_features_and_ignore_resource_deletion() -> None:
    features = ["xds_v3", "ignore_resource_deletion"]
    bootstrap = parse(server(server_features=features))
    assert bootstrap.xds_server.ignore_resource_deletion


def test_unknown_fields_are_ignored_as_grpc_does() -> None:
    document = server(some_future_field={"x": 1})
    document["authorities"] = {"x": {}}
    document["node"] = {"id": "n", "user_agent_name": "ignored", "extra": [1]}
    assert parse(document).node.id == "n"


def test_other_certificate_plugins_are_kept_by_name_only() -> None:
    document = server()
    document["certificate_providers"] = {
        "mesh": {"plugin_name": "meshca", "config": {"anything": True}},
        "off": None,
    }
    bootstrap = parse(document)
    assert bootstrap.certificate_providers == {}
    assert bootstrap.unsupported_certificate_providers == {"mesh": "meshca"}


def test_file_watcher_with_only_a_ca_and_default_refresh() -> None:
    document = server()
    document["certificate_providers"] = {
        "roots": {"plugin_name": "file_watcher", "config": {"ca_certificate_file": "/ca.pem"}}
    }
    assert parse(document).certificate_providers["roots"] == FileWatcher(
        ca_certificate_file="/ca.pem", refresh_interval=600.0
    )


def watcher(config: Any) -> dict[str, Any]:
    document = server()
    document["certificate_providers"] = {
        "default": {"plugin_name": "file_watcher", "config": config}
    }
    return document


def node(value: Any) -> dict[str, Any]:
    document = server()
    document["node"] = value
    return document


BAD = [
    ({}, "xds_servers: missing"),
    ({"xds_servers": None}, "xds_servers: missing"),
    ({"xds_servers": []}, "xds_servers: expected a non-empty list, got []"),
    ({"xds_servers": {"a": 1}}, 'xds_servers: expected a non-empty list, got {"a": 1}'),
    ({"xds_servers": ["x"]}, 'xds_servers[0]: expected a JSON object, got "x"'),
    (
        {"xds_servers": [{"channel_creds": [{"type": "insecure"}]}]},
        "xds_servers[0].server_uri: missing",
    ),
    (server(server_uri=""), 'xds_servers[0].server_uri: expected a non-empty string, got ""'),
    (server(server_uri=8080), "xds_servers[0].server_uri: expected a non-empty string, got 8080"),
    ({"xds_servers": [{"server_uri": "x"}]}, "xds_servers[0].channel_creds: missing"),
    (
        server(channel_creds=[]),
        "xds_servers[0].channel_creds: expected a non-empty list, got []",
    ),
    (
        server(channel_creds=["insecure"]),
        'xds_servers[0].channel_creds[0]: expected a JSON object, got "insecure"',
    ),
    (server(channel_creds=[{}]), "xds_servers[0].channel_creds[0].type: missing"),
    (
        server(channel_creds=[{"type": "google_default"}, {"type": "sts"}]),
        "xds_servers[0].channel_creds: no supported type (insecure, tls) among "
        '["google_default", "sts"]',
    ),
    (
        server(channel_creds=[{"type": "tls", "config": []}]),
        "xds_servers[0].channel_creds[0].config: expected a JSON object, got []",
    ),
    (
        server(channel_creds=[{"type": "tls", "config": {"certificate_file": "/c.pem"}}]),
        "xds_servers[0].channel_creds[0].config: certificate_file and private_key_file "
        "must be set together",
    ),
    (
        server(channel_creds=[{"type": "tls", "config": {"ca_certificate_file": ""}}]),
        "xds_servers[0].channel_creds[0].config.ca_certificate_file: "
        'expected a non-empty string, got ""',
    ),
    (
        server(channel_creds=[{"type": "tls", "config": {"refresh_interval": 60}}]),
        "xds_servers[0].channel_creds[0].config.refresh_interval: expected a string, got 60",
    ),
    (
        server(server_features="xds_v3"),
        'xds_servers[0].server_features: expected a list, got "xds_v3"',
    ),
    (server(server_features=[3]), "xds_servers[0].server_features[0]: expected a string, got 3"),
    (node([]), "node: expected a JSON object, got []"),
    (node({"id": 7}), "node.id: expected a string, got 7"),
    (node({"cluster": True}), "node.cluster: expected a string, got true"),
    (node({"metadata": "x"}), 'node.metadata: expected a JSON object, got "x"'),
    (node({"locality": {"zone": 1}}), "node.locality.zone: expected a string, got 1"),
    (node({"locality": {"region": []}}), "node.locality.region: expected a string, got []"),
    (node({"locality": {"sub_zone": {}}}), "node.locality.sub_zone: expected a string, got {}"),
    (node({"locality": "z"}), 'node.locality: expected a JSON object, got "z"'),
    (
        {**server(), "certificate_providers": []},
        "certificate_providers: expected a JSON object, got []",
    ),
    (
        {**server(), "certificate_providers": {"default": "file_watcher"}},
        'certificate_providers.default: expected a JSON object, got "file_watcher"',
    ),
    (
        {**server(), "certificate_providers": {"default": {"config": {}}}},
        "certificate_providers.default.plugin_name: missing",
    ),
    (
        {**server(), "certificate_providers": {"default": {"plugin_name": "file_watcher"}}},
        "certificate_providers.default.config: missing",
    ),
    (
        watcher({}),
        "certificate_providers.default.config: expected certificate_file and "
        "private_key_file, ca_certificate_file, or both",
    ),
    (
        watcher({"private_key_file": "/k.pem", "ca_certificate_file": "/ca.pem"}),
        "certificate_providers.default.config: certificate_file and private_key_file "
        "must be set together",
    ),
    (
        watcher({"certificate_file": 1, "private_key_file": "/k.pem"}),
        "certificate_providers.default.config.certificate_file: expected a non-empty string, got 1",
    ),
    (
        watcher({"ca_certificate_file": "/ca.pem", "refresh_interval": "10m"}),
        "certificate_providers.default.config.refresh_interval: "
        'expected a duration such as "60s", got "10m"',
    ),
    (
        watcher({"ca_certificate_file": "/ca.pem", "refresh_interval": "0s"}),
        "certificate_providers.default.config.refresh_interval: "
        'expected a positive duration, got "0s"',
    ),
    (
        watcher({"ca_certificate_file": "/ca.pem", "refresh_interval": "-5s"}),
        "certificate_providers.default.config.refresh_interval: "
        'expected a positive duration, got "-5s"',
    ),
    (
        {
            **server(),
            "certificate_providers": {"spiffe.v1": {"plugin_name": "file_watcher", "config": 1}},
        },
        'certificate_providers["spiffe.v1"].config: expected a JSON object, got 1',
    ),
    ([], "expected a JSON object, got []"),
]


@pytest.mark.parametrize(("document", "message"), BAD)
def test_every_bad_field_is_named(document: Any, message: str) -> None:
    with pytest.raises(meshlib.ConfigError) as caught:
        parse(document)
    assert str(caught.value) == f"xds-bootstrap.json: {message}"


def test_long_values_are_shortened_in_errors() -> None:
    with pytest.raises(meshlib.ConfigError, match=r"server_uri: .*got \[0, 1, .*\.\.\.$"):
        parse(server(server_uri=list(range(100))))


def test_refresh_interval_with_nanoseconds() -> None:
    found = parse(watcher({"ca_certificate_file": "/ca", "refresh_interval": "0.000000001s"}))
    assert found.certificate_providers["default"].refresh_interval == pytest.approx(1e-9)


def test_invalid_json_and_text_name_the_file() -> None:
    with pytest.raises(meshlib.ConfigError, match=r"^b\.json: invalid JSON: .* at line 2 column"):
        parse_bootstrap('{"xds_servers":\n ]', "b.json")
    with pytest.raises(meshlib.ConfigError, match=r"^b\.json: not UTF-8 text"):
        parse_bootstrap(b"\xff\xfe{}", "b.json")


# --- where the bootstrap is found ---------------------------------------------------


def write(tmp_path: Path, name: str, uri: str) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(server(server_uri=uri)))
    return path


def test_lookup_order(tmp_path: Path) -> None:
    explicit = write(tmp_path, "explicit.json", "explicit:1")
    mine = write(tmp_path, "mine.json", "meshlib:1")
    grpcs = write(tmp_path, "grpc.json", "grpc:1")
    inline = json.dumps(server(server_uri="inline:1"))
    env = {
        "MESHLIB_XDS_BOOTSTRAP": str(mine),
        "GRPC_XDS_BOOTSTRAP": str(grpcs),
        "GRPC_XDS_BOOTSTRAP_CONFIG": inline,
    }

    def uri(path: Path | None, environ: dict[str, str]) -> str:
        return load_bootstrap(path, environ=environ).xds_server.server_uri

    assert uri(explicit, env) == "explicit:1"
    assert uri(None, env) == "meshlib:1"
    assert uri(None, {**env, "MESHLIB_XDS_BOOTSTRAP": ""}) == "grpc:1"
    del env["MESHLIB_XDS_BOOTSTRAP"]
    assert uri(None, env) == "grpc:1"
    del env["GRPC_XDS_BOOTSTRAP"]
    assert uri(None, env) == "inline:1"
    assert load_bootstrap(None, environ=env).source == "$GRPC_XDS_BOOTSTRAP_CONFIG"
    assert load_bootstrap(str(explicit), environ={}).source == str(explicit)


def test_os_environ_is_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRPC_XDS_BOOTSTRAP", raising=False)
    monkeypatch.delenv("GRPC_XDS_BOOTSTRAP_CONFIG", raising=False)
    monkeypatch.setenv("MESHLIB_XDS_BOOTSTRAP", str(write(tmp_path, "b.json", "env:1")))
    assert load_bootstrap().xds_server.server_uri == "env:1"


def test_no_bootstrap_says_how_to_give_one() -> None:
    with pytest.raises(meshlib.ConfigError, match=r"MESHLIB_XDS_BOOTSTRAP.*GRPC_XDS_BOOTSTRAP"):
        load_bootstrap(environ={"GRPC_XDS_BOOTSTRAP": ""})


def test_unreadable_file_names_it_and_where_it_came_from(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(meshlib.ConfigError, match=r"nope\.json: cannot read: No such file"):
        load_bootstrap(missing, environ={})
    with pytest.raises(
        meshlib.ConfigError, match=r"nope\.json \(from \$GRPC_XDS_BOOTSTRAP\): cannot read"
    ):
        load_bootstrap(environ={"GRPC_XDS_BOOTSTRAP": str(missing)})


def test_field_errors_name_the_file_it_was_read_from(tmp_path: Path) -> None:
    path = tmp_path / "xds-bootstrap.json"
    path.write_text(json.dumps({"xds_servers": [{"channel_creds": [{"type": "insecure"}]}]}))
    with pytest.raises(meshlib.ConfigError) as caught:
        load_bootstrap(environ={"MESHLIB_XDS_BOOTSTRAP": str(path)})
    assert str(caught.value) == f"{path}: xds_servers[0].server_uri: missing"


# --- the base install stays small -----------------------------------------------------


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )


def test_import_meshlib_loads_neither_grpc_nor_protobuf() -> None:
    code = (
        "import sys, meshlib, meshlib.testing, meshlib.asgi, meshlib.wsgi\n"
        "import meshlib._xds, meshlib._xds.bootstrap\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('grpc', 'google', 'envoy', 'xds', 'udpa', 'validate'))\n"
        "print(heavy)\n"
    )
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
