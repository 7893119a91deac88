"""The policy file: parsing, merging, errors with their paths, durations, the environment."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Annotated, Literal

import pytest

import meshlib
from meshlib import (
    STANDARD,
    Backoff,
    Breaker,
    Budget,
    Bulkhead,
    ConfigError,
    Mesh,
    Policy,
    Retry,
    Timeout,
)
from meshlib._config import (
    ENV_VAR,
    MeshConfig,
    _Reader,
    load_config,
    parse_config,
)
from meshlib._explain import describe, explain
from meshlib._patterns import normalise_pattern
from meshlib._policy import DURATION, Tracing
from meshlib._schema import format_duration, parse_duration, settings_of

# Every setting of every layer, in the file and in Python.
FULL_TOML = """\
[default.retry]
attempts = 4
on_status = [429, 503]
methods = ["get", "PUT"]
retry_after_cap = "20s"
backoff = { base = "100ms", cap = "2s", jitter = "equal" }
budget = { ratio = 0.3, min_per_second = 5, ttl = "30s" }
on_error = "connect"

[default.timeout]
total = 20
attempt = 5.5
header = "x-deadline-ms"

[default.breaker]
failure_ratio = 0.4
min_calls = 8
window = "1m"
open_for = 2
probes = 3
consecutive = 6
max_open_for = "1m30s"
on_status = [500, 502, 503]

[default.bulkhead]
max_concurrent = 64
max_queued = 16

[default.tracing]
propagate_to = ["mesh", "*.partner.example", "10.0.0.0/8"]
redact_query = ["token", "sig"]
capture_headers = ["x-request-id"]

[destinations."payments.internal"]
retry = { attempts = 2, budget = false }
timeout = { total = "5s" }

[destinations."payments.internal:8443"]
retry = false
breaker = false
bulkhead = false
tracing = false
timeout = false

[destinations."*.svc.cluster.local"]
timeout = { total = "10s", attempt = "3s", header = false }
breaker = true
"""

FULL_DEFAULT = Policy(
    retry=Retry(
        attempts=4,
        on_status=frozenset({429, 503}),
        methods=frozenset({"GET", "PUT"}),
        retry_after_cap=20.0,
        backoff=Backoff(base=0.1, cap=2.0, jitter="equal"),
        budget=Budget(ratio=0.3, min_per_second=5.0, ttl=30.0),
        on_error="connect",
    ),
    timeout=Timeout(total=20.0, attempt=5.5, header="x-deadline-ms"),
    breaker=Breaker(
        failure_ratio=0.4,
        min_calls=8,
        window=60.0,
        open_for=2.0,
        probes=3,
        consecutive=6,
        max_open_for=90.0,
        on_status=frozenset({500, 502, 503}),
    ),
    bulkhead=Bulkhead(max_concurrent=64, max_queued=16),
    tracing=Tracing(
        propagate_to=("mesh", "*.partner.example", "10.0.0.0/8"),
        redact_query=frozenset({"token", "sig"}),
        capture_headers=("x-request-id",),
    ),
)

FULL_JSON = {
    "default": {
        "retry": {
            "attempts": 4,
            "on_status": [429, 503],
            "methods": ["get", "PUT"],
            "retry_after_cap": "20s",
            "backoff": {"base": 0.1, "cap": 2, "jitter": "equal"},
            "budget": {"ratio": 0.3, "min_per_second": 5, "ttl": 30},
            "on_error": "connect",
        },
        "timeout": {"total": 20, "attempt": 5.5, "header": "x-deadline-ms"},
        "breaker": {
            "failure_ratio": 0.4,
            "min_calls": 8,
            "window": 60,
            "open_for": 2,
            "probes": 3,
            "consecutive": 6,
            "max_open_for": 90,
            "on_status": [500, 502, 503],
        },
        "bulkhead": {"max_concurrent": 64, "max_queued": 16},
        "tracing": {
            "propagate_to": ["mesh", "*.partner.example", "10.0.0.0/8"],
            "redact_query": ["token", "sig"],
            "capture_headers": ["x-request-id"],
        },
    },
    "destinations": {
        "payments.internal": {"retry": {"attempts": 2, "budget": None}, "timeout": {"total": 5}},
        "payments.internal:8443": {
            "retry": False,
            "breaker": False,
            "bulkhead": False,
            "tracing": False,
            "timeout": False,
        },
        "*.svc.cluster.local": {
            "timeout": {"total": "10s", "attempt": "3s", "header": None},
            "breaker": True,
        },
    },
}


def parse(text: str, source: str = "mesh.toml") -> MeshConfig:
    return parse_config(text.encode(), source)


# -- a full file -------------------------------------------------------------------------


def test_the_full_file_names_every_setting_of_every_layer() -> None:
    # If a layer gains a setting, FULL_TOML (and docs/mesh-file.md) must show it.
    document = parse(FULL_TOML)
    assert document.named[None] == {"retry", "timeout", "breaker", "bulkhead", "tracing"}
    written = json.dumps(FULL_JSON)
    for layer in ("retry", "timeout", "breaker", "bulkhead", "tracing"):
        for cls in (type(getattr(FULL_DEFAULT, layer)), Backoff, Budget):
            for name, setting in settings_of(cls).items():
                if setting.in_file:
                    assert f'"{name}"' in written, (cls.__name__, name)


def test_a_full_file_parses_to_the_policies_built_in_python() -> None:
    config = parse(FULL_TOML)
    assert config.default == FULL_DEFAULT
    assert dict(config.destinations) == {
        "payments.internal": FULL_DEFAULT.replace(
            retry=Retry(attempts=2, budget=None), timeout=Timeout(total=5.0)
        ),
        "payments.internal:8443": Policy(
            retry=None, timeout=None, breaker=None, bulkhead=None, tracing=None
        ),
        "*.svc.cluster.local": FULL_DEFAULT.replace(
            timeout=Timeout(total=10.0, attempt=3.0, header=None), breaker=Breaker()
        ),
    }
    assert list(config.destinations) == [
        "payments.internal",
        "payments.internal:8443",
        "*.svc.cluster.local",
    ]


def test_the_json_form_configures_the_same_mesh() -> None:
    toml = parse(FULL_TOML)
    from_json = parse_config(json.dumps(FULL_JSON, indent=2).encode(), "mesh.json")
    assert from_json == toml
    assert hash(from_json) == hash(toml)
    assert from_json.source == "mesh.json"
    assert from_json.digest != toml.digest


def test_the_api_md_example_reads_as_documented() -> None:
    config = parse(
        """
[default]
retry = { attempts = 3, backoff = { base = 0.05, cap = 1.0, jitter = "full" } }
timeout = { total = 30, attempt = 10 }
bulkhead = false

[destinations."payments.internal"]
retry = { attempts = 2 }
timeout = { total = 5 }
breaker = { failure_ratio = 0.5, min_calls = 20, window = 30, open_for = 5 }
"""
    )
    default = STANDARD.replace(
        retry=Retry(attempts=3, backoff=Backoff(base=0.05, cap=1.0, jitter="full")),
        timeout=Timeout(total=30, attempt=10),
        bulkhead=None,
    )
    assert config.default == default
    assert config.destinations["payments.internal"] == default.replace(
        retry=Retry(attempts=2),
        timeout=Timeout(total=5),
        breaker=Breaker(failure_ratio=0.5, min_calls=20, window=30, open_for=5),
    )


def test_an_empty_document_is_standard_with_no_destinations() -> None:
    for config in (parse(""), parse_config(b"{}", "mesh.json"), parse("[default]\n")):
        assert config.default == STANDARD
        assert dict(config.destinations) == {}


# -- merging -------------------------------------------------------------------------------


def test_a_destination_layer_replaces_the_default_layer_whole() -> None:
    config = parse(
        """
[default]
retry = { attempts = 5, retry_after_cap = "5s", backoff = { base = "1s", cap = "2s" } }
[destinations.a]
retry = { attempts = 2 }
"""
    )
    # Not attempts=2 on top of the default's backoff: a fresh Retry(attempts=2).
    assert config.destinations["a"].retry == Retry(attempts=2)


def test_layers_a_destination_does_not_name_come_from_the_default() -> None:
    config = parse(
        """
[default]
timeout = { total = 7 }
bulkhead = { max_concurrent = 3 }
[destinations.a]
retry = false
"""
    )
    a = config.destinations["a"]
    assert a.timeout is config.default.timeout
    assert a.bulkhead is config.default.bulkhead
    assert a.retry is None


def test_layers_the_default_does_not_name_come_from_standard() -> None:
    config = parse("[default]\ntimeout = { total = 7 }\n[destinations.a]\nretry = false\n")
    assert config.default.retry == STANDARD.retry
    assert config.default.breaker == STANDARD.breaker
    assert config.default.bulkhead == STANDARD.bulkhead
    assert config.destinations["a"].breaker == STANDARD.breaker


def test_a_host_port_pattern_inherits_from_the_default_not_from_the_host() -> None:
    config = parse(
        '[destinations.a]\nretry = { attempts = 9 }\n[destinations."a:8443"]\ntimeout = false\n'
    )
    assert config.destinations["a:8443"].retry == STANDARD.retry


def test_layer_origins_name_the_table_each_layer_comes_from() -> None:
    config = parse("[default]\ntimeout = { total = 7 }\n[destinations.a]\nretry = false\n")
    assert config.layer_origins("a") == {
        "retry": 'destinations."a"',
        "timeout": "default",
        "breaker": "STANDARD",
        "bulkhead": "STANDARD",
        "tracing": "STANDARD",
        "endpoints": "STANDARD",
        "routes": "STANDARD",
        "faults": "STANDARD",
        "hedge": "STANDARD",
        "fallback": "STANDARD",
        "tls": "STANDARD",
    }
    assert config.layer_origins(None)["timeout"] == "default"
    assert config.layer_origins(None)["retry"] == "STANDARD"


# -- true, false, null -------------------------------------------------------------------


def test_false_switches_a_layer_off() -> None:
    config = parse(
        "[default]\nretry = false\nbreaker = false\n[destinations.a]\nretry = { attempts = 2 }\n"
    )
    assert config.default == STANDARD.replace(retry=None, breaker=None)
    assert config.destinations["a"].breaker is None
    assert config.destinations["a"].retry == Retry(attempts=2)


def test_false_switches_optional_settings_off() -> None:
    config = parse(
        "[default]\n"
        "retry = { budget = false }\n"
        "timeout = { total = false, attempt = false, header = false }\n"
        "breaker = { consecutive = false, max_open_for = false }\n"
    )
    assert config.default.retry == Retry(budget=None)
    assert config.default.timeout == Timeout(total=None, attempt=None, header=None)
    assert config.default.breaker == Breaker()


def test_true_is_the_layer_with_its_own_defaults() -> None:
    config = parse("[default]\nretry = { budget = true }\ntimeout = true\nbulkhead = true\n")
    assert config.default.retry == Retry()
    # Timeout() has no per-attempt bound, unlike STANDARD's timeout.
    assert config.default.timeout == Timeout() == Timeout(total=30.0, attempt=None)
    assert config.default.bulkhead == Bulkhead()


def test_json_null_is_none() -> None:
    config = parse_config(b'{"default": {"retry": null, "timeout": {"attempt": null}}}', "m.json")
    assert config.default.retry is None
    assert config.default.timeout == Timeout(attempt=None)


# -- durations -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("2s", 2.0),
        ("1m", 60.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        (".5s", 0.5),
        ("1m30s", 90.0),
        ("1h 2m 3s", 3723.0),
        ("250 ms", 0.25),
        (" 2s ", 2.0),
        ("0s", 0.0),
    ],
)
def test_duration_strings(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", " ", "30", "2 sec", "-1s", "1x", "s", "1.2.3s", "ms", "2s!"])
def test_strings_that_are_not_durations(text: str) -> None:
    assert parse_duration(text) is None


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        *[(0, "0s"), (0.05, "50ms"), (0.0005, "0.5ms"), (1, "1s"), (2.5, "2.5s"), (90, "90s")],
        *[(60, "1m"), (300, "5m"), (3600, "1h"), (5400, "90m")],
    ],
)
def test_format_duration_reads_back(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds)


def test_every_duration_setting_takes_a_string() -> None:
    config = parse(
        "[default]\n"
        'retry = { retry_after_cap = "2m", backoff = { base = "10ms", cap = "3s" },'
        ' budget = { ttl = "1m" } }\n'
        'timeout = { total = "1m", attempt = "1.5s" }\n'
        'breaker = { window = "2m", open_for = "500ms", max_open_for = "1h" }\n'
    )
    retry, timeout, breaker = config.default.retry, config.default.timeout, config.default.breaker
    assert retry == Retry(
        retry_after_cap=120.0,
        backoff=Backoff(base=0.01, cap=3.0),
        budget=Budget(ttl=60.0),
    )
    assert timeout == Timeout(total=60.0, attempt=1.5)
    assert breaker == Breaker(window=120.0, open_for=0.5, max_open_for=3600.0)


# -- errors ----------------------------------------------------------------------------------

D = '[destinations."payments.internal"]\n'
P = 'mesh.toml: destinations."payments.internal"'

ERRORS: list[tuple[str, str]] = [
    # the brief's own example
    (D + "retry = { attempts = 0 }", f"{P}.retry.attempts: expected an int >= 1"),
    ("[default]\nretry = { attempts = 1.5 }", "mesh.toml: default.retry.attempts: expected an int"),
    (
        "[default]\nretry = { attempts = false }",
        "mesh.toml: default.retry.attempts: expected an int >= 1, got false",
    ),
    (
        D + "retry = { backoff = { jitter = 'some' } }",
        f"{P}.retry.backoff.jitter: expected one of ['decorrelated', 'equal', 'full', 'none'],"
        " got 'some'",
    ),
    (
        D + "retry = { backoff = { base = '2s', cap = '1s' } }",
        f'{P}.retry.backoff.cap: expected a cap >= base (2.0), got 1.0 (written "1s")',
    ),
    (
        D + "retry = { backoff = { cap = '1x' } }",
        f"{P}.retry.backoff.cap: expected a duration: a number of seconds or a string such as"
        ' "250ms", "2s" or "1m", got "1x"',
    ),
    (
        D + "retry = { backoff = false }",
        f"{P}.retry.backoff: expected a table of Backoff settings or true, got false",
    ),
    (
        D + "retry = { on_status = [200, 700] }",
        f"{P}.retry.on_status: expected HTTP status codes between 100 and 599, got 700",
    ),
    (
        D + "retry = { on_status = 503 }",
        f"{P}.retry.on_status: expected a collection of HTTP status codes, got 503",
    ),
    (
        D + "retry = { methods = ['GET', 'NOT A METHOD'] }",
        f"{P}.retry.methods: expected HTTP method names (RFC 9110 tokens such as 'GET'),"
        " got 'NOT A METHOD'",
    ),
    (
        D + "retry = { budget = { ratio = -1 } }",
        f"{P}.retry.budget.ratio: expected a finite number >= 0, got -1",
    ),
    (
        D + "retry = { budget = { ratio = '2s' } }",
        f"{P}.retry.budget.ratio: expected a number, got '2s'",
    ),
    (
        D + "retry = { budget = 3 }",
        f"{P}.retry.budget: expected a table of Budget settings, true or false, got 3",
    ),
    (
        D + "timeout = { total = '30s', attempt = '40s' }",
        f'{P}.timeout.attempt: expected at most total (30.0), got 40.0 (written "40s")',
    ),
    (D + "timeout = { total = 0 }", f"{P}.timeout.total: expected a positive duration, got 0"),
    (
        D + "timeout = { total = 'soon' }",
        f"{P}.timeout.total: expected a duration: a number of seconds or a string such as",
    ),
    (
        D + "timeout = { header = 'a b' }",
        f"{P}.timeout.header: expected an HTTP header name or false, got 'a b'",
    ),
    (
        D + "breaker = { failure_ratio = 1.5 }",
        f"{P}.breaker.failure_ratio: expected a number in (0, 1], got 1.5",
    ),
    (D + "breaker = { min_calls = 0 }", f"{P}.breaker.min_calls: expected an int >= 1, got 0"),
    (
        D + "breaker = { open_for = '10s', max_open_for = '5s' }",
        f"{P}.breaker.max_open_for: expected at least open_for (10.0), got 5.0",
    ),
    (
        D + "bulkhead = { max_queued = -1 }",
        f"{P}.bulkhead.max_queued: expected an int >= 0, got -1",
    ),
    (
        D + "tracing = { tracer_provider = 'otel' }",
        f"{P}.tracing.tracer_provider: Tracing.tracer_provider takes a Python object;"
        " set it in code, not in a file",
    ),
    (
        D + "tracing = { capture_headers = ['bad header'] }",
        f"{P}.tracing.capture_headers: expected HTTP header names, got 'bad header'",
    ),
    # unknown names list the allowed ones
    (
        D + "retyr = { attempts = 2 }",
        f"{P}.retyr: unknown layer 'retyr'; layers: retry, timeout, breaker, bulkhead, tracing,"
        " endpoints, routes, faults, hedge, fallback, tls"
        " (did you mean 'retry'?)",
    ),
    (
        D + "retry = { attemps = 2 }",
        f"{P}.retry.attemps: unknown setting 'attemps' of Retry; allowed: attempts, backoff,"
        " on_status, methods, retry_after_cap, budget, on_error (did you mean 'attempts'?)",
    ),
    (
        D + "retry = { backoff = { max = 1 } }",
        f"{P}.retry.backoff.max: unknown setting 'max' of Backoff; allowed: base, cap, jitter",
    ),
    (
        "[defaults]\nretry = false",
        "mesh.toml: defaults: unknown top-level key 'defaults'; allowed: default, destinations,"
        " clusters (did you mean 'default'?)",
    ),
    (
        '"payments.internal" = { retry = false }',
        "mesh.toml: \"payments.internal\": unknown top-level key 'payments.internal'; allowed:",
    ),
    # shapes
    ("default = 3", "mesh.toml: default: expected a table of layers, got 3"),
    ("destinations = [1]", "mesh.toml: destinations: expected a table of patterns, got an array"),
    ("[destinations]\na = 1", 'mesh.toml: destinations."a": expected a table of layers, got 1'),
    (D + "retry = 3", f"{P}.retry: expected a table of Retry settings, true or false, got 3"),
    (
        D + "retry = 'off'",
        f'{P}.retry: expected a table of Retry settings, true or false, got "off"',
    ),
    (
        '[destinations." "]\nretry = false',
        'mesh.toml: destinations." ": expected a host pattern, got an empty one',
    ),
    (
        '[destinations."Payments.Internal."]\n' + D,
        f'{P}: the same pattern as destinations."Payments.Internal." (patterns ignore case,',
    ),
    # syntax: the file and the line
    ("[default]\nretry = { attempts = }", "mesh.toml, line 2, column 22: invalid TOML: "),
    ("[default]\n[default]\n", "mesh.toml, line 2, column 9: invalid TOML: Cannot declare"),
    ("[default]\nretry = {", "mesh.toml, line 2, column 10: invalid TOML: "),
]


@pytest.mark.parametrize(("text", "message"), ERRORS)
def test_errors_name_the_file_the_path_and_the_value(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse(text)
    assert str(raised.value).startswith(message)
    assert "\n" not in str(raised.value)
    assert "Traceback" not in str(raised.value)


JSON_ERRORS: list[tuple[str, str]] = [
    ('{\n  "default": {\n    "retry": }\n}', "mesh.json, line 3, column 14: invalid JSON: "),
    ('{"default": {}, "default": {}}', "mesh.json: invalid JSON: duplicate key 'default'"),
    ("[1, 2]", "mesh.json: expected a table with default, destinations, clusters, got an array"),
    (
        '{"destinations": {"a": {"retry": {"budget": {"ttl": null}}}}}',
        'mesh.json: destinations."a".retry.budget.ttl: expected a duration (seconds, or a string'
        ' such as "2s"), got null',
    ),
    (
        '{"default": {"timeout": {"total": "a minute"}}}',
        "mesh.json: default.timeout.total: expected a duration",
    ),
    (
        '{"destinations": {"a.b": {"retry": {"on status": [500]}}}}',
        'mesh.json: destinations."a.b".retry."on status": unknown setting',
    ),
    ('{"default": {"retry": {"attempts": NaN}}}', "mesh.json: default.retry.attempts: expected"),
]


@pytest.mark.parametrize(("text", "message"), JSON_ERRORS)
def test_json_errors_name_the_file_the_path_and_the_value(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse(text, "mesh.json")
    assert str(raised.value).startswith(message)


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("http://a.internal", "a host, not a URL (write 'a.internal', without 'http://')"),
        ("a.internal/x", "a host, not a path (write 'a.internal')"),
        ("a internal", "a host without spaces"),
        ("a.internal:99999", "a port between 1 and 65535"),
        ("a.internal:abc", "a port between 1 and 65535 after ':'"),
    ],
)
@pytest.mark.parametrize("format", ["toml", "json"])
def test_a_pattern_that_can_never_match_is_refused_with_the_file_and_the_table(
    pattern: str, problem: str, format: str
) -> None:
    if format == "toml":
        text, source = f'[destinations."{pattern}"]\nretry = false\n', "mesh.toml"
    else:
        text, source = json.dumps({"destinations": {pattern: {"retry": False}}}), "mesh.json"
    with pytest.raises(ConfigError) as raised:
        parse(text, source)
    assert str(raised.value) == (
        f"{source}: destinations.{json.dumps(pattern)}: expected {problem}, got {pattern!r}"
    )


def test_errors_are_config_errors_and_value_errors_chained_to_the_cause() -> None:
    with pytest.raises(ValueError, match="attempts") as raised:
        parse("[default]\nretry = { attempts = 0 }")
    assert isinstance(raised.value, meshlib.MeshError)
    assert isinstance(raised.value.__cause__, ConfigError)


def test_a_validator_s_error_carries_its_parts() -> None:
    with pytest.raises(ConfigError) as raised:
        meshlib.Retry(attempts=0)
    error = raised.value
    assert (error.where, error.field, error.value, error.line) == (None, "Retry.attempts", 0, None)
    assert error.expected == "an int >= 1 (it counts the first call)"
    assert error.reason == "expected an int >= 1 (it counts the first call), got 0"
    assert str(error) == f"Retry.attempts: {error.reason}"


def test_the_file_reader_sets_where_and_the_field_s_path_in_the_file() -> None:
    with pytest.raises(ConfigError) as raised:
        parse('[destinations."api.internal"]\ntimeout = { total = "-2s" }', "fleet.toml")
    error = raised.value
    assert error.where == "fleet.toml"
    assert error.field == 'destinations."api.internal".timeout.total'
    assert error.value == "-2s"
    assert error.reason.startswith("expected a duration")
    assert str(error) == f"fleet.toml: {error.field}: {error.reason}"
    with pytest.raises(ConfigError) as raised:
        parse("[default]\nretry = { attempts = 0, backoff = { base = false } }", "fleet.toml")
    error = raised.value
    assert (error.where, error.field, error.value) == (
        "fleet.toml",
        "default.retry.backoff.base",
        False,
    )
    assert error.reason == 'expected a duration (seconds, or a string such as "2s"), got false'
    assert isinstance(error.__cause__, ConfigError)
    assert error.__cause__.field == "Backoff.base"


@pytest.mark.parametrize(
    ("text", "source", "line", "column"),
    [
        ("[default]\nretry = {", "mesh.toml", 2, 10),
        ("[default]\nretry = { attempts = 2 }\n[[x", "mesh.toml", 3, 4),
        ('{"default":\n  {"retry": }}', "mesh.json", 2, 13),
    ],
)
def test_a_syntax_error_carries_the_file_line_and_column(
    text: str, source: str, line: int, column: int
) -> None:
    with pytest.raises(ConfigError) as raised:
        parse(text, source)
    error = raised.value
    assert (error.where, error.line, error.column, error.field) == (source, line, column, None)
    assert str(error) == f"{source}, line {line}, column {column}: {error.reason}"
    assert error.reason.startswith(f"invalid {source[-4:].upper()}: ")


def test_a_file_that_cannot_be_read_is_where(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as raised:
        load_config(missing)
    assert raised.value.where == str(missing)
    assert raised.value.reason.startswith("cannot read the policy file: ")


def test_durations_are_the_fields_marked_so() -> None:
    marked = sorted(
        f"{cls.__name__}.{spec.name}"
        for cls in (
            meshlib.Backoff,
            meshlib.Budget,
            meshlib.Retry,
            meshlib.Timeout,
            meshlib.Breaker,
            meshlib.Bulkhead,
            meshlib.Tracing,
            meshlib.Ejection,
            meshlib.Endpoints,
            meshlib.Route,
            meshlib.Faults,
            meshlib.Hedge,
            meshlib.Policy,
        )
        for spec in dataclasses.fields(cls)
        if spec.metadata.get("duration")
    )
    assert marked == [
        "Backoff.base", "Backoff.cap", "Breaker.max_open_for", "Breaker.open_for",
        "Breaker.window", "Budget.ttl", "Ejection.base", "Ejection.cap", "Faults.delay",
        "Hedge.delay", "Retry.retry_after_cap", "Timeout.attempt", "Timeout.total",
    ]  # fmt: skip


def test_a_float_field_not_marked_as_a_duration_takes_no_duration_string() -> None:
    @dataclasses.dataclass(frozen=True)
    class _Rate:
        per_window: float = 1.0  # a float, named like no share or ratio

    # Not read as seconds: the string reaches the class's own validation as written.
    assert _Reader("x").build(_Rate, {"per_window": "2s"}, "y") == _Rate("2s")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^x: default\.breaker\.failure_ratio: .*got \'2s\'"):
        parse('[default]\nbreaker = { failure_ratio = "2s" }', "x")


@pytest.mark.parametrize(
    ("data", "source"),
    [
        (b"a = " + b"[" * 5000 + b"]" * 5000, "deep.toml"),
        (b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "deep.json"),
    ],
)
def test_a_document_nested_too_deeply_is_refused(data: bytes, source: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{source}: invalid (TOML|JSON): nested too deeply$"):
        parse_config(data, source)


def test_text_that_is_not_utf8_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^mesh\.toml: not UTF-8 text \(byte 10\)"):
        parse_config(b"[default]\n\xff", "mesh.toml")


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ConfigError, match="format: expected 'toml', 'json' or None, got 'yaml'"):
        parse_config(b"", "mesh.yaml", format="yaml")  # type: ignore[arg-type]


# -- formats -----------------------------------------------------------------------------


def test_the_format_follows_the_suffix_then_the_first_character() -> None:
    toml, as_json = b"[default]\nretry = false\n", b'  \n{"default": {"retry": false}}'
    for data, source in [
        (toml, "mesh.toml"),
        (toml, "/etc/meshlib/mesh"),
        (toml, "https://config.internal/mesh.toml?v=3"),
        (as_json, "mesh.json"),
        (as_json, "https://config.internal/mesh"),
        (as_json, "MESH.JSON"),
    ]:
        assert parse_config(data, source).default.retry is None, source
    assert parse_config(as_json, "mesh.toml", format="json").default.retry is None
    with pytest.raises(ConfigError, match="invalid TOML"):
        parse_config(as_json, "mesh.toml")


def test_text_is_accepted_and_a_bom_is_skipped() -> None:
    assert parse_config("[default]\nretry = false", "m.toml").default.retry is None
    assert (
        parse_config(b'\xef\xbb\xbf{"default": {"retry": false}}', "m.json").default.retry is None
    )


def test_the_digest_is_the_sha256_of_the_raw_bytes() -> None:
    data = FULL_TOML.encode()
    assert parse_config(data, "mesh.toml").digest == hashlib.sha256(data).hexdigest()


# -- the value -----------------------------------------------------------------------------


def test_a_config_is_immutable() -> None:
    config = parse(FULL_TOML)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.default = STANDARD  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.destinations["x"] = STANDARD  # type: ignore[index]


def test_equality_ignores_where_a_config_came_from_but_not_the_order_of_patterns() -> None:
    one = parse("[destinations.a]\nretry = false\n[destinations.b]\ntimeout = false\n", "one.toml")
    same = parse("[destinations.a]\nretry=false\n[destinations.b]\ntimeout=false", "two.toml")
    swapped = parse("[destinations.b]\ntimeout = false\n[destinations.a]\nretry = false\n")
    assert one == same
    assert one.digest != same.digest
    assert one != swapped  # order breaks ties between globs of equal length
    assert one != "a config"


def test_a_thousand_destinations_parse_in_well_under_a_second() -> None:
    lines = ["[default]", 'retry = { attempts = 3, backoff = { base = "50ms", cap = "1s" } }']
    for n in range(1000):
        lines += [
            f'[destinations."svc-{n}.internal"]',
            f"retry = {{ attempts = {n % 5 + 1}, budget = {{ ratio = 0.1 }} }}",
            f'timeout = {{ total = "{n % 30 + 1}s", attempt = "500ms" }}',
            f"breaker = {{ min_calls = {n % 50 + 1}, window = 30 }}",
            f"bulkhead = {{ max_concurrent = {n + 1} }}",
        ]
    data = "\n".join(lines).encode()
    # CPU time of this thread, not wall time, so that a loaded machine does not count.
    started = time.thread_time()
    config = parse_config(data, "fleet.toml")
    elapsed = time.thread_time() - started
    assert len(config.destinations) == 1000
    assert config.destinations["svc-999.internal"].bulkhead == Bulkhead(max_concurrent=1000)
    assert elapsed < 1.0, f"{elapsed:.3f}s"


# -- new layers work by their fields ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Leg:
    to: str
    weight: float | None = None
    headers: dict[str, str] | None = None


@dataclasses.dataclass(frozen=True)
class _Hedge:
    delay: float | str = dataclasses.field(default=0.05, metadata=DURATION)
    max_extra: int = 1
    legs: tuple[_Leg, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.delay, str) and self.delay != "p95":
            # A validator names its field as an attribute; the reader moves it into the file.
            raise ConfigError(
                f"expected seconds or 'p95', got {self.delay!r}",
                field="_Hedge.delay",
                value=self.delay,
            )


def test_a_layer_of_plain_keyword_tables_needs_no_code_here() -> None:
    reader = _Reader("mesh.toml")
    built = reader.build(
        _Hedge,
        {"delay": "20ms", "legs": [{"to": "a", "weight": 0.5}, {"to": "b", "headers": {"x": "1"}}]},
        "default.hedge",
    )
    assert built == _Hedge(delay=0.02, legs=(_Leg("a", 0.5), _Leg("b", headers={"x": "1"})))
    assert reader.build(_Hedge, {"delay": "p95"}, "default.hedge") == _Hedge(delay="p95")
    with pytest.raises(ConfigError, match=r"^mesh\.toml: default\.hedge\.delay: expected seconds"):
        reader.build(_Hedge, {"delay": "p50"}, "default.hedge")
    with pytest.raises(
        ConfigError, match=r"^mesh\.toml: default\.hedge\.legs\[1\]: missing required setting 'to'"
    ):
        reader.build(_Hedge, {"legs": [{"to": "a"}, {"weight": 1}]}, "default.hedge")
    with pytest.raises(
        ConfigError, match=r"default\.hedge\.legs\[0\]: expected a table of _Leg settings, got 1"
    ):
        reader.build(_Hedge, {"legs": [1]}, "default.hedge")
    with pytest.raises(ConfigError, match=r"default\.hedge\.legs: expected an array of _Leg"):
        reader.build(_Hedge, {"legs": {"to": "a"}}, "default.hedge")


class _Plain:
    """A meshlib-style settings class that is not a dataclass."""

    def __init__(self, size: int = 1, *, mode: Literal["auto", True] = "auto") -> None:
        if not isinstance(size, int):
            raise TypeError("size must be an int")  # not a ConfigError: still one clean line
        self.size, self.mode = size, mode

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Plain) and (self.size, self.mode) == (other.size, other.mode)

    __hash__ = None  # type: ignore[assignment]


_Plain.__module__ = "meshlib._future"


@dataclasses.dataclass(frozen=True)
class _Holder:
    plain: _Plain | None = None
    limit: Annotated[float, "seconds"] = dataclasses.field(default=1.0, metadata=DURATION)


def test_settings_classes_that_are_not_dataclasses_work_by_their_signature() -> None:
    reader = _Reader("mesh.toml")
    built = reader.build(_Holder, {"plain": {"size": 3, "mode": True}, "limit": "2s"}, "x")
    assert built == _Holder(plain=_Plain(3, mode=True), limit=2.0)
    assert reader.build(_Holder, {"plain": True}, "x") == _Holder(plain=_Plain())
    assert reader.build(_Holder, {"plain": False}, "x") == _Holder(plain=None)
    with pytest.raises(
        ConfigError, match=r"^mesh\.toml: x\.plain: invalid _Plain settings: size must be an int$"
    ):
        reader.build(_Holder, {"plain": {"size": "big"}}, "x")


# -- files and the environment ---------------------------------------------------------------


def test_load_config_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "mesh.toml"
    path.write_text(FULL_TOML)
    config = load_config(path)
    assert config.source == str(path)
    assert config == parse(FULL_TOML)
    assert load_config(str(path)) == config


def test_load_config_names_a_file_it_cannot_read(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError, match=rf"^{missing}: cannot read the policy file: No such"):
        load_config(missing)
    with pytest.raises(ConfigError, match=rf"^{tmp_path}: cannot read the policy file: "):
        load_config(tmp_path)


def test_mesh_from_env_is_the_one_environment_reader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert Mesh.from_env() is None
    monkeypatch.setenv(ENV_VAR, "  ")
    assert Mesh.from_env() is None
    path = tmp_path / "mesh.json"
    path.write_text(json.dumps(FULL_JSON))
    monkeypatch.setenv(ENV_VAR, str(path))
    mesh = Mesh.from_env(reload=False)
    assert mesh is not None
    expected = parse(FULL_TOML)
    assert mesh.default == expected.default
    assert dict(mesh.destinations) == {
        normalise_pattern(p): policy for p, policy in expected.destinations.items()
    }
    monkeypatch.setenv("OTHER_MESH", str(path))
    other = Mesh.from_env("OTHER_MESH", reload=False)
    assert other is not None
    assert other.default == mesh.default


def test_mesh_from_env_names_the_variable_when_the_file_is_bad(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "mesh.toml"
    path.write_text("[default]\nretry = { attempts = 0 }\n")
    monkeypatch.setenv(ENV_VAR, str(path))
    with pytest.raises(ConfigError) as raised:
        Mesh.from_env(reload=False)
    assert str(raised.value).startswith(
        f"$MESHLIB_CONFIG={path}: default.retry.attempts: expected an int >= 1"
    )
    assert raised.value.where == f"$MESHLIB_CONFIG={path}"
    assert (raised.value.field, raised.value.value) == ("default.retry.attempts", 0)
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "gone.toml"))
    with pytest.raises(ConfigError, match=r"^\$MESHLIB_CONFIG=.*gone\.toml: cannot read "):
        Mesh.from_env(reload=False)


# -- patterns ------------------------------------------------------------------------------

PATTERNS = {
    "payments.internal": "exact",
    "payments.internal:8443": "host-port",
    "*.svc.cluster.local": "cluster",
    "*.internal": "internal",
    "api.*.internal": "api",  # longer than "*.internal": wins where both match
    "*.internal:9000": "internal-9000",
    "Reports.Internal.": "reports",
}


@pytest.mark.parametrize(
    ("host", "port", "pattern"),
    [
        ("payments.internal", None, "payments.internal"),
        ("payments.internal", 443, "payments.internal"),
        ("payments.internal", 8443, "payments.internal:8443"),
        ("PAYMENTS.INTERNAL.", 8443, "payments.internal:8443"),
        ("orders.svc.cluster.local", 80, "*.svc.cluster.local"),
        ("orders.internal", None, "*.internal"),
        ("api.eu.internal", None, "api.*.internal"),
        ("orders.internal", 9000, "*.internal:9000"),
        ("reports.internal", None, "Reports.Internal."),
        ("internal", None, None),
        ("example.com", 443, None),
    ],
)
def test_explain_names_the_pattern_the_mesh_picks_as_written(
    host: str, port: int | None, pattern: str | None
) -> None:
    toml = "".join(
        f"[destinations.{json.dumps(p)}]\nbulkhead = {{ max_concurrent = {n + 1} }}\n"
        for n, p in enumerate(PATTERNS)
    )
    config = parse(toml)
    first, *layers = explain(config, host, port).splitlines()
    where = "default" if pattern is None else f"destinations.{json.dumps(pattern)}"
    assert first.endswith(f" -> {where}")
    expected = config.default if pattern is None else config.destinations[pattern]
    assert Mesh(config.default, config.destinations).policy_for(host, port) == expected
    assert expected.bulkhead is not None
    slots = expected.bulkhead.max_concurrent
    bulkhead = f"  bulkhead   {slots} in flight, no queue  (from {where})"
    if pattern is None:
        bulkhead = "  bulkhead   1000 in flight, no queue  (from STANDARD)"
    assert bulkhead in layers


def test_explain_shows_the_destination_as_given() -> None:
    config = parse("[default]\nretry = false\n")
    assert explain(config, "orders.internal").splitlines()[0] == "orders.internal -> default"
    assert explain(config, "orders.internal", 80).startswith("orders.internal:80 -> default\n")
    assert explain(config, "::1", 8080).startswith("[::1]:8080 -> default\n")
    assert "  retry      off  (from default)" in explain(config, "a").splitlines()


@pytest.mark.parametrize(
    "pattern",
    [
        " Payments.Internal. ",
        "Payments.Internal.:8443",
        "[::1]:8080",
        "*.Internal",
        "fd00::1",
        "x.",
    ],
)
def test_normalise_pattern_is_the_mesh_s(pattern: str) -> None:
    # Duplicates are refused by this normalisation; the Mesh keys its table by its own.
    assert list(Mesh(STANDARD, {pattern: STANDARD}).destinations) == [normalise_pattern(pattern)]


# -- describe ------------------------------------------------------------------------------


def test_describe_shows_each_layer_on_its_own_line_with_units() -> None:
    text = describe(STANDARD)
    lines = text.splitlines()
    assert [line.split()[0] for line in lines] == [
        "retry",
        "timeout",
        "breaker",
        "bulkhead",
        "tracing",
        "endpoints",
        "routes",
        "faults",
        "hedge",
        "fallback",
        "tls",
    ]
    assert lines[0] == (
        "retry      3 attempts; backoff full jitter 50ms..1s; on status 408, 429, 502-504 for "
        "DELETE, GET, HEAD, OPTIONS, PUT, TRACE; Retry-After up to 30s; "
        "budget 20% of calls + 10/s over 10s"
    )
    assert lines[1] == "timeout    total 30s, attempt 10s; header x-envoy-expected-rq-timeout-ms"
    assert lines[2] == (
        "breaker    opens at 50% failures of >= 20 calls over 30s; open 5s; 1 probe; "
        "failures: 429, 500-599"
    )
    assert lines[3] == "bulkhead   1000 in flight, no queue"
    assert lines[4].startswith("tracing    context to mesh; ")


def test_describe_says_off_and_shows_where_layers_come_from() -> None:
    config = parse(FULL_TOML)
    policy = config.destinations["payments.internal:8443"]
    text = describe(policy, config.layer_origins("payments.internal:8443"))
    for line in text.splitlines()[:5]:  # the layers the file names
        assert line.split()[1] == "off"
        assert line.endswith('(from destinations."payments.internal:8443")')
    for line in text.splitlines()[5:]:  # traffic layers are off in STANDARD too
        assert line.split()[1] == "off"
        assert line.endswith("(from STANDARD)")
    detailed = describe(config.default).splitlines()
    assert detailed[0].startswith("retry      4 attempts; backoff equal jitter 100ms..2s; ")
    assert "for GET, PUT; Retry-After up to 20s; budget 30% of calls + 5/s over 30s" in detailed[0]
    assert detailed[1] == "timeout    total 20s, attempt 5.5s; header x-deadline-ms"
    assert detailed[2] == (
        "breaker    opens at 40% failures of >= 8 calls over 1m or 6 in a row; "
        "open 2s doubling up to 90s; 3 probes; failures: 500, 502-503"
    )
    assert detailed[3] == "bulkhead   64 in flight, 16 queued"
    assert "headers captured: x-request-id" in detailed[4]
    no_budget = describe(Policy(retry=Retry(attempts=1, budget=None), timeout=Timeout(None)))
    assert "1 attempt; " in no_budget
    assert "no retry budget" in no_budget
    assert "no total, no per-attempt bound" in no_budget


def test_describe_renders_layers_it_does_not_know_by_their_fields() -> None:
    from meshlib._explain import _generic

    hedge = _Hedge(delay=0.02, legs=(_Leg("a", 0.5),))
    assert _generic(hedge) == "delay 20ms, max_extra 1, legs [(to a, weight 0.5, headers off)]"
    assert _generic(_Leg("b", headers={"x": "1"})) == "to b, weight off, headers x=1"


@pytest.mark.parametrize(
    "text",
    ['[default.endpoints]\naddresses = ["10.0.0.1:80"]\n', "[default]\nroutes = []\n"],
)
def test_endpoints_and_routes_under_default_name_the_file_and_field(text: str) -> None:
    layer = "endpoints" if "endpoints" in text else "routes"
    with pytest.raises(ConfigError) as caught:
        parse(text)
    assert str(caught.value).startswith(f"mesh.toml: default.{layer}: ")
    assert "destination" in str(caught.value)


def test_endpoint_weights_in_the_file_read_and_write_back() -> None:
    from meshlib._snapshot import policy_toml

    config = parse(
        '[destinations."orders.internal".endpoints]\n'
        'addresses = { "10.0.1.1:8080" = 3, "10.0.1.2:8080" = 1 }\n'
        'balance = "round_robin"\n'
    )
    endpoints = config.destinations["orders.internal"].endpoints
    assert endpoints == meshlib.Endpoints(
        {"10.0.1.1:8080": 3, "10.0.1.2:8080": 1}, balance="round_robin"
    )
    written = policy_toml(config.destinations["orders.internal"], "orders.internal")
    assert "weights = [3.0, 1.0]" in written
    assert parse(written).destinations["orders.internal"] == config.destinations["orders.internal"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'addresses = { "10.0.1.1:8080" = 0 }',
            'mesh.toml: destinations."orders.internal".endpoints.addresses: '
            "expected positive weights (numbers), got 0",
        ),
        (
            'addresses = { "10.0.1.1:8080" = "heavy" }',
            'mesh.toml: destinations."orders.internal".endpoints.addresses: '
            "expected positive weights (numbers), got 'heavy'",
        ),
        (
            'addresses = ["10.0.1.1:8080", "10.0.1.2:8080"]\nweights = [1]',
            'mesh.toml: destinations."orders.internal".endpoints.weights: '
            "expected one weight per address (2 addresses), got [1]",
        ),
    ],
)
def test_bad_endpoint_weights_in_the_file_name_the_file_and_field(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(f'[destinations."orders.internal".endpoints]\n{text}\n')
    assert str(caught.value) == message
