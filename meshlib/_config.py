"""The policy file: a default `Policy` and one per destination pattern, from TOML or JSON.

The file mirrors the Python names. ``[default]`` and ``[destinations."PATTERN"]`` are
tables whose keys are `Policy`'s fields (its layers); each layer holds that layer's
keyword arguments, or ``false`` (off), or ``true`` (the layer with its own defaults).
A destination's layer replaces the default's whole, as `Policy.replace` does; the
layers it does not name come from ``[default]``, and the layers ``[default]`` does not
name come from `STANDARD`.

The schema is read off the dataclasses themselves (`meshlib._schema`), so a layer added
to `Policy` is accepted here as soon as it exists, when its settings are plain keyword
tables. Every problem is a `ConfigError` naming the source, the path of the field in
the file and the value.

Near 500 lines because the reader and the document are one job: the reader's errors
carry the paths the document gives them, and splitting them would only pass those
paths across a module boundary.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import tomllib
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from ._checks import SECONDS_EXPECTED
from ._errors import ConfigError
from ._patterns import check_clusters, normalise_pattern, refuse_destination_layers
from ._policy import Policy, did_you_mean
from ._schema import Setting, layer_settings, parse_duration, settings_of

__all__ = [
    "ENV_VAR",
    "MAX_CONFIG_BYTES",
    "cluster_path",
    "MeshConfig",
    "load_config",
    "parse_config",
    "pattern_path",
    "read_config_file",
    "too_large",
]

#: The environment variable that names the policy file.
ENV_VAR = "MESHLIB_CONFIG"
#: The largest policy document meshlib reads, refused before parsing when larger: a
#: 1000-destination file is about 100 KiB, and a runaway one (50 MB took a minute and
#: 2 GB to check) must not stall a reload poller.
MAX_CONFIG_BYTES = 4 * 1024 * 1024

_TOP_LEVEL = ("default", "destinations", "clusters")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_TOML_WHERE = re.compile(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)\s*$")
# The validators speak Python; a file says ``false`` and writes durations as strings.
_FILE_SECONDS = 'a duration (seconds, or a string such as "2s")'
_FILE_CONSTANTS: dict[object, str] = {None: "null", False: "false", True: "true"}


# -- paths and errors ------------------------------------------------------------------


def _key(name: str) -> str:
    return name if _BARE_KEY.fullmatch(name) else json.dumps(name, ensure_ascii=False)


def _join(path: str, name: str) -> str:
    return f"{path}.{_key(name)}" if path else _key(name)


def pattern_path(pattern: str) -> str:
    # Patterns are always quoted: they are written so in a table header.
    return f"destinations.{json.dumps(pattern, ensure_ascii=False)}"


def cluster_path(name: str) -> str:
    return f"clusters.{json.dumps(name, ensure_ascii=False)}"


def _spell(value: object) -> str:
    """Render a value a validator was given as the file would spell its constants."""
    if isinstance(value, bool) or value is None:
        return _FILE_CONSTANTS[value]
    return repr(value)


def _show(value: object) -> str:
    """Render a value from the file as the file would spell it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return repr(value)


class _Reader:
    """Turn the parsed document into Policies, naming `source` and the path in errors."""

    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, path: str, message: str, value: object = ConfigError.NO_VALUE) -> ConfigError:
        return ConfigError(message, where=self.source, field=path or None, value=value)

    def build(self, cls: type, table: Mapping[str, Any], path: str) -> Any:
        """Return ``cls(**table)`` with nested tables built and durations read."""
        settings = settings_of(cls)
        kwargs: dict[str, Any] = {}
        written: dict[str, str] = {}
        for name, value in table.items():
            setting = settings.get(name)
            if setting is None:
                names = list(settings)
                raise self.error(
                    _join(path, name),
                    f"unknown setting {name!r} of {cls.__name__}; "
                    f"allowed: {', '.join(names)}{did_you_mean(name, names)}",
                )
            if not setting.in_file:
                what = "is a secret" if setting.secret else "takes a Python object"
                raise self.error(
                    _join(path, name),
                    f"{cls.__name__}.{name} {what}; set it in code, not in a file",
                )
            kwargs[name] = self.value(setting, value, _join(path, name), written)
        missing = [s.name for s in settings.values() if s.required and s.name not in kwargs]
        if missing:
            raise self.error(path, f"missing required setting {missing[0]!r} of {cls.__name__}")
        return self.construct(cls, kwargs, path, written)

    def construct(
        self, cls: Any, kwargs: dict[str, Any], path: str, written: Mapping[str, str]
    ) -> Any:
        try:
            return cls(**kwargs)
        except ConfigError as exc:
            raise self.relocate(exc, cls.__name__, settings_of(cls), path, written) from exc
        except (TypeError, ValueError) as exc:
            # A constructor that does not validate a type itself (an unhashable value, a
            # comparison between a number and a string): still one line, still the path.
            raise self.error(path, f"invalid {cls.__name__} settings: {exc}") from exc

    def relocate(
        self,
        exc: ConfigError,
        owner: str,
        settings: Mapping[str, Setting],
        path: str,
        written: Mapping[str, str],
    ) -> ConfigError:
        """Move a validator's error on ``Retry.attempts`` to ``path.attempts`` of the file."""
        found, _, name = (exc.field or "").partition(".")
        if found != owner or name not in settings:
            return self.error(path, str(exc), exc.value)
        problem, expected = exc.reason, exc.expected
        if expected is not None:  # say it as the file does
            if expected.startswith(SECONDS_EXPECTED):
                expected = _FILE_SECONDS + expected.removeprefix(SECONDS_EXPECTED)
            if expected.endswith(" or None"):
                expected = expected.removesuffix(" or None") + " or false"
            problem = f"expected {expected}, got {_spell(exc.value)}"
        if name in written:  # the value in the message is the converted one
            problem += f" (written {written[name]})"
        return ConfigError(
            problem, where=self.source, field=_join(path, name), value=exc.value, expected=expected
        )

    def value(self, setting: Setting, value: Any, path: str, written: dict[str, str]) -> Any:
        if isinstance(value, bool) and not setting.takes_bool:
            if value is False and setting.optional:
                return None
            if value is True and setting.table is not None and not setting.many:
                return self.build(setting.table, {}, path)
        if setting.choices and isinstance(value, dict):
            return self.build(self.choice(setting, value, path), value, path)
        if setting.table is not None:
            if setting.many and isinstance(value, list):
                return tuple(
                    self.table_of(setting.table, item, f"{path}[{index}]")
                    for index, item in enumerate(value)
                )
            if not setting.many and isinstance(value, dict):
                return self.build(setting.table, value, path)
            if not (setting.duration or setting.takes_str or value is None):
                raise self.error(
                    path, f"expected {self.expected(setting)}, got {_show(value)}", value
                )
        if setting.duration and isinstance(value, str):
            seconds = parse_duration(value)
            if seconds is not None:
                written[setting.name] = _show(value)
                return seconds
            if not setting.takes_str:
                raise self.error(
                    path,
                    "expected a duration: a number of seconds or a string such as "
                    f'"250ms", "2s" or "1m", got {_show(value)}',
                    value,
                )
        if isinstance(value, list):
            return tuple(value)  # hashable, order and duplicates kept for the validator
        return value

    def choice(self, setting: Setting, value: dict[str, Any], path: str) -> type:
        """Return the settings class a table stands for: the one that takes its keys."""
        for cls in setting.choices:
            if value and set(value) <= set(settings_of(cls)):
                return cls
        keys = [name for cls in setting.choices for name in settings_of(cls)]
        raise self.error(
            path,
            f"expected a table with one of {', '.join(keys)}, got "
            + ("an empty table" if not value else f"{', '.join(map(repr, value))}"),
            value,
        )

    def table_of(self, cls: type, value: Any, path: str) -> Any:
        if not isinstance(value, dict):
            raise self.error(
                path, f"expected a table of {cls.__name__} settings, got {_show(value)}", value
            )
        return self.build(cls, value, path)

    @staticmethod
    def expected(setting: Setting) -> str:
        assert setting.table is not None
        name = setting.table.__name__
        if setting.many:
            return f"an array of {name} tables" + (" or false" if setting.optional else "")
        return f"a table of {name} settings" + (
            ", true or false" if setting.optional else " or true"
        )

    def layers(self, table: Any, path: str) -> tuple[dict[str, Any], frozenset[str]]:
        """Return the layers a ``[default]`` or destination table names, built."""
        if not isinstance(table, dict):
            raise self.error(path, f"expected a table of layers, got {_show(table)}", table)
        settings = layer_settings()
        built: dict[str, Any] = {}
        for name, value in table.items():
            setting = settings.get(name)
            if setting is None:
                names = list(settings)
                raise self.error(
                    _join(path, name),
                    f"unknown layer {name!r}; layers: {', '.join(names)}"
                    f"{did_you_mean(name, names)}",
                )
            built[name] = self.value(setting, value, _join(path, name), {})
        return built, frozenset(built)

    def policy(self, base: Policy | None, layers: dict[str, Any], path: str) -> Policy:
        try:
            return Policy(**layers) if base is None else base.replace(**layers)
        except ConfigError as exc:
            raise self.relocate(exc, "Policy", layer_settings(), path, {}) from exc
        except (TypeError, ValueError) as exc:
            raise self.error(path, f"invalid policy: {exc}") from exc


# -- the document ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class MeshConfig:
    """A parsed policy file: the default policy, one policy per destination pattern and
    one per cluster.

    Two configs are equal when they configure the same mesh: the same default and the
    same patterns with the same policies, in the same order (order breaks ties between
    globs of equal length). Where they came from (`source`, `digest`) is not compared.

    Attributes:
        default: the policy for destinations no pattern names.
        destinations: pattern (as written) to its effective policy, read-only.
        source: the file path or URL the document came from.
        digest: the sha256 of the document's raw bytes, in hex.
        named: the layers each table named: ``None`` for ``[default]``, else the pattern.
        clusters: cluster name to its effective policy, read-only.
        cluster_named: the layers each ``[clusters."NAME"]`` table named.
        owners: clusters that are views of another, sharing its state and name
            (from xDS: a route's view of a cluster; a file has none).
    """

    default: Policy
    destinations: Mapping[str, Policy]
    source: str
    digest: str
    named: Mapping[str | None, frozenset[str]] = field(
        default_factory=lambda: types.MappingProxyType({}), repr=False
    )
    clusters: Mapping[str, Policy] = field(
        default_factory=lambda: types.MappingProxyType({}), repr=False
    )
    cluster_named: Mapping[str, frozenset[str]] = field(
        default_factory=lambda: types.MappingProxyType({}), repr=False
    )
    owners: Mapping[str, str] = field(
        default_factory=lambda: types.MappingProxyType({}), repr=False
    )

    def _compared(self) -> tuple[Any, ...]:
        return (
            self.default,
            tuple(self.destinations.items()),
            tuple(self.clusters.items()),
            tuple(self.owners.items()),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MeshConfig):
            return NotImplemented
        return self._compared() == other._compared()

    def __hash__(self) -> int:
        return hash(self._compared())

    def layer_origins(self, pattern: str | None, *, cluster: bool = False) -> dict[str, str]:
        """Return, per layer, the table it comes from for `pattern` (None: the default).

        Each value is ``destinations."PATTERN"`` (``clusters."NAME"`` when
        `cluster`: `pattern` is a cluster's name), ``default`` or ``STANDARD``.
        """
        if cluster and pattern is not None:
            own = self.cluster_named.get(pattern, frozenset())
        else:
            own = self.named.get(pattern, frozenset()) if pattern is not None else frozenset()
        default = self.named.get(None, frozenset())
        origins: dict[str, str] = {}
        for layer in layer_settings():
            if layer in own and pattern is not None:
                origins[layer] = cluster_path(pattern) if cluster else pattern_path(pattern)
            elif layer in default:
                origins[layer] = "default"
            else:
                origins[layer] = "STANDARD"
        return origins


def _format_of(source: str, data: bytes) -> str:
    path = urlsplit(source).path if "://" in source else source
    suffix = os.path.splitext(path)[1].lower()
    if suffix in (".toml", ".json"):
        return suffix[1:]
    # A TOML document cannot start with "{" (no inline table at the top level).
    return "json" if data.removeprefix(b"\xef\xbb\xbf").lstrip()[:1] == b"{" else "toml"


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for key, value in pairs:
        if key in table:
            raise _DuplicateKey(key)
        table[key] = value
    return table


class _DuplicateKey(Exception):
    pass


def _document(data: bytes, source: str, format: str) -> Any:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text (byte {exc.start})", where=source) from exc
    text = text.removeprefix("\ufeff")
    if format == "json":
        try:
            return json.loads(text, object_pairs_hook=_no_duplicates)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"invalid JSON: {exc.msg}", where=source, line=exc.lineno, column=exc.colno
            ) from exc
        except _DuplicateKey as exc:
            raise ConfigError(
                f"invalid JSON: duplicate key {exc.args[0]!r}", where=source, value=exc.args[0]
            ) from exc
        except RecursionError as exc:
            raise ConfigError("invalid JSON: nested too deeply", where=source) from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line, column, reason = _toml_position(exc, text)
        raise ConfigError(
            f"invalid TOML: {reason}", where=source, line=line, column=column
        ) from exc
    except RecursionError as exc:
        raise ConfigError("invalid TOML: nested too deeply", where=source) from exc


def _toml_position(exc: tomllib.TOMLDecodeError, text: str) -> tuple[int | None, int | None, str]:
    """Return the line, column and reason of a TOML error (None, None when it has no place)."""
    if sys.version_info >= (3, 14):  # tomllib gives the parts
        return exc.lineno, exc.colno, exc.msg
    # Before 3.14 tomllib gives its message only, the place at its end.
    message = str(exc)
    where = _TOML_WHERE.search(message)
    if where is None:
        return None, None, message
    if where[1] is None:  # "end of document"
        return text.count("\n") + 1, len(text.rsplit("\n", 1)[-1]) + 1, message[: where.start()]
    return int(where[1]), int(where[2]), message[: where.start()]


def parse_config(
    data: bytes | str, source: str, *, format: Literal["toml", "json"] | None = None
) -> MeshConfig:
    """Parse a policy document into a `MeshConfig`.

    Args:
        data: the document's raw bytes (text is encoded as UTF-8 first).
        source: where it came from, a path or URL; named in every error, and its
            suffix (``.toml``, ``.json``) picks the format unless `format` does.
        format: ``"toml"`` or ``"json"``; None: by `source`'s suffix, else JSON when the
            document starts with ``{``, else TOML.

    Returns:
        The default policy and one effective policy per pattern, merged as the file
        format says: a destination's layer replaces the default's whole, the layers it
        does not name come from ``[default]``, and those come from `STANDARD`.

    Raises:
        ConfigError: the document is not valid TOML or JSON (with its line), or does not
            follow the schema, or a value is invalid; the message names `source`, the
            path of the field and the value.
    """
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    if len(raw) > MAX_CONFIG_BYTES:
        raise too_large(source, len(raw))
    if format is not None and format not in ("toml", "json"):
        raise ConfigError(
            f"expected 'toml', 'json' or None, got {format!r}",
            where=source,
            field="format",
            value=format,
            expected="'toml', 'json' or None",
        )
    document = _document(raw, source, format or _format_of(source, raw))
    reader = _Reader(source)
    if not isinstance(document, dict):
        raise reader.error(
            "", f"expected a table with {', '.join(_TOP_LEVEL)}, got {_show(document)}", document
        )
    for key in document:
        if key not in _TOP_LEVEL:
            raise reader.error(
                _key(key),
                f"unknown top-level key {key!r}; allowed: {', '.join(_TOP_LEVEL)}"
                f"{did_you_mean(key, list(_TOP_LEVEL))}",
            )
    layers, named_default = reader.layers(document.get("default", {}), "default")
    default = reader.policy(None, layers, "default")
    refuse_destination_layers(default, "default", where=source)
    table = document.get("destinations", {})
    if not isinstance(table, dict):
        raise reader.error(
            "destinations", f"expected a table of patterns, got {_show(table)}", table
        )
    destinations: dict[str, Policy] = {}
    named: dict[str | None, frozenset[str]] = {None: named_default}
    seen: dict[str, str] = {}
    for pattern, layer_table in table.items():
        path = pattern_path(pattern)
        if not pattern.strip():
            raise reader.error(path, "expected a host pattern, got an empty one")
        normal = normalise_pattern(pattern, path, where=reader.source)
        same = seen.setdefault(normal, pattern)
        if same != pattern:
            raise reader.error(
                path,
                f"the same pattern as {pattern_path(same)} "
                "(patterns ignore case, surrounding spaces and a trailing dot)",
            )
        layers, named[pattern] = reader.layers(layer_table, path)
        destinations[pattern] = reader.policy(default, layers, path)
    table = document.get("clusters", {})
    if not isinstance(table, dict):
        raise reader.error(
            "clusters", f"expected a table of cluster names, got {_show(table)}", table
        )
    clusters: dict[str, Policy] = {}
    cluster_named: dict[str, frozenset[str]] = {}
    for name, layer_table in table.items():
        path = cluster_path(name)
        if not name.strip() or name != name.strip():
            raise reader.error(path, "expected a cluster name without surrounding spaces", name)
        layers, cluster_named[name] = reader.layers(layer_table, path)
        clusters[name] = reader.policy(default, layers, path)
    check_clusters(
        destinations, clusters, cluster_path, lambda p: f"{pattern_path(p)}.routes", where=source
    )
    return MeshConfig(
        default=default,
        destinations=types.MappingProxyType(destinations),
        source=source,
        digest=hashlib.sha256(raw).hexdigest(),
        named=types.MappingProxyType(named),
        clusters=types.MappingProxyType(clusters),
        cluster_named=types.MappingProxyType(cluster_named),
    )


def load_config(path: str | os.PathLike[str]) -> MeshConfig:
    """Read and parse the policy file at `path`.

    Raises:
        ConfigError: the file cannot be read, or `parse_config` refuses it.
    """
    name = os.fspath(path)
    try:
        data = read_config_file(name)
    except OSError as exc:
        reason = exc.strerror or exc.__class__.__name__
        raise ConfigError(f"cannot read the policy file: {reason}", where=name) from exc
    return parse_config(data, name)


def too_large(source: str, size: int | None) -> ConfigError:
    """Return the refusal of a policy document over `MAX_CONFIG_BYTES` (`size` if known)."""
    have = f"{size} bytes" if size is not None else f"more than {MAX_CONFIG_BYTES} bytes"
    return ConfigError(
        f"the policy document is {have}, over the limit of {MAX_CONFIG_BYTES} "
        f"bytes ({MAX_CONFIG_BYTES // 2**20} MiB)",
        where=source,
    )


def read_config_file(path: str) -> bytes:
    """Return the bytes of the policy file at `path`, at most `MAX_CONFIG_BYTES` read.

    Raises:
        ConfigError: the file is larger than the limit (nothing more is read).
        OSError: the file cannot be read.
    """
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        if size > MAX_CONFIG_BYTES:
            raise too_large(path, size)
        data = file.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:  # grew after the size check, or not a regular file
        raise too_large(path, None)
    return data
