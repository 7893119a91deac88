"""TLS: the client certificate a service presents (mTLS), the trust it verifies with, rotation.

`TLS` is a frozen value, validated when built: every file is read, parsed and
loaded at construction, and each kind of bad material is its own `ConfigError`
naming the file (never the password). `TLS.ssl_context` hands out one
``ssl.SSLContext`` per `TLS`, so every client and pool built from it shares it.

Rotation (``reload=True``) needs no thread. The context is a subclass that
looks at the files when it creates the TLS state of a *new* connection, at
most once per ``reload_interval``: requests on pooled connections pay nothing.
A changed pair is read once, loaded into a scratch context from exactly the
bytes read and, only if that works and matches, into the live context. The
swap and the creation of a connection's TLS state share a lock, so a new
connection never sees a certificate without its key (``load_cert_chain``
replaces the certificate first, then the key). The lock is never held across
network I/O: creating the TLS state does none; the handshake comes after.

Over 400 lines because the value, its validation and its rotating context
are one contract: each check at construction is what keeps a rotation from
ever loading material the context would then refuse.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import ssl
import stat
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import KW_ONLY, dataclass, field
from datetime import timedelta
from typing import Any

import certifi

from ._checks import DURATION, SECRET, duration
from ._compat import ConnectionHookContext
from ._errors import ConfigError
from ._runtime import runtime

__all__ = ["TLS"]

_logger = logging.getLogger("meshlib")

_CERT_BEGIN = b"-----BEGIN CERTIFICATE-----"
_CERT_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)
_KEY_BEGIN = re.compile(rb"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----")
_KEY_END = re.compile(rb"-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----")
# PKCS#8 encrypted keys, and the traditional OpenSSL format's encryption header.
_ENCRYPTED = re.compile(rb"-----BEGIN ENCRYPTED PRIVATE KEY-----|Proc-Type:[ \t]*4,[ \t]*ENCRYPTED")
# OpenSSL's reasons when the key is not the certificate's (same key type, or another type).
_MISMATCH_REASONS = frozenset({"KEY_VALUES_MISMATCH", "NO_CERTIFICATE_ASSIGNED"})
# What OpenSSL's password buffer holds (PEM_BUFSIZE); Python refuses longer passwords.
_MAX_PASSWORD_BYTES = 1024
# Certificates, keys and bundles are kilobytes; this only stops a wrong path (a log,
# a disk image) from being read into memory on every check.
_MAX_FILE_BYTES = 16 * 1024 * 1024
_ALLOWED_VERSIONS = (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3)


class _Bad(Exception):
    """Bad TLS material: which field, which file, and the message for the user."""

    def __init__(self, name: str, path: str, text: str) -> None:
        super().__init__(f"TLS.{name}: {text}")
        self.name = name
        self.path = path
        self.text = text

    def error(self) -> ConfigError:
        return ConfigError(self.text, field=f"TLS.{self.name}")


class _NoPassword(Exception):
    """Raised by the password callback when no password was given.

    OpenSSL's default callback would prompt on the terminal; a service must fail instead.
    """


def _password_callback(password: str | bytes | None) -> Callable[[], str | bytes]:
    if password is None:

        def refuse() -> str:
            raise _NoPassword

        return refuse
    return lambda: password


def _path(name: str, value: object) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value:
        raise ConfigError(
            f"expected a path (str or os.PathLike[str]), got {value!r}",
            field=f"TLS.{name}",
            value=value,
            expected="a path (str or os.PathLike[str])",
        )
    # Absolute now, so that a later chdir cannot make a reload read other files.
    return os.path.abspath(value)


def _read(name: str, path: str) -> bytes:
    """Return the bytes of the regular file at `path`, or raise _Bad saying why not."""
    try:
        info = os.stat(path)
        # Checked before open(): opening a FIFO would block, and /dev/zero never ends.
        if not stat.S_ISREG(info.st_mode):
            raise _Bad(name, path, f"'{path}' is not a regular file")
        if info.st_size > _MAX_FILE_BYTES:
            raise _Bad(name, path, f"'{path}' is too large for a PEM file ({info.st_size} bytes)")
        with open(path, "rb") as file:
            data = file.read(_MAX_FILE_BYTES + 1)
        if len(data) > _MAX_FILE_BYTES:  # grew after the stat above
            raise _Bad(name, path, f"'{path}' is too large for a PEM file")
        return data
    except FileNotFoundError:
        raise _Bad(name, path, f"file not found: '{path}'") from None
    except PermissionError:
        raise _Bad(name, path, f"cannot read '{path}': permission denied") from None
    except OSError as exc:
        raise _Bad(name, path, f"cannot read '{path}': {exc.strerror or exc}") from None


def _certificate_blocks(name: str, path: str, data: bytes, what: str) -> str:
    """Return the complete PEM certificate blocks in `data`, or raise _Bad."""
    blocks = _CERT_BLOCK.findall(data)
    if not blocks:
        if _CERT_BEGIN in data:
            raise _Bad(name, path, f"'{path}' holds an incomplete PEM {what} (half-written?)")
        raise _Bad(name, path, f"'{path}' is not a PEM {what} (no {_CERT_BEGIN.decode()} block)")
    try:
        return "\n".join(block.decode("ascii") for block in blocks)
    except UnicodeDecodeError:
        raise _Bad(name, path, f"cannot parse the {what} in '{path}' (damaged PEM)") from None


def _check_certificate(path: str, data: bytes) -> None:
    pem = _certificate_blocks("cert", path, data, "certificate")
    try:
        # Parses every certificate block, independently of the key, so that a damaged
        # certificate is reported as such and not as a key problem.
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=pem)
    except ssl.SSLError:
        raise _Bad(
            "cert", path, f"cannot parse the certificate in '{path}' (damaged PEM)"
        ) from None


def _check_key(path: str, data: bytes, password: str | bytes | None) -> bool:
    """Check what can be checked without OpenSSL; return whether the key is encrypted."""
    if not _KEY_BEGIN.search(data):
        raise _Bad("key", path, f"'{path}' is not a PEM private key (no PRIVATE KEY block)")
    if not _KEY_END.search(data):
        raise _Bad("key", path, f"'{path}' holds an incomplete PEM private key (half-written?)")
    encrypted = _ENCRYPTED.search(data) is not None
    if encrypted and password is None:
        raise _no_password(path)
    return encrypted


def _no_password(path: str) -> _Bad:
    return _Bad("key", path, f"'{path}' is encrypted and no password was given (pass password=)")


def _load_ca(context: ssl.SSLContext, path: str, data: bytes) -> None:
    pem = _certificate_blocks("ca", path, data, "CA bundle")
    try:
        context.load_verify_locations(cadata=pem)
    except ssl.SSLError as exc:
        reason = exc.reason or "damaged PEM"
        raise _Bad("ca", path, f"cannot load the CA bundle '{path}' ({reason})") from None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _memory_file(data: bytes) -> int | None:
    """Return a Linux memfd holding `data` and reachable by path, or None."""
    if sys.platform != "linux":  # pragma: no cover - exercised on Linux only
        return None
    try:
        fd = os.memfd_create("meshlib-tls", os.MFD_CLOEXEC)
    except OSError:
        return None
    try:
        _write_all(fd, data)
        if os.path.exists(f"/proc/self/fd/{fd}"):
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


@contextlib.contextmanager
def _staged(data: bytes) -> Iterator[str]:
    """Yield a path holding exactly `data`, private to this process, gone afterwards.

    ``load_cert_chain`` reads files only. Loading the scratch and the live context
    from one private copy of the bytes that were checked means a file replaced in
    between cannot make the live load differ from the scratch one. On Linux the
    copy lives in memory (memfd); elsewhere it is a 0600 temporary file.
    """
    fd = _memory_file(data)
    if fd is not None:
        try:
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    fd, path = tempfile.mkstemp(prefix="meshlib-tls-", suffix=".pem")
    try:
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


@dataclass(frozen=True, slots=True)
class _Source:
    """Where a reloading context reads its pair, and how."""

    cert: str
    key: str
    password: str | bytes | None
    interval: float


def _read_pair(source: _Source) -> tuple[bytes, bytes]:
    cert = _read("cert", source.cert)
    key = cert if source.key == source.cert else _read("key", source.key)
    return cert, key


@contextlib.contextmanager
def _checked_pair(
    source: _Source, cert: bytes, key: bytes
) -> Iterator[Callable[[ssl.SSLContext], None]]:
    """Check a pair and yield a function that loads it into a context, or raise _Bad."""
    _check_certificate(source.cert, cert)
    encrypted = _check_key(source.key, key, source.password)
    with _staged(cert) as cert_file, _staged(key) as key_file:

        def load(context: ssl.SSLContext) -> None:
            try:
                # Always a callback, never None: with None, OpenSSL would prompt for
                # the password of an encrypted key on the terminal.
                context.load_cert_chain(
                    cert_file, key_file, password=_password_callback(source.password)
                )
            except _NoPassword:
                raise _no_password(source.key) from None
            except ssl.SSLError as exc:
                if exc.reason in _MISMATCH_REASONS:
                    text = f"'{source.key}' does not match the certificate in '{source.cert}'"
                    raise _Bad("key", source.key, text) from None
                if encrypted:
                    text = f"wrong password for the encrypted key '{source.key}'"
                    raise _Bad("password", source.key, text) from None
                text = f"cannot parse the private key in '{source.key}' (damaged PEM)"
                raise _Bad("key", source.key, text) from None

        yield load


def _digest(*parts: bytes) -> bytes:
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(hashlib.sha256(part).digest())
    return hasher.digest()


class _ReloadingContext(ConnectionHookContext):
    """An SSLContext whose certificate pair follows its files (see the module docstring)."""

    _meshlib_source: _Source
    _meshlib_swap: threading.Lock
    _meshlib_checking: threading.Lock
    _meshlib_next_check: float
    _meshlib_loaded: bytes
    _meshlib_failed: bytes | None

    def _meshlib_start(self, source: _Source, loaded: bytes) -> None:
        self._meshlib_source = source
        self._meshlib_swap = threading.Lock()
        self._meshlib_checking = threading.Lock()
        self._meshlib_next_check = runtime.clock.now() + source.interval
        self._meshlib_loaded = loaded
        self._meshlib_failed = None

    def _meshlib_new_connection(self) -> threading.Lock:
        # Every new connection: reload when due, then hold the pair still while it is made.
        self._meshlib_maybe_reload()
        return self._meshlib_swap

    def _meshlib_maybe_reload(self) -> None:
        if runtime.clock.now() < self._meshlib_next_check:
            return
        # Another connection is already looking: this one goes with the current pair.
        if not self._meshlib_checking.acquire(blocking=False):
            return
        try:
            if runtime.clock.now() < self._meshlib_next_check:
                return
            try:
                self._meshlib_reload_if_changed()
            except Exception as exc:
                # Whatever went wrong, the connection goes ahead with the current pair.
                self._meshlib_warn(f"TLS reload failed ({exc!r})", self._meshlib_source.cert)
            self._meshlib_next_check = runtime.clock.now() + self._meshlib_source.interval
        finally:
            self._meshlib_checking.release()

    def _meshlib_reload_if_changed(self) -> None:
        source = self._meshlib_source
        try:
            cert, key = _read_pair(source)
        except _Bad as bad:
            self._meshlib_refuse(_digest(str(bad).encode()), bad)
            return
        digest = _digest(cert, key)
        if digest == self._meshlib_loaded:
            self._meshlib_failed = None  # back to the pair in use: report a bad one afresh
            return
        if digest == self._meshlib_failed:
            return  # already reported: wait for the next change
        scratch = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        try:
            with _checked_pair(source, cert, key) as load:
                # A failed load can leave a certificate without its key: only a pair
                # that loaded and matched in the scratch context reaches the live one.
                load(scratch)
                with self._meshlib_swap:
                    load(self)
        except _Bad as bad:
            self._meshlib_refuse(digest, bad)
            return
        self._meshlib_loaded = digest
        self._meshlib_failed = None
        _logger.info(
            "TLS certificate reloaded from '%s'; new connections present it",
            source.cert,
            extra={"meshlib_event": "tls_reloaded", "meshlib_file": source.cert},
        )

    def _meshlib_refuse(self, digest: bytes, bad: _Bad) -> None:
        if digest in (self._meshlib_loaded, self._meshlib_failed):
            return
        self._meshlib_failed = digest
        self._meshlib_warn(f"TLS reload refused, keeping the current certificate: {bad}", bad.path)

    @staticmethod
    def _meshlib_warn(message: str, path: str) -> None:
        _logger.warning(
            "%s", message, extra={"meshlib_event": "tls_reload_failed", "meshlib_file": path}
        )


# The kinds of subject-alt-name a name in TLS.subject_alt_names is compared with, as
# getpeercert() spells them: a SPIFFE id is a URI; host names and addresses also count.
_SAN_KINDS = frozenset({"URI", "DNS", "IP Address"})


def _peer_names(certificate: Any) -> list[str]:
    names = certificate.get("subjectAltName", ()) if certificate else ()
    return [value for kind, value in names if kind in _SAN_KINDS]


@dataclass(frozen=True, slots=True)
class _Expected:
    """The names a server's certificate must carry one of: exactly, or by prefix."""

    names: frozenset[str]
    prefixes: tuple[str, ...]

    def accepts(self, presented: list[str]) -> bool:
        return not self.names.isdisjoint(presented) or any(
            name.startswith(self.prefixes) for name in presented
        )

    def __str__(self) -> str:
        return ", ".join([*sorted(self.names), *(f"{p}*" for p in self.prefixes)])


def _check_peer(connection: ssl.SSLSocket | ssl.SSLObject) -> None:
    """Refuse a server whose certificate carries none of the names its context expects.

    Raises:
        ssl.SSLCertVerificationError: as a failed chain or host name check would, so
            httpx reports a ConnectError that is never retried.
    """
    expected: _Expected | None = getattr(connection.context, "_meshlib_expected", None)
    if expected is None:
        return
    presented = _peer_names(connection.getpeercert())
    if not expected.accepts(presented):
        error = ssl.SSLCertVerificationError(
            f"certificate verify failed: the server's subject alternative names "
            f"{presented} include none of [{expected}]"
        )
        error.verify_message = "subject alternative name mismatch"
        raise error


class _NameCheckingSocket(ssl.SSLSocket):
    # Sync httpcore: wrap_socket runs the handshake here, before any request is sent.
    def do_handshake(self, block: bool = False) -> None:
        super().do_handshake(block)
        _check_peer(self)


class _NameCheckingObject(ssl.SSLObject):
    # anyio (async httpcore) drives the handshake here until it completes.
    def do_handshake(self) -> None:
        super().do_handshake()
        _check_peer(self)


def _new_context(
    cls: type[ssl.SSLContext],
    minimum_version: ssl.TLSVersion,
    expected: _Expected | None = None,
) -> ssl.SSLContext:
    # What ssl.create_default_context() does for a client, on a class of our choosing.
    context = cls(ssl.PROTOCOL_TLS_CLIENT)
    context.verify_mode = ssl.CERT_REQUIRED
    if expected is not None:
        # The chain is still verified; the check of the name asked for is replaced by
        # the check of these names once the handshake is done (a SPIFFE certificate
        # has no host name in it to match).
        context.check_hostname = False
        context._meshlib_expected = expected  # type: ignore[attr-defined]
        context.sslsocket_class = _NameCheckingSocket
        context.sslobject_class = _NameCheckingObject
    else:
        context.check_hostname = True
    context.minimum_version = minimum_version
    keylog = os.environ.get("SSLKEYLOGFILE")
    if keylog and not sys.flags.ignore_environment:  # pragma: no cover - a debugging aid
        context.keylog_filename = keylog
    return context


@dataclass(frozen=True, slots=True)
class TLS:
    """The client certificate to present (mTLS) and the CAs to verify servers with.

    Every file is read and checked when the value is built; `ssl_context` returns
    the ``ssl.SSLContext`` to give httpx (``meshlib.Client(policy, tls=tls)`` does
    it for you). Verification is always on: certificate chain, host name (or the
    names in `subject_alt_names`), TLS 1.2 or later.

    Args:
        cert: the PEM file with the client certificate (and any intermediates).
        key: the PEM file with its private key; may be the same file as `cert`.
        ca: the PEM bundle of CAs to trust for servers; None trusts certifi's
            bundle, as httpx does by default.
        password: the password of an encrypted `key` (str or bytes). Never shown
            in a repr, a message or a log.
        reload: follow `cert` and `key` on disk: when their content changes, new
            connections present the new pair. A pair that does not load or does
            not match is refused with a warning, and the current one stays.
        reload_interval: look at the files at most this often (float seconds or
            timedelta; 0 looks on every new connection). Only new connections
            look, so requests on pooled connections pay nothing.
        minimum_version: ``ssl.TLSVersion.TLSv1_2`` or ``ssl.TLSVersion.TLSv1_3``.
        subject_alt_names: names the server's certificate must carry at least one of,
            as a URI (a SPIFFE id such as ``spiffe://cluster.local/ns/default/sa/orders``),
            DNS name or IP address subject-alt-name, compared exactly; checked when the
            handshake completes, before anything is sent. Given, they replace the
            check of the host name asked for (Envoy's ``match_subject_alt_names``).
            Empty (and no `subject_alt_name_prefixes`): the host name is checked,
            as by default.
        subject_alt_name_prefixes: as `subject_alt_names`, but a name the server's
            certificate carries counts when it starts with one of these
            (``spiffe://cluster.local/ns/default/`` accepts every workload of a
            namespace; Envoy's ``prefix`` matcher).
        server_name: where meshlib opens the connection (a `Policy`'s ``tls``), the
            name sent as SNI and, without `subject_alt_names`, checked against the
            server's certificate, instead of the host of the URL (Envoy's ``sni``).
            None: the URL's host. A client you build with `ssl_context` sends
            the URL's host (httpx's ``sni_hostname`` request extension overrides it).

    Raises:
        ConfigError: a value is invalid, or a file is missing, unreadable, not PEM,
            damaged, encrypted without a password, decrypted with a wrong password,
            or the key does not match the certificate. The message names the file.
    """

    cert: str | os.PathLike[str]
    key: str | os.PathLike[str]
    ca: str | os.PathLike[str] | None = None
    password: str | bytes | None = field(default=None, repr=False, metadata=SECRET)
    reload: bool = False
    _: KW_ONLY
    reload_interval: float | timedelta = field(default=1.0, metadata=DURATION)
    minimum_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    subject_alt_names: Sequence[str] = ()
    subject_alt_name_prefixes: Sequence[str] = ()
    server_name: str | None = None
    _context: ssl.SSLContext = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        cert = _path("cert", self.cert)
        key = _path("key", self.key)
        ca = None if self.ca is None else _path("ca", self.ca)
        password = self.password
        if password is not None:
            if not isinstance(password, str | bytes):
                # The type only: a value passed here by mistake may still be a secret.
                raise ConfigError(
                    f"expected str, bytes or None, got {type(password).__name__}",
                    field="TLS.password",
                )
            size = len(password.encode() if isinstance(password, str) else password)
            if size > _MAX_PASSWORD_BYTES:
                raise ConfigError(
                    f"expected at most {_MAX_PASSWORD_BYTES} bytes, got {size} bytes",
                    field="TLS.password",
                )
        if not isinstance(self.reload, bool):
            raise ConfigError(
                f"expected True or False, got {self.reload!r}",
                field="TLS.reload",
                value=self.reload,
                expected="True or False",
            )
        interval = duration("TLS", "reload_interval", self.reload_interval)
        assert interval is not None  # not optional
        version = self.minimum_version
        if not isinstance(version, ssl.TLSVersion) or version not in _ALLOWED_VERSIONS:
            expected = "ssl.TLSVersion.TLSv1_2 or ssl.TLSVersion.TLSv1_3"
            raise ConfigError(
                f"expected {expected}, got {version!r}",
                field="TLS.minimum_version",
                value=version,
                expected=expected,
            )
        for which in ("subject_alt_names", "subject_alt_name_prefixes"):
            names = getattr(self, which)
            if not isinstance(names, list | tuple) or not all(
                isinstance(name, str) and name for name in names
            ):
                raise ConfigError(
                    f"expected a list of non-empty names, got {names!r}",
                    field=f"TLS.{which}",
                    value=names,
                    expected="a list of non-empty names",
                )
            object.__setattr__(self, which, tuple(names))
        server_name = self.server_name
        if server_name is not None and (not isinstance(server_name, str) or not server_name):
            raise ConfigError(
                f"expected a non-empty host name or None, got {server_name!r}",
                field="TLS.server_name",
                value=server_name,
                expected="a non-empty host name or None",
            )
        object.__setattr__(self, "cert", cert)
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "ca", ca)
        object.__setattr__(self, "reload_interval", interval)

        source = _Source(cert=cert, key=key, password=password, interval=interval)
        context = _new_context(
            _ReloadingContext if self.reload else ssl.SSLContext,
            version,
            _Expected(frozenset(self.subject_alt_names), tuple(self.subject_alt_name_prefixes))
            if self.subject_alt_names or self.subject_alt_name_prefixes
            else None,
        )
        try:
            if ca is None:
                context.load_verify_locations(cafile=certifi.where())
            else:
                _load_ca(context, ca, _read("ca", ca))
            cert_data, key_data = _read_pair(source)
            with _checked_pair(source, cert_data, key_data) as load:
                load(context)
        except _Bad as bad:
            raise bad.error() from None
        if isinstance(context, _ReloadingContext):
            # The digest of the bytes actually loaded: a file changed since is a change.
            context._meshlib_start(source, _digest(cert_data, key_data))
        object.__setattr__(self, "_context", context)

    def ssl_context(self) -> ssl.SSLContext:
        """Return the ``ssl.SSLContext`` that presents this certificate; the same one each call.

        Give it to clients you build yourself: ``httpx.Client(verify=tls.ssl_context())``.
        With ``reload=True`` it follows the files for every client that holds it.
        Do not change its settings: every client built from this `TLS` shares it.
        """
        return self._context
