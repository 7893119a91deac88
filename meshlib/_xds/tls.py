"""A Cluster's UpstreamTlsContext to a meshlib `TLS`, with the bootstrap's certificates.

As proxyless gRPC does (gRFC A29), the certificate, key and CA come from the
bootstrap's ``certificate_providers`` (plugin ``file_watcher``), named in the
CommonTlsContext by ``tls_certificate_provider_instance`` and
``validation_context.ca_certificate_provider_instance`` (or the deprecated
``tls_certificate_certificate_provider_instance`` and
``validation_context_certificate_provider_instance`` that istiod also sends;
the current field wins when both are set). The server must carry one of
``match_subject_alt_names`` (exact or prefix); ``sni`` is the name sent
(and, without names to match, the one checked).
The result is ``TLS(cert, key, ca, reload=True, subject_alt_names=...)``
following the files every ``refresh_interval``, the cluster views' ``tls``.

What meshlib cannot honour refuses the Cluster: certificates inline or over
SDS, a context without a client certificate or without a CA (meshlib never
connects unverified), matchers other than exact and prefix, TLS parameters
other than the minimum version 1.2 or 1.3, and every field it does not read.
"""

from __future__ import annotations

import ssl
import threading
from collections import OrderedDict
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from .._errors import ConfigError
from .._tls import TLS
from .ads import MISSING_EXTRA
from .bootstrap import Bootstrap, FileWatcher
from .fields import Refused, only

try:
    from envoy.extensions.transport_sockets.raw_buffer.v3 import raw_buffer_pb2
    from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
except Exception as exc:  # pragma: no cover - ads.py refuses first
    raise ConfigError(f"{MISSING_EXTRA} ({type(exc).__name__}: {exc})") from exc

__all__ = ["Certificates", "upstream_tls"]

#: `TLS` values remembered (one per identity: in Istio, per service called); an older
#: one forgotten is only made again, equal, if a Cluster names it again.
MADE_CAPACITY = 4096

_UPSTREAM = "type.googleapis.com/" + tls_pb2.UpstreamTlsContext.DESCRIPTOR.full_name
_RAW_BUFFER = "type.googleapis.com/" + raw_buffer_pb2.RawBuffer.DESCRIPTOR.full_name
_PROTOCOL = common_pb2.TlsParameters.TlsProtocol
_ACCEPT_UNTRUSTED = common_pb2.CertificateValidationContext.ACCEPT_UNTRUSTED
_SOCKET = "transport_socket.typed_config"
_COMMON = f"{_SOCKET}.common_tls_context"

_UPSTREAM_FIELDS = ("common_tls_context", "sni", "max_session_keys")
_COMMON_FIELDS = (
    "tls_params",
    "tls_certificate_provider_instance",
    "tls_certificate_certificate_provider_instance",
    "validation_context",
    "combined_validation_context",
    "validation_context_certificate_provider_instance",
    "alpn_protocols",  # httpx offers HTTP/1.1; the server picks among what is offered
)
_VALIDATION_FIELDS = (
    "ca_certificate_provider_instance",
    "match_subject_alt_names",
    "trust_chain_verification",  # VERIFY_TRUST_CHAIN only, below
)


class Certificates:
    """The bootstrap's certificate providers, and the `TLS` values made from them.

    One `TLS` per combination of files, names and server name, made once: the
    same Cluster sent again (or another with the same identity) gets the same
    value, so its connections and their pool are kept.
    """

    def __init__(
        self,
        providers: Mapping[str, FileWatcher],
        unsupported: Mapping[str, str] = MappingProxyType({}),
    ) -> None:
        self.providers = providers
        self.unsupported = unsupported
        self._made: OrderedDict[tuple[Any, ...], TLS] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def of(cls, bootstrap: Bootstrap) -> Certificates:
        """Return the certificate providers of `bootstrap`."""
        return cls(bootstrap.certificate_providers, bootstrap.unsupported_certificate_providers)

    def provider(self, instance: Any, where: str, path: str) -> FileWatcher:
        """Return the ``file_watcher`` provider a CertificateProviderInstance names, or refuse."""
        name = instance.instance_name
        found = self.providers.get(name)
        if found is not None:
            return found
        plugin = self.unsupported.get(name)
        if plugin is not None:
            reason = f"the bootstrap's provider {name!r} is of plugin {plugin!r}; only file_watcher"
            raise Refused(where, f"{path}.instance_name", name, reason)
        raise Refused(
            where,
            f"{path}.instance_name",
            name,
            "no such certificate provider in the bootstrap's certificate_providers",
        )

    def tls(
        self,
        identity: FileWatcher,
        roots: FileWatcher,
        names: tuple[tuple[str, ...], tuple[str, ...]],
        server_name: str | None,
        minimum: ssl.TLSVersion,
    ) -> TLS:
        """Return the `TLS` of these providers' files, made once per combination.

        Raises:
            ConfigError: a file is missing or does not load (TLS's own error).
        """
        key = (identity, roots, names, server_name, minimum)
        with self._lock:
            found = self._made.get(key)
            if found is not None:
                self._made.move_to_end(key)
            else:
                assert identity.certificate_file is not None
                assert identity.private_key_file is not None
                found = self._made[key] = TLS(
                    identity.certificate_file,
                    identity.private_key_file,
                    roots.ca_certificate_file,
                    reload=True,
                    reload_interval=identity.refresh_interval,
                    minimum_version=minimum,
                    subject_alt_names=names[0],
                    subject_alt_name_prefixes=names[1],
                    server_name=server_name,
                )
                if len(self._made) > MADE_CAPACITY:
                    self._made.popitem(last=False)
            return found


def upstream_tls(cluster: Any, where: str, certificates: Certificates) -> TLS | None:
    """Return the `TLS` a Cluster's transport_socket asks for; None: plaintext.

    Raises:
        Refused: a transport socket other than TLS and raw_buffer, or a TLS
            context meshlib cannot honour (see the module docstring).
    """
    if not cluster.HasField("transport_socket"):
        return None
    socket = cluster.transport_socket
    only(socket, where, "transport_socket", ("name", "typed_config"))
    type_url = socket.typed_config.type_url
    if type_url == _RAW_BUFFER or (not type_url and socket.name.endswith("raw_buffer")):
        return None
    if type_url != _UPSTREAM:
        raise Refused(
            where,
            _SOCKET,
            type_url or socket.name,
            "only an UpstreamTlsContext (envoy.transport_sockets.tls) or raw_buffer",
        )
    context = tls_pb2.UpstreamTlsContext()
    socket.typed_config.Unpack(context)
    only(context, where, _SOCKET, _UPSTREAM_FIELDS)
    common = context.common_tls_context
    only(common, where, _COMMON, _COMMON_FIELDS)
    minimum = _minimum_version(common, where)
    identity = _identity(common, where, certificates)
    roots, names = _validation(common, where, certificates)
    try:
        return certificates.tls(identity, roots, names, context.sni or None, minimum)
    except ConfigError as exc:
        raise Refused(
            where, _COMMON, str(exc), "its certificate provider's files do not load"
        ) from exc


def _minimum_version(common: Any, where: str) -> ssl.TLSVersion:
    if not common.HasField("tls_params"):
        return ssl.TLSVersion.TLSv1_2
    params = common.tls_params
    path = f"{_COMMON}.tls_params"
    only(params, where, path, ("tls_minimum_protocol_version", "tls_maximum_protocol_version"))
    if params.tls_maximum_protocol_version not in (_PROTOCOL.TLS_AUTO, _PROTOCOL.TLSv1_3):
        name = _PROTOCOL.Name(params.tls_maximum_protocol_version)
        raise Refused(
            where, f"{path}.tls_maximum_protocol_version", name, "meshlib speaks up to TLS 1.3"
        )
    lowest = params.tls_minimum_protocol_version
    if lowest == _PROTOCOL.TLSv1_3:
        return ssl.TLSVersion.TLSv1_3
    if lowest in (_PROTOCOL.TLS_AUTO, _PROTOCOL.TLSv1_2):
        return ssl.TLSVersion.TLSv1_2
    raise Refused(
        where,
        f"{path}.tls_minimum_protocol_version",
        _PROTOCOL.Name(lowest),
        "meshlib speaks TLS 1.2 or later",
    )


def _identity(common: Any, where: str, certificates: Certificates) -> FileWatcher:
    if common.HasField("tls_certificate_provider_instance"):
        path = f"{_COMMON}.tls_certificate_provider_instance"
        instance = common.tls_certificate_provider_instance
    elif common.HasField("tls_certificate_certificate_provider_instance"):
        path = f"{_COMMON}.tls_certificate_certificate_provider_instance"
        instance = common.tls_certificate_certificate_provider_instance
    else:
        raise Refused(
            where,
            f"{_COMMON}.tls_certificate_provider_instance",
            None,
            "meshlib presents a client certificate: name a certificate provider",
        )
    provider = certificates.provider(instance, where, path)
    if provider.certificate_file is None:
        raise Refused(
            where,
            f"{path}.instance_name",
            instance.instance_name,
            "the provider has no certificate_file and private_key_file",
        )
    return provider


def _validation(
    common: Any, where: str, certificates: Certificates
) -> tuple[FileWatcher, tuple[tuple[str, ...], tuple[str, ...]]]:
    """Return the CA's provider and the names the server must carry (exact, prefixes)."""
    validation: Any = None
    path = f"{_COMMON}.validation_context"
    instance: Any = None
    instance_path = ""
    which = common.WhichOneof("validation_context_type")
    if which == "validation_context":
        validation = common.validation_context
    elif which == "combined_validation_context":
        combined = common.combined_validation_context
        here = f"{_COMMON}.combined_validation_context"
        only(
            combined,
            where,
            here,
            ("default_validation_context", "validation_context_certificate_provider_instance"),
        )
        validation = combined.default_validation_context
        path = f"{here}.default_validation_context"
        if combined.HasField("validation_context_certificate_provider_instance"):
            instance = combined.validation_context_certificate_provider_instance
            instance_path = f"{here}.validation_context_certificate_provider_instance"
    elif which == "validation_context_certificate_provider_instance":
        instance = common.validation_context_certificate_provider_instance
        instance_path = f"{_COMMON}.validation_context_certificate_provider_instance"
    names: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
    if validation is not None:
        only(validation, where, path, _VALIDATION_FIELDS)
        if validation.trust_chain_verification == _ACCEPT_UNTRUSTED:
            raise Refused(
                where,
                f"{path}.trust_chain_verification",
                "ACCEPT_UNTRUSTED",
                "meshlib always verifies the server",
            )
        if validation.HasField("ca_certificate_provider_instance"):  # the current field wins
            instance = validation.ca_certificate_provider_instance
            instance_path = f"{path}.ca_certificate_provider_instance"
        names = _names(validation, where, path)
    if instance is None:
        raise Refused(
            where,
            f"{_COMMON}.validation_context",
            None,
            "meshlib always verifies the server: name a CA certificate provider",
        )
    roots = certificates.provider(instance, where, instance_path)
    if roots.ca_certificate_file is None:
        raise Refused(
            where,
            f"{instance_path}.instance_name",
            instance.instance_name,
            "the provider has no ca_certificate_file",
        )
    return roots, names


def _names(validation: Any, where: str, path: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    exact: list[str] = []
    prefixes: list[str] = []
    for index, matcher in enumerate(validation.match_subject_alt_names):
        here = f"{path}.match_subject_alt_names[{index}]"
        which = matcher.WhichOneof("match_pattern")
        if which not in ("exact", "prefix") or matcher.ignore_case:
            raise Refused(
                where, here, matcher, "only an exact or prefix match, case-sensitive, is supported"
            )
        value = getattr(matcher, which)
        if not value:
            raise Refused(where, f"{here}.{which}", value, "an empty name matches nothing")
        (exact if which == "exact" else prefixes).append(value)
    return tuple(exact), tuple(prefixes)
