"""Where a Mesh's policies come from when they change: a file, or a URL.

Each source runs one daemon thread that polls, parses off the request path, and
reports each new valid document to a callback (the Mesh's, which swaps its policy
table whole). A bad document is refused with one log line and is never reported, so
the last good policies stay. A bound method is held weakly: the thread stops when
its object is collected, or when the source is closed.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any, Literal

import httpx

from ._config import MAX_CONFIG_BYTES, MeshConfig, parse_config, read_config_file, too_large
from ._errors import ConfigError
from ._policy import SENSITIVE_QUERY
from ._telemetry import logger, redact_url

__all__ = ["FileSource", "OnConfig", "UrlSource"]

#: What a source calls with each new valid document.
OnConfig = Callable[[MeshConfig], None]


class _Poller:
    """A daemon thread calling `poll` every `interval` seconds until closed."""

    def __init__(self, where: str, interval: float) -> None:
        name = f"meshlib-config {where}"
        if not isinstance(interval, int | float) or isinstance(interval, bool) or interval <= 0:
            raise ConfigError(
                f"expected seconds > 0, got {interval!r}",
                where=name,
                field="interval",
                value=interval,
                expected="seconds > 0",
            )
        self.where = where
        self.interval = float(interval)
        self._failing: str | None = None  # the refusal logged last, until a good update
        # For the status page: the version in force, when it was loaded (wall time),
        # and the last refusal (wall time, reason), kept after a good update too.
        self.version: str | None = None
        self.loaded_at = time.time()  # wall-clock ok: shown as a date
        self.refused: tuple[float, str] | None = None
        self._stop = threading.Event()
        self._on_config: Callable[[], OnConfig | None] = lambda: None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self, on_config: OnConfig) -> None:
        """Poll from now on, reporting each new valid document to `on_config`."""
        if inspect.ismethod(on_config):  # a bound method: do not keep its object alive
            self._on_config = weakref.WeakMethod(on_config)
        else:
            self._on_config = lambda: on_config
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            on_config = self._on_config()
            if on_config is None:
                return
            try:
                self.poll(on_config)
            except Exception:  # a poller must outlive any surprise; say so once per poll
                logger.exception("meshlib policy source %s failed", self._thread.name)
            del on_config  # do not keep its object alive between polls

    def poll(self, on_config: OnConfig) -> None:
        raise NotImplementedError

    def _fail(self, error: ConfigError, state: str | None = None) -> None:
        """Log a refusal once per change of `state` (by default, the message itself).

        A dead config server for an hour is one line, not 720.
        """
        self.refused = (time.time(), str(error))  # wall-clock ok: shown as a date
        state = str(error) if state is None else state
        if state != self._failing:
            self._failing = state
            _refuse(self.where, error)

    def close(self) -> None:
        self._stop.set()

    @property
    def failing(self) -> bool:
        """True from a refusal until the next good update."""
        return self._failing is not None

    def _apply(self, on_config: OnConfig, config: MeshConfig) -> None:
        on_config(config)
        self.version, self.loaded_at = config.digest, time.time()  # wall-clock ok: shown as a date
        logger.info(
            "applied new policies from %s (%d destinations)",
            config.source,
            len(config.destinations),
            extra={"meshlib_event": "config_applied", "meshlib_source": config.source},
        )


def _refuse(source: str, error: ConfigError) -> None:
    logger.error(
        "refused the policy update, keeping the last good policies: %s",
        error,
        extra={"meshlib_event": "config_rejected", "meshlib_source": source},
    )


class FileSource(_Poller):
    """Follow a policy file: its stat signature first, then a hash of the content.

    The signature is the inode and device, size, mtime and ctime: a file
    replaced by ``mv``, or rewritten by ``cp -p`` or ``rsync -t`` with its
    mtime preserved, still differs in inode or ctime. `path` must be absolute
    (`Mesh.from_file` resolves it), so a later ``os.chdir`` changes nothing.
    """

    kind = "file"  # what the status page and config_dump call it

    def __init__(
        self, on_config: OnConfig, path: str | os.PathLike[str], digest: str, interval: float
    ) -> None:
        super().__init__(os.fspath(path), interval)
        self.path = os.fspath(path)
        self._digest = self.version = digest
        # Unknown rather than read now: the file may have changed since `digest` was
        # taken, and the first poll's hash comparison costs one read.
        self._stat: tuple[int, ...] | None = None
        self.start(on_config)

    def _signature(self) -> tuple[int, ...] | None:
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return stat.st_ino, stat.st_dev, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns

    def poll(self, on_config: OnConfig) -> None:
        signature = self._signature()
        if signature == self._stat:
            return
        self._stat = signature
        try:
            data = read_config_file(self.path)
        except OSError as exc:
            self._fail(ConfigError(f"cannot read: {exc.strerror or exc}", where=self.path))
            return
        except ConfigError as exc:  # too large: one line while it stays so, however it grows
            self._digest = ""  # whatever it shrinks back to is read and applied
            self._fail(exc, "too large")
            return
        digest = hashlib.sha256(data).hexdigest()
        if digest == self._digest:
            return  # touched, not changed
        self._digest = digest  # the same bad content is refused once, not every poll
        if not data.strip():
            # Most likely caught between an editor's truncate and its write.
            self._fail(ConfigError("the file is empty", where=self.path))
            return
        try:
            config = parse_config(data, self.path)
        except ConfigError as exc:
            self._fail(exc)
            return
        self._failing = None
        self._apply(on_config, config)


class UrlSource(_Poller):
    """Follow a policy document over HTTP(S), with ETag / If-None-Match."""

    kind = "url"  # what the status page and config_dump call it

    def __init__(
        self,
        url: str,
        interval: float,
        timeout: float,
        headers: Mapping[str, str],
        verify: Any,
    ) -> None:
        # What messages, logs and the Mesh show: a query's tokens redacted as telemetry does.
        shown = redact_url(httpx.URL(url), SENSITIVE_QUERY)
        super().__init__(shown, interval)
        self.url = url
        self.shown = shown
        # A plain client: the head office must stay reachable whatever the policies say.
        self._client = httpx.Client(timeout=timeout, headers=dict(headers), verify=verify)
        self._etag: str | None = None
        self._digest: str | None = None

    def _get(self) -> tuple[httpx.Response, bytes]:
        """GET the document: the response and at most `MAX_CONFIG_BYTES` of its body.

        Raises:
            ConfigError: the body (or its Content-Length) is over the limit.
        """
        headers = {"If-None-Match": self._etag} if self._etag else {}
        with self._client.stream("GET", self.url, headers=headers) as response:
            if response.status_code != 200:
                return response, b""  # a 304, or a refusal: the body does not matter
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > MAX_CONFIG_BYTES:
                raise too_large(self.shown, int(declared))
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_CONFIG_BYTES:
                    raise too_large(self.shown, None)
        return response, bytes(body)

    def _parse(self, answer: tuple[httpx.Response, bytes]) -> MeshConfig | None:
        """Return the new config, None when unchanged; raise ConfigError when bad."""
        response, data = answer
        if response.status_code == 304:
            return None
        if response.status_code != 200:
            raise ConfigError(f"HTTP {response.status_code}", where=self.shown)
        digest = hashlib.sha256(data).hexdigest()
        etag = response.headers.get("etag")
        if digest == self._digest:
            self._etag = etag
            return None
        kind = response.headers.get("content-type", "")
        fmt: Literal["toml", "json"] | None = (
            "json" if "json" in kind else "toml" if "toml" in kind else None
        )
        config = parse_config(data, self.shown, format=fmt)
        self._digest, self._etag = digest, etag
        return config

    def fetch_first(self) -> MeshConfig:
        """Fetch and parse the document once, for the Mesh's first policies."""
        try:
            config = self._parse(self._get())
        except httpx.HTTPError as exc:
            self.close()
            raise ConfigError(f"cannot fetch: {exc}", where=self.shown) from exc
        except ConfigError:
            self.close()
            raise
        assert config is not None  # no ETag was sent, so no 304
        self.version = config.digest
        return config

    def follow(self, on_config: OnConfig) -> None:
        self.start(on_config)

    def poll(self, on_config: OnConfig) -> None:
        try:
            config = self._parse(self._get())
        except httpx.HTTPError as exc:
            # Resets and refusals alike: one state, "cannot fetch", until it answers.
            error = ConfigError(f"cannot fetch: {type(exc).__name__}: {exc}", where=self.shown)
            self._fail(error, "cannot fetch")
            return
        except ConfigError as exc:
            self._fail(exc)
            return
        if self._failing is not None:
            logger.info(
                "policy source %s answers again",
                self.shown,
                extra={"meshlib_event": "config_source_ok", "meshlib_source": self.shown},
            )
            self._failing = None
        if config is not None:
            self._apply(on_config, config)

    def close(self) -> None:
        super().close()
        self._client.close()
