"""gRPC's proxyless xDS bootstrap file, parsed into frozen values.

The format is gRPC's (gRFC A27, with ``server_features`` from A30, certificate
providers from A29 and ``tls`` channel credentials from A65): the file Istio's
agent writes for proxyless gRPC. Fields meshlib does not use are ignored, as
gRPC ignores them, so a bootstrap written for gRPC works unchanged. A field
meshlib does use and cannot read is a `ConfigError` naming the file and the
field's path, e.g. ``xds-bootstrap.json: xds_servers[0].server_uri: missing``.

Where the bootstrap comes from (`load_bootstrap`): an explicit path, else
``$MESHLIB_XDS_BOOTSTRAP``, else ``$GRPC_XDS_BOOTSTRAP`` (both name a file), else
``$GRPC_XDS_BOOTSTRAP_CONFIG`` (the JSON itself, as gRPC accepts it). An empty
variable counts as unset.

Pure JSON: importing this module needs neither grpcio nor protobuf.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, NoReturn

from .._errors import ConfigError

__all__ = [
    "DEFAULT_REFRESH_INTERVAL",
    "ENV_BOOTSTRAP",
    "ENV_GRPC_BOOTSTRAP",
    "ENV_GRPC_BOOTSTRAP_CONFIG",
    "Bootstrap",
    "ChannelCreds",
    "FileWatcher",
    "Locality",
    "Node",
    "XdsServer",
    "load_bootstrap",
    "parse_bootstrap",
]

ENV_BOOTSTRAP = "MESHLIB_XDS_BOOTSTRAP"
ENV_GRPC_BOOTSTRAP = "GRPC_XDS_BOOTSTRAP"
ENV_GRPC_BOOTSTRAP_CONFIG = "GRPC_XDS_BOOTSTRAP_CONFIG"

DEFAULT_REFRESH_INTERVAL = 600.0
"""gRPC's default for ``refresh_interval`` (file_watcher and tls credentials): 10 minutes."""

_CHANNEL_CREDS = ("insecure", "tls")
_DURATION = re.compile(r"(-?)(\d+)(?:\.(\d{1,9}))?s")
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True, slots=True)
class ChannelCreds:
    """How meshlib talks to the xDS server: the first supported ``channel_creds`` entry.

    ``insecure`` is plaintext (Istio's agent serves proxyless clients on a local
    unix socket). ``tls`` verifies the server against ``ca_certificate_file``
    (system roots when unset) and presents ``certificate_file`` /
    ``private_key_file`` when both are set (mTLS). The files are read whenever a
    connection to the xDS server is made.
    """

    type: Literal["insecure", "tls"]
    ca_certificate_file: str | None = None
    certificate_file: str | None = None
    private_key_file: str | None = None
    refresh_interval: float = DEFAULT_REFRESH_INTERVAL


@dataclass(frozen=True, slots=True)
class XdsServer:
    """The management server: ``xds_servers[0]`` (gRPC uses only the first, too)."""

    server_uri: str
    channel_creds: ChannelCreds
    server_features: tuple[str, ...] = ()

    @property
    def ignore_resource_deletion(self) -> bool:
        """Whether the server feature ``ignore_resource_deletion`` (gRFC A53) is on."""
        return "ignore_resource_deletion" in self.server_features


@dataclass(frozen=True, slots=True)
class Locality:
    """Where this process runs, as the xDS server's locality-aware routing sees it."""

    region: str = ""
    zone: str = ""
    sub_zone: str = ""


@dataclass(frozen=True, slots=True)
class Node:
    """The identity sent on the first request of every ADS stream.

    ``metadata`` is the JSON object from the file, frozen (objects become
    read-only mappings, arrays tuples); Istio puts its proxy metadata here.
    """

    id: str = ""
    cluster: str = ""
    metadata: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    locality: Locality = Locality()


@dataclass(frozen=True, slots=True)
class FileWatcher:
    """A ``file_watcher`` certificate provider instance (gRFC A29).

    Certificate and key come together or not at all; at least one of the
    certificate and the CA is set. ``refresh_interval`` is in seconds.
    """

    certificate_file: str | None = None
    private_key_file: str | None = None
    ca_certificate_file: str | None = None
    refresh_interval: float = DEFAULT_REFRESH_INTERVAL


@dataclass(frozen=True, slots=True)
class Bootstrap:
    """A parsed bootstrap.

    Attributes:
        source: the file it was read from (or ``$GRPC_XDS_BOOTSTRAP_CONFIG``).
        xds_server: ``xds_servers[0]``.
        node: the node identity (empty fields when the file has no ``node``).
        certificate_providers: ``file_watcher`` instances by instance name.
        unsupported_certificate_providers: other instances, name to plugin name,
            kept so that a resource naming one can be refused with the reason.
    """

    source: str
    xds_server: XdsServer
    node: Node = Node()
    certificate_providers: Mapping[str, FileWatcher] = field(
        default_factory=lambda: MappingProxyType({})
    )
    unsupported_certificate_providers: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({})
    )


def load_bootstrap(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> Bootstrap:
    """Find, read and parse the bootstrap.

    Args:
        path: the bootstrap file; when None, the environment says (see the
            module's docstring for the order).
        environ: the environment to read (default `os.environ`).

    Raises:
        ConfigError: no bootstrap is configured, the file cannot be read, or a
            field is invalid (the message names the file and the field).
    """
    env = os.environ if environ is None else environ
    origin = ""
    if path is None:
        for name in (ENV_BOOTSTRAP, ENV_GRPC_BOOTSTRAP):
            if env.get(name):
                path, origin = env[name], f" (from ${name})"
                break
        else:
            inline = env.get(ENV_GRPC_BOOTSTRAP_CONFIG)
            if inline:
                return parse_bootstrap(inline, f"${ENV_GRPC_BOOTSTRAP_CONFIG}")
            raise ConfigError(
                f"no xDS bootstrap: pass its path, or set ${ENV_BOOTSTRAP} or "
                f"${ENV_GRPC_BOOTSTRAP} to the file (or ${ENV_GRPC_BOOTSTRAP_CONFIG} "
                "to its JSON)"
            )
    where = os.fspath(path)
    try:
        with open(where, "rb") as file:
            data = file.read()
    except OSError as exc:
        raise ConfigError(f"{where}{origin}: cannot read: {exc.strerror or exc}") from exc
    return parse_bootstrap(data, where)


def parse_bootstrap(data: str | bytes, source: str) -> Bootstrap:
    """Parse bootstrap JSON; `source` names it in errors.

    Raises:
        ConfigError: ``"{source}: {field path}: {what is wrong}"``.
    """
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        document = json.loads(text)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not UTF-8 text: {exc.reason}") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{source}: invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    root = _Field(source, "", document)
    root.object()
    watchers, unsupported = _certificate_providers(root)
    return Bootstrap(source, _xds_server(root), _node(root), watchers, unsupported)


class _Field:
    """One value of the document and its path, for errors that name both."""

    __slots__ = ("path", "source", "value")

    def __init__(self, source: str, path: str, value: Any) -> None:
        self.source = source
        self.path = path
        self.value = value

    def fail(self, message: str) -> NoReturn:
        where = f"{self.path}: " if self.path else ""
        raise ConfigError(f"{self.source}: {where}{message}")

    def _got(self) -> str:
        shown = json.dumps(self.value)
        return shown if len(shown) <= 60 else shown[:57] + "..."

    def _member(self, key: str) -> str:
        if not _PLAIN_KEY.fullmatch(key):
            return f"{self.path}[{json.dumps(key)}]"
        return f"{self.path}.{key}" if self.path else key

    def child(self, key: str) -> _Field | None:
        """The member `key` of this object, or None when absent (or JSON null)."""
        value = self.object().get(key)
        return None if value is None else _Field(self.source, self._member(key), value)

    def required(self, key: str) -> _Field:
        found = self.child(key)
        if found is None:
            _Field(self.source, self._member(key), None).fail("missing")
        return found

    def item(self, index: int) -> _Field:
        return _Field(self.source, f"{self.path}[{index}]", self.list()[index])

    def object(self) -> dict[str, Any]:
        if not isinstance(self.value, dict):
            self.fail(f"expected a JSON object, got {self._got()}")
        return self.value

    def list(self, *, nonempty: bool = False) -> list[Any]:
        if not isinstance(self.value, list) or (nonempty and not self.value):
            kind = "a non-empty list" if nonempty else "a list"
            self.fail(f"expected {kind}, got {self._got()}")
        return self.value

    def string(self, *, nonempty: bool = False) -> str:
        if not isinstance(self.value, str) or (nonempty and not self.value):
            kind = "a non-empty string" if nonempty else "a string"
            self.fail(f"expected {kind}, got {self._got()}")
        return self.value

    def duration(self) -> float:
        """A protobuf Duration in its JSON form ("60s", "1.5s"), which must be positive."""
        text = self.string()
        match = _DURATION.fullmatch(text)
        if match is None:
            self.fail(f'expected a duration such as "60s", got {self._got()}')
        sign, whole, fraction = match.groups()
        seconds = int(whole) + int((fraction or "0").ljust(9, "0")) / 1e9
        if sign or seconds <= 0:
            self.fail(f"expected a positive duration, got {self._got()}")
        return seconds


def _optional_string(parent: _Field, key: str, *, nonempty: bool = False) -> str | None:
    found = parent.child(key)
    return None if found is None else found.string(nonempty=nonempty)


def _refresh_interval(parent: _Field) -> float:
    found = parent.child("refresh_interval")
    return DEFAULT_REFRESH_INTERVAL if found is None else found.duration()


def _xds_server(root: _Field) -> XdsServer:
    servers = root.required("xds_servers")
    servers.list(nonempty=True)
    # gRPC uses only the first server; the others are for its fallback (gRFC A71).
    server = servers.item(0)
    server.object()
    uri = server.required("server_uri").string(nonempty=True)
    features: tuple[str, ...] = ()
    found = server.child("server_features")
    if found is not None:
        features = tuple(found.item(index).string() for index in range(len(found.list())))
    return XdsServer(uri, _channel_creds(server.required("channel_creds")), features)


def _channel_creds(creds: _Field) -> ChannelCreds:
    # As gRPC: the first type this client supports wins; the rest are not read.
    seen: list[str] = []
    for index in range(len(creds.list(nonempty=True))):
        entry = creds.item(index)
        entry.object()
        kind = entry.required("type").string(nonempty=True)
        if kind == "insecure":
            return ChannelCreds("insecure")
        if kind == "tls":
            return _tls_creds(entry)
        seen.append(kind)
    supported = ", ".join(_CHANNEL_CREDS)
    creds.fail(f"no supported type ({supported}) among {json.dumps(seen)}")


def _tls_creds(entry: _Field) -> ChannelCreds:
    config = entry.child("config")
    if config is None:
        return ChannelCreds("tls")
    config.object()
    cert, key = _pair(config)
    return ChannelCreds(
        "tls",
        ca_certificate_file=_optional_string(config, "ca_certificate_file", nonempty=True),
        certificate_file=cert,
        private_key_file=key,
        refresh_interval=_refresh_interval(config),
    )


def _pair(config: _Field) -> tuple[str | None, str | None]:
    cert = _optional_string(config, "certificate_file", nonempty=True)
    key = _optional_string(config, "private_key_file", nonempty=True)
    if (cert is None) != (key is None):
        config.fail("certificate_file and private_key_file must be set together")
    return cert, key


def _node(root: _Field) -> Node:
    node = root.child("node")
    if node is None:
        return Node()
    node.object()
    metadata = node.child("metadata")
    locality = node.child("locality")
    return Node(
        id=_optional_string(node, "id") or "",
        cluster=_optional_string(node, "cluster") or "",
        metadata=_freeze(metadata.object()) if metadata is not None else Node().metadata,
        locality=_locality(locality) if locality is not None else Locality(),
    )


def _locality(locality: _Field) -> Locality:
    locality.object()
    return Locality(
        region=_optional_string(locality, "region") or "",
        zone=_optional_string(locality, "zone") or "",
        sub_zone=_optional_string(locality, "sub_zone") or "",
    )


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return MappingProxyType({key: _freeze(item) for key, item in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(item) for item in value)
    return value


def _certificate_providers(
    root: _Field,
) -> tuple[Mapping[str, FileWatcher], Mapping[str, str]]:
    watchers: dict[str, FileWatcher] = {}
    unsupported: dict[str, str] = {}
    providers = root.child("certificate_providers")
    if providers is not None:
        for name in providers.object():
            instance = providers.child(name)
            if instance is None:
                continue  # null: nothing configured under that name
            instance.object()
            plugin = instance.required("plugin_name").string(nonempty=True)
            if plugin != "file_watcher":
                unsupported[name] = plugin
                continue
            watchers[name] = _file_watcher(instance.required("config"))
    return MappingProxyType(watchers), MappingProxyType(unsupported)


def _file_watcher(config: _Field) -> FileWatcher:
    config.object()
    cert, key = _pair(config)
    ca = _optional_string(config, "ca_certificate_file", nonempty=True)
    if cert is None and ca is None:
        config.fail("expected certificate_file and private_key_file, ca_certificate_file, or both")
    return FileWatcher(cert, key, ca, _refresh_interval(config))
