"""The translation of a Cluster's UpstreamTlsContext: certificates from the bootstrap's providers.

Resources are written as Envoy's JSON, as in tests/test_xds_translate.py; the
certificate providers are `file_watcher` instances over real files (tests/spiffe.py).
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("envoy.config.cluster.v3.cluster_pb2", reason="needs meshlib[xds]")

from envoy.config.cluster.v3 import cluster_pb2

# Imported for its descriptor: the JSON below names it in "@type".
from envoy.extensions.transport_sockets.alts.v3 import alts_pb2  # noqa: F401
from google.protobuf import json_format

import meshlib
from meshlib._xds.bootstrap import FileWatcher
from meshlib._xds.clusters import cluster_settings
from meshlib._xds.fields import Refused
from meshlib._xds.routes import XdsRoute
from meshlib._xds.tls import Certificates
from meshlib._xds.translate import compose

from .spiffe import MeshCerts, mesh_certs

UPSTREAM = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
RAW_BUFFER = "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
ORDERS = "spiffe://cluster.local/ns/default/sa/orders"
COMMON = "transport_socket.typed_config.common_tls_context"
REFRESH = 5.0


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> MeshCerts:
    return mesh_certs(str(tmp_path_factory.mktemp("spiffe")))


@pytest.fixture
def providers(certs: MeshCerts) -> Certificates:
    files = certs.client
    return Certificates(
        {
            "default": FileWatcher(files.certificate, files.key, files.ca, REFRESH),
            "roots-only": FileWatcher(ca_certificate_file=files.ca),
        },
        {"spire": "spiffe_workload_api"},
    )


def provider(name: str, certificate: str = "default") -> dict[str, str]:
    return {"instance_name": name, "certificate_name": certificate}


def istio_mutual(sans: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """ISTIO_MUTUAL as istiod's proxyless generator sends it: current and deprecated fields."""
    return {
        "tls_certificate_provider_instance": provider("default"),
        "tls_certificate_certificate_provider_instance": provider("default"),
        "combined_validation_context": {
            "default_validation_context": {
                "match_subject_alt_names": sans if sans is not None else [{"exact": ORDERS}],
                "ca_certificate_provider_instance": provider("default", "ROOTCA"),
            },
            "validation_context_certificate_provider_instance": provider("default", "ROOTCA"),
        },
    }


def cluster(common: dict[str, Any] | None = None, **upstream: Any) -> Any:
    context = {"@type": UPSTREAM, **upstream}
    if common is not None:
        context["common_tls_context"] = common
    data = {
        "name": "outbound|8080|v1|orders.default.svc.cluster.local",
        "type": "EDS",
        "eds_cluster_config": {"eds_config": {"ads": {}}},
        "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": context},
    }
    return json_format.ParseDict(data, cluster_pb2.Cluster())


def refused(build: Any, field: str, value: str) -> Refused:
    with pytest.raises(Refused) as raised:
        build()
    error = raised.value
    assert error.resource == "Cluster outbound|8080|v1|orders.default.svc.cluster.local"
    assert error.field == field
    assert value in str(error)
    return error


def test_istio_mutual_is_the_providers_files_rotating_with_the_names_checked(
    certs: MeshCerts, providers: Certificates
) -> None:
    tls = cluster_settings(cluster(istio_mutual(), sni="outbound_.8080_.v1_.orders"), providers).tls
    files = certs.client
    assert tls == meshlib.TLS(
        files.certificate,
        files.key,
        files.ca,
        reload=True,
        reload_interval=REFRESH,  # the provider's refresh_interval
        subject_alt_names=[ORDERS],
        server_name="outbound_.8080_.v1_.orders",
    )


def test_the_cluster_views_connect_with_its_tls(providers: Certificates) -> None:
    settings = cluster_settings(cluster(istio_mutual()), providers)
    route = XdsRoute(meshlib.Route(to=settings.name), None, 15.0, None)
    endpoints = meshlib.Endpoints(("127.0.0.1:8080",))
    done = compose(
        meshlib.STANDARD,
        "orders:8080",
        None,
        [route],
        {settings.name: settings},
        {settings.name: endpoints},
    )
    [view] = done.clusters.values()
    assert view.tls is settings.tls
    assert done.policy.tls is None  # the destination itself: only its clusters' views


def test_the_deprecated_fields_alone_name_the_same_providers(
    certs: MeshCerts, providers: Certificates
) -> None:
    common = {
        "tls_certificate_certificate_provider_instance": provider("default"),
        "validation_context_certificate_provider_instance": provider("default", "ROOTCA"),
    }
    tls = cluster_settings(cluster(common), providers).tls
    assert tls is not None
    assert (tls.cert, tls.ca, tls.subject_alt_names) == (
        certs.client.certificate,
        certs.client.ca,
        (),
    )


def test_the_current_field_wins_over_the_deprecated_one(providers: Certificates) -> None:
    common = istio_mutual()
    common["tls_certificate_certificate_provider_instance"] = provider("not-in-the-bootstrap")
    validation = common["combined_validation_context"]
    validation["validation_context_certificate_provider_instance"] = provider("spire")
    assert cluster_settings(cluster(common), providers).tls is not None


def test_exact_and_prefix_matchers(providers: Certificates) -> None:
    sans = [{"exact": ORDERS}, {"prefix": "spiffe://cluster.local/ns/canary/"}]
    tls = cluster_settings(cluster(istio_mutual(sans)), providers).tls
    assert tls is not None
    assert tls.subject_alt_names == (ORDERS,)
    assert tls.subject_alt_name_prefixes == ("spiffe://cluster.local/ns/canary/",)


def test_tls_params_may_raise_the_minimum_to_1_3(providers: Certificates) -> None:
    common = {**istio_mutual(), "tls_params": {"tls_minimum_protocol_version": "TLSv1_3"}}
    tls = cluster_settings(cluster(common), providers).tls
    assert tls is not None
    assert tls.minimum_version == ssl.TLSVersion.TLSv1_3


def test_one_tls_value_per_identity_so_its_connections_are_kept(providers: Certificates) -> None:
    first = cluster_settings(cluster(istio_mutual()), providers).tls
    again = cluster_settings(cluster(istio_mutual()), providers).tls
    assert first is again


def test_plaintext_sockets_have_no_tls(providers: Certificates) -> None:
    raw = json_format.ParseDict(
        {
            "name": "plain",
            "type": "EDS",
            "transport_socket": {
                "name": "envoy.transport_sockets.raw_buffer",
                "typed_config": {"@type": RAW_BUFFER},
            },
        },
        cluster_pb2.Cluster(),
    )
    assert cluster_settings(raw, providers).tls is None


VALIDATION = f"{COMMON}.combined_validation_context.default_validation_context"


@pytest.mark.parametrize(
    ("change", "field", "value"),
    [
        (
            lambda c: c.update(tls_certificate_provider_instance=provider("nope")),
            f"{COMMON}.tls_certificate_provider_instance.instance_name",
            "no such certificate provider",
        ),
        (
            lambda c: c.update(tls_certificate_provider_instance=provider("spire")),
            f"{COMMON}.tls_certificate_provider_instance.instance_name",
            "'spiffe_workload_api'; only file_watcher",
        ),
        (
            lambda c: c.update(tls_certificate_provider_instance=provider("roots-only")),
            f"{COMMON}.tls_certificate_provider_instance.instance_name",
            "no certificate_file",
        ),
        (
            lambda c: (
                c.pop("tls_certificate_provider_instance"),
                c.pop("tls_certificate_certificate_provider_instance"),
            ),
            f"{COMMON}.tls_certificate_provider_instance",
            "meshlib presents a client certificate",
        ),
        (
            lambda c: c.pop("combined_validation_context"),
            f"{COMMON}.validation_context",
            "meshlib always verifies the server",
        ),
        (
            lambda c: c["combined_validation_context"]["default_validation_context"].update(
                trust_chain_verification="ACCEPT_UNTRUSTED"
            ),
            f"{VALIDATION}.trust_chain_verification",
            "meshlib always verifies the server",
        ),
        (
            lambda c: c["combined_validation_context"]["default_validation_context"].update(
                match_subject_alt_names=[{"exact": ORDERS}, {"safe_regex": {"regex": ".*"}}]
            ),
            f"{VALIDATION}.match_subject_alt_names[1]",
            "only an exact or prefix match",
        ),
        (
            lambda c: c["combined_validation_context"]["default_validation_context"].update(
                match_subject_alt_names=[{"suffix": "/sa/orders"}]
            ),
            f"{VALIDATION}.match_subject_alt_names[0]",
            "only an exact or prefix match",
        ),
        (
            lambda c: c["combined_validation_context"]["default_validation_context"].update(
                match_subject_alt_names=[{"exact": ORDERS, "ignore_case": True}]
            ),
            f"{VALIDATION}.match_subject_alt_names[0]",
            "case-sensitive",
        ),
        (
            lambda c: c["combined_validation_context"]["default_validation_context"].update(
                match_typed_subject_alt_names=[{"san_type": "URI", "matcher": {"exact": ORDERS}}]
            ),
            f"{VALIDATION}.match_typed_subject_alt_names",
            "not supported by meshlib",
        ),
        (
            lambda c: c["combined_validation_context"]["default_validation_context"].update(
                trusted_ca={"filename": "/etc/ca.pem"}
            ),
            f"{VALIDATION}.trusted_ca",
            "/etc/ca.pem",
        ),
        (
            lambda c: c.update(tls_certificates=[{"certificate_chain": {"filename": "/c.pem"}}]),
            f"{COMMON}.tls_certificates",
            "/c.pem",
        ),
        (
            lambda c: c.update(tls_certificate_sds_secret_configs=[{"name": "default"}]),
            f"{COMMON}.tls_certificate_sds_secret_configs",
            "default",
        ),
        (
            lambda c: c.update(tls_params={"cipher_suites": ["ECDHE-RSA-AES128-GCM-SHA256"]}),
            f"{COMMON}.tls_params.cipher_suites",
            "ECDHE",
        ),
        (
            lambda c: c.update(tls_params={"tls_minimum_protocol_version": "TLSv1_1"}),
            f"{COMMON}.tls_params.tls_minimum_protocol_version",
            "TLS 1.2 or later",
        ),
        (
            lambda c: c.update(tls_params={"tls_maximum_protocol_version": "TLSv1_2"}),
            f"{COMMON}.tls_params.tls_maximum_protocol_version",
            "up to TLS 1.3",
        ),
        (
            lambda c: c.update(key_log={"path": "/tmp/keys"}),
            f"{COMMON}.key_log",
            "/tmp/keys",
        ),
    ],
)
def test_what_meshlib_cannot_honour_is_refused_naming_the_field(
    providers: Certificates, change: Any, field: str, value: str
) -> None:
    common = istio_mutual()
    change(common)
    refused(lambda: cluster_settings(cluster(common), providers), field, value)


def test_upstream_settings_meshlib_lacks_are_refused(providers: Certificates) -> None:
    refused(
        lambda: cluster_settings(cluster(istio_mutual(), allow_renegotiation=True), providers),
        "transport_socket.typed_config.allow_renegotiation",
        "True",
    )


def test_another_transport_socket_is_refused(providers: Certificates) -> None:
    alts = json_format.ParseDict(
        {
            "name": "outbound|8080|v1|orders.default.svc.cluster.local",
            "type": "EDS",
            "transport_socket": {
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.alts.v3.Alts"
                },
            },
        },
        cluster_pb2.Cluster(),
    )
    refused(
        lambda: cluster_settings(alts, providers),
        "transport_socket.typed_config",
        "alts.v3.Alts",
    )


def test_without_the_bootstraps_providers_a_tls_cluster_is_refused() -> None:
    refused(
        lambda: cluster_settings(cluster(istio_mutual())),
        f"{COMMON}.tls_certificate_provider_instance.instance_name",
        "no such certificate provider",
    )


def test_provider_files_that_do_not_load_refuse_the_cluster(tmp_path: Path) -> None:
    missing = str(tmp_path / "gone.pem")
    broken = Certificates({"default": FileWatcher(missing, missing, missing)})
    error = refused(lambda: cluster_settings(cluster(istio_mutual()), broken), COMMON, missing)
    assert "TLS.ca: file not found" in str(error)
