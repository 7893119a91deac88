"""The public names and the error tree: what users import and catch."""

from __future__ import annotations

import importlib
import importlib.resources
import subprocess
import sys

import httpx
import pytest

import meshlib
import meshlib.testing

# A deliberate change to the public surface edits these lists.
PUBLIC = [
    "AsyncClient",
    "AsyncTransport",
    "Backoff",
    "Breaker",
    "BreakerSnapshot",
    "Budget",
    "Bulkhead",
    "BulkheadFull",
    "BulkheadSnapshot",
    "CircuitOpen",
    "Client",
    "ConfigError",
    "DeadlineExceeded",
    "Ejection",
    "EndpointSnapshot",
    "Endpoints",
    "Fallback",
    "Faults",
    "HeaderMatch",
    "Hedge",
    "Mesh",
    "MeshError",
    "PathExact",
    "PathRegex",
    "Policy",
    "Retry",
    "Route",
    "STANDARD",
    "TLS",
    "Timeout",
    "Tracing",
    "Transport",
    "deadline",
    "default_mesh",
    "remaining",
    "resilient",
    "wrap",
]

TESTING = [
    "Chaos",
    "Close",
    "Drip",
    "FakeClock",
    "FaultServer",
    "Hang",
    "RecordedRequest",
    "Reset",
    "Respond",
    "reset",
    "set_testing",
    "use_clock",
    "use_random",
]


ADMIN = ["Server", "app", "serve"]


def test_public_names_are_pinned() -> None:
    assert sorted(meshlib.__all__) == PUBLIC


def test_testing_names_are_pinned() -> None:
    assert sorted(meshlib.testing.__all__) == TESTING


def test_admin_names_are_pinned() -> None:
    # `import meshlib` is enough: meshlib.admin.serve(mesh) needs no import of its own.
    assert meshlib.admin is importlib.import_module("meshlib.admin")
    assert sorted(meshlib.admin.__all__) == ADMIN
    for name in ADMIN:
        assert callable(getattr(meshlib.admin, name))


def test_all_has_no_duplicates() -> None:
    assert len(set(meshlib.__all__)) == len(meshlib.__all__)
    assert len(set(meshlib.testing.__all__)) == len(meshlib.testing.__all__)


@pytest.mark.parametrize(("module", "name"), [("meshlib", n) for n in PUBLIC])
def test_every_public_name_is_importable(module: str, name: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from {module} import {name}", namespace)
    assert namespace[name] is getattr(importlib.import_module(module), name)


@pytest.mark.parametrize(("module", "name"), [("meshlib.testing", n) for n in TESTING])
def test_every_testing_name_is_importable(module: str, name: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from {module} import {name}", namespace)
    assert namespace[name] is getattr(importlib.import_module(module), name)


# Server code: what needs only the clock must not load it.
_SERVER_MODULES = ("socketserver", "http.server")


def test_importing_meshlib_and_its_clock_loads_no_server_code() -> None:
    # A fresh interpreter: this one has long imported the fault server for other tests.
    script = (
        "import sys\n"
        "import meshlib, meshlib.testing\n"
        "from meshlib.testing import FakeClock, reset, set_testing, use_clock, use_random\n"
        "print(sorted(m for m in sys.modules\n"
        f"             if m in {_SERVER_MODULES!r} or m.startswith('meshlib') and 'fault' in m))\n"
        "from meshlib.testing import FaultServer, Respond\n"
        "import meshlib.testing.faults as faults\n"
        "print(FaultServer is faults.FaultServer and Respond is faults.Respond)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.splitlines() == ["[]", "True"]


def test_public_classes_do_not_leak_private_module_names() -> None:
    for name in PUBLIC:
        value = getattr(meshlib, name)
        if isinstance(value, type):
            assert not value.__name__.startswith("_"), name


# --- The error tree --------------------------------------------------------------------------

REQUEST = httpx.Request("GET", "http://orders.internal/items")


def test_config_error_is_a_mesh_error_and_a_value_error() -> None:
    assert issubclass(meshlib.ConfigError, meshlib.MeshError)
    assert issubclass(meshlib.ConfigError, ValueError)
    with pytest.raises(ValueError, match=r"Retry\.attempts"):
        meshlib.Retry(attempts=0)


def test_deadline_exceeded_is_an_httpx_timeout() -> None:
    error = meshlib.DeadlineExceeded("deadline exceeded", request=REQUEST)
    assert isinstance(error, meshlib.MeshError)
    assert isinstance(error, httpx.TimeoutException)
    assert isinstance(error, httpx.TransportError)
    assert error.request is REQUEST


def test_circuit_open_is_an_httpx_transport_error_with_details() -> None:
    error = meshlib.CircuitOpen("http://orders.internal:80", 2.5, request=REQUEST)
    assert isinstance(error, meshlib.MeshError)
    assert isinstance(error, httpx.TransportError)
    assert error.destination == "http://orders.internal:80"
    assert error.retry_after == 2.5
    assert error.request is REQUEST
    assert "http://orders.internal:80" in str(error)


def test_bulkhead_full_is_an_httpx_transport_error_with_details() -> None:
    error = meshlib.BulkheadFull("http://orders.internal:80", request=REQUEST)
    assert isinstance(error, meshlib.MeshError)
    assert isinstance(error, httpx.TransportError)
    assert error.destination == "http://orders.internal:80"
    assert error.request is REQUEST
    assert "http://orders.internal:80" in str(error)


@pytest.mark.parametrize(
    "error",
    [
        meshlib.CircuitOpen("http://a:80", 1.0, request=REQUEST),
        meshlib.BulkheadFull("http://a:80", request=REQUEST),
        meshlib.DeadlineExceeded("late", request=REQUEST),
    ],
    ids=["CircuitOpen", "BulkheadFull", "DeadlineExceeded"],
)
def test_existing_httpx_handlers_catch_meshlib_errors(error: Exception) -> None:
    with pytest.raises(httpx.TransportError) as caught:
        raise error
    assert caught.value.request is REQUEST
    with pytest.raises(httpx.HTTPError):
        raise error


def test_errors_are_not_config_errors() -> None:
    for error_type in (meshlib.CircuitOpen, meshlib.BulkheadFull, meshlib.DeadlineExceeded):
        assert not issubclass(error_type, ValueError)
        assert not issubclass(error_type, meshlib.ConfigError)


# --- Packaging -------------------------------------------------------------------------------


def test_py_typed_ships_with_the_package() -> None:
    marker = importlib.resources.files("meshlib").joinpath("py.typed")
    assert marker.is_file()
