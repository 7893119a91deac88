"""Policy values: STANDARD's numbers, immutability, replace(), durations and validation."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider

import meshlib
from meshlib import STANDARD, Backoff, Budget, ConfigError, Policy, Retry, Timeout, Tracing

# --- STANDARD and the defaults ----------------------------------------------------------


def test_policy_with_no_arguments_equals_standard() -> None:
    assert Policy() == STANDARD
    assert hash(Policy()) == hash(STANDARD)


def test_standard_retry_values_match_the_design_table() -> None:
    retry = STANDARD.retry
    assert retry is not None
    assert retry.attempts == 3
    assert retry.backoff.jitter == "full"
    assert retry.backoff.base == 0.05
    assert retry.backoff.cap == 1.0
    assert retry.retry_after_cap == 30.0


def test_standard_budget_values_match_the_design_table() -> None:
    assert STANDARD.retry is not None
    budget = STANDARD.retry.budget
    assert budget is not None
    assert budget.ratio == 0.2
    assert budget.min_per_second == 10.0
    assert budget.ttl == 10.0


def test_standard_timeout_values_match_the_design_table() -> None:
    timeout = STANDARD.timeout
    assert timeout is not None
    assert timeout.total == 30.0
    assert timeout.attempt == 10.0


def test_standard_retries_the_design_statuses_and_idempotent_methods() -> None:
    assert STANDARD.retry is not None
    assert STANDARD.retry.on_status == frozenset({408, 429, 502, 503, 504})
    assert STANDARD.retry.methods == frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


def test_timeout_attempt_defaults_to_none_unlike_standard() -> None:
    assert Timeout().attempt is None
    assert STANDARD.timeout is not None
    assert STANDARD.timeout.attempt == 10.0
    assert Timeout().total == STANDARD.timeout.total
    # Every other field of Timeout() is STANDARD's.
    assert dataclasses.replace(Timeout(), attempt=10.0) == STANDARD.timeout


def test_layers_built_with_no_arguments_take_standard_values() -> None:
    assert STANDARD.retry is not None
    assert Retry() == STANDARD.retry
    assert Backoff() == STANDARD.retry.backoff
    assert Budget() == STANDARD.retry.budget
    assert Policy(retry=Retry()) == STANDARD


# --- Frozen values ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "field"),
    [
        (STANDARD, "retry"),
        (STANDARD, "timeout"),
        (Retry(), "attempts"),
        (Backoff(), "base"),
        (Budget(), "ratio"),
        (Timeout(), "total"),
    ],
)
def test_policy_values_are_frozen(value: object, field: str) -> None:
    before = getattr(value, field)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(value, field, None)
    assert getattr(value, field) == before


def test_standard_cannot_be_modified_in_place() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        STANDARD.retry = None  # type: ignore[misc]
    assert Policy() == STANDARD


# --- replace() -------------------------------------------------------------------------


def test_replace_returns_a_new_policy_and_leaves_the_original_alone() -> None:
    faster = STANDARD.replace(timeout=Timeout(total=2.0))
    assert faster is not STANDARD
    assert faster.timeout == Timeout(total=2.0)
    assert faster.retry == STANDARD.retry
    assert STANDARD.timeout == Timeout(total=30.0, attempt=10.0)


def test_replace_with_the_same_values_is_equal_by_value() -> None:
    assert STANDARD.retry is not None
    same = STANDARD.replace(retry=Retry(), timeout=Timeout(total=30.0, attempt=10.0))
    assert same is not STANDARD
    assert same == STANDARD
    assert hash(same) == hash(STANDARD)


@pytest.mark.parametrize("layer", ["retry", "timeout"])
def test_replace_with_none_switches_a_layer_off(layer: str) -> None:
    off = STANDARD.replace(**{layer: None})
    assert getattr(off, layer) is None
    assert off != STANDARD
    assert getattr(STANDARD, layer) is not None


def test_replace_with_an_unknown_layer_names_it() -> None:
    with pytest.raises(ConfigError, match="retries"):
        STANDARD.replace(retries=None)


def test_replace_suggests_the_closest_layer() -> None:
    with pytest.raises(ConfigError) as caught:
        STANDARD.replace(retries=None)
    assert str(caught.value) == (
        "Policy.replace: unknown layer 'retries'; layers: retry, timeout, breaker, bulkhead, "
        "tracing, endpoints, routes, faults, hedge, fallback, tls (did you mean 'retry'?)"
    )


def test_an_unknown_keyword_to_policy_is_the_config_error_replace_gives() -> None:
    with pytest.raises(ConfigError) as built:
        Policy(retries=Retry())  # type: ignore[call-arg]
    with pytest.raises(ConfigError) as replaced:
        STANDARD.replace(retries=Retry())
    assert str(built.value) == str(replaced.value).replace("Policy.replace:", "Policy:", 1)
    assert "(did you mean 'retry'?)" in str(built.value)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: Retry(attemps=2),
            "Retry: unknown setting 'attemps'; allowed: attempts, backoff, on_status, methods,"
            " retry_after_cap, budget, on_error (did you mean 'attempts'?)",
        ),
        (
            lambda: Backoff(jiter="full"),
            "Backoff: unknown setting 'jiter'; allowed: base, cap, jitter (did you mean 'jitter'?)",
        ),
        (lambda: Timeout(totl=1), "Timeout: unknown setting 'totl'"),
        (lambda: meshlib.Breaker(ratio=0.5), "Breaker: unknown setting 'ratio'"),
        (lambda: meshlib.Bulkhead(max_concurrency=5), "Bulkhead: unknown setting"),
        (lambda: Budget(percent=5), "Budget: unknown setting 'percent'"),
        (lambda: Tracing(propagate=()), "Tracing: unknown setting 'propagate'"),
        (lambda: meshlib.Endpoints(["a:1"], balancer="p2c"), "Endpoints: unknown setting"),
        (lambda: meshlib.Ejection(consecutive_5xx=5), "Ejection: unknown setting"),
        (lambda: meshlib.Route(to="b", host="c"), "Route: unknown setting 'host'"),
        (lambda: meshlib.Faults(percent=1), "Faults: unknown setting 'percent'"),
        (lambda: meshlib.Hedge(after=1), "Hedge: unknown setting 'after'"),
    ],
)
def test_an_unknown_keyword_to_a_layer_is_a_config_error_listing_its_settings(
    build: Callable[[], Any], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        build()
    assert str(caught.value).startswith(message)
    assert not isinstance(caught.value, TypeError)


def test_layer_signatures_still_show_their_fields() -> None:
    # For help() and editors: the check on keywords does not hide the dataclass's signature.
    import inspect

    assert list(inspect.signature(Retry).parameters)[:2] == ["attempts", "backoff"]
    assert "retry" in inspect.signature(Policy).parameters


def test_opentelemetry_sdk_providers_are_taken() -> None:
    tracer_provider, meter_provider = TracerProvider(), MeterProvider()
    tracing = Tracing(tracer_provider=tracer_provider, meter_provider=meter_provider)
    assert (tracing.tracer_provider, tracing.meter_provider) == (tracer_provider, meter_provider)


def test_methods_are_rfc_9110_tokens_stored_upper_cased() -> None:
    # A method is a token (RFC 9110 section 9.1): digits and "-" are allowed, so
    # M-SEARCH (UPnP) and VERSION-CONTROL (WebDAV) are methods; httpx upper-cases a
    # request's method, so a name is stored upper-cased to match it.
    assert Retry(methods=["get", "M-SEARCH", "P0ST", "Version-Control"]).methods == {
        "GET",
        "M-SEARCH",
        "P0ST",
        "VERSION-CONTROL",
    }
    for bad in ["GE T", "", "GET\n", "GÉT", "GET/1", "(GET)"]:
        with pytest.raises(ConfigError) as caught:
            Retry(methods=[bad])
        assert str(caught.value) == (
            f"Retry.methods: expected HTTP method names (RFC 9110 tokens such as 'GET'), "
            f"got {bad!r}"
        )


def test_replace_validates_the_new_value() -> None:
    with pytest.raises(ConfigError, match=r"Policy\.timeout"):
        STANDARD.replace(timeout=5.0)


# --- Durations: float seconds or timedelta ---------------------------------------------


def test_timedelta_accepted_for_backoff() -> None:
    backoff = Backoff(base=timedelta(milliseconds=50), cap=timedelta(seconds=1))
    assert backoff == Backoff(base=0.05, cap=1.0)
    assert backoff.base == 0.05
    assert backoff.cap == 1.0


def test_timedelta_accepted_for_retry_after_cap() -> None:
    assert Retry(retry_after_cap=timedelta(seconds=30)) == Retry(retry_after_cap=30.0)
    assert Retry(retry_after_cap=timedelta(minutes=2)).retry_after_cap == 120.0


def test_timedelta_accepted_for_budget_ttl() -> None:
    assert Budget(ttl=timedelta(seconds=10)) == Budget(ttl=10.0)
    assert Budget(ttl=timedelta(milliseconds=1500)).ttl == 1.5


def test_timedelta_accepted_for_timeouts() -> None:
    timeout = Timeout(total=timedelta(seconds=30), attempt=timedelta(seconds=10))
    assert timeout == Timeout(total=30.0, attempt=10.0)
    assert Policy(timeout=timeout) == STANDARD


def test_durations_are_stored_as_float_seconds() -> None:
    timeout = Timeout(total=timedelta(minutes=1), attempt=2)
    assert isinstance(timeout.total, float)
    assert isinstance(timeout.attempt, float)
    assert (timeout.total, timeout.attempt) == (60.0, 2.0)


# --- Hashing -----------------------------------------------------------------------------


def test_policies_are_usable_as_dict_keys() -> None:
    built_twice = [
        Policy(retry=Retry(attempts=2), timeout=Timeout(total=5.0)),
        Policy(retry=Retry(attempts=2), timeout=Timeout(total=timedelta(seconds=5))),
    ]
    assert built_twice[0] is not built_twice[1]
    table = {built_twice[0]: "strict", STANDARD: "standard"}
    assert table[built_twice[1]] == "strict"
    assert table[Policy()] == "standard"
    assert hash(built_twice[0]) == hash(built_twice[1])


def test_policies_with_different_values_are_distinct_keys() -> None:
    table = {
        STANDARD: 1,
        STANDARD.replace(retry=None): 2,
        STANDARD.replace(retry=Retry(on_status=[503])): 3,
    }
    assert len(table) == 3
    assert table[Policy(retry=Retry(on_status={503}))] == 3


def test_collections_are_normalised_so_equal_settings_compare_equal() -> None:
    assert Retry(on_status=[503, 502, 503]) == Retry(on_status=(502, 503))
    assert Retry(methods=["get", "Put"]) == Retry(methods={"GET", "PUT"})
    assert hash(Retry(methods=["get"])) == hash(Retry(methods=("GET",)))


# --- Zero is a value, not "use the default" ----------------------------------------------


def test_zero_backoff_is_kept() -> None:
    backoff = Backoff(base=0, cap=0)
    assert backoff.base == 0.0
    assert backoff.cap == 0.0
    assert backoff != Backoff()


def test_zero_budget_ratio_and_reserve_are_kept() -> None:
    budget = Budget(ratio=0, min_per_second=0)
    assert budget.ratio == 0.0
    assert budget.min_per_second == 0.0


def test_zero_retry_after_cap_is_kept() -> None:
    assert Retry(retry_after_cap=0).retry_after_cap == 0.0


def test_empty_collections_are_kept() -> None:
    retry = Retry(on_status=[], methods=[])
    assert retry.on_status == frozenset()
    assert retry.methods == frozenset()


def test_one_attempt_and_no_budget_are_kept() -> None:
    retry = Retry(attempts=1, budget=None)
    assert retry.attempts == 1
    assert retry.budget is None


def test_timeout_without_any_bound_is_allowed() -> None:
    timeout = Timeout(total=None, attempt=None)
    assert timeout.total is None
    assert timeout.attempt is None
    assert Timeout(total=None, attempt=5.0).attempt == 5.0


# --- Validation table ------------------------------------------------------------------

NAN = math.nan
INF = math.inf

BAD_VALUES: list[tuple[str, Callable[[], Any], str, object]] = [
    # id, constructor, field named in the message, the bad value whose repr it shows
    ("attempts-0", lambda: Retry(attempts=0), "Retry.attempts", 0),
    ("attempts-negative", lambda: Retry(attempts=-1), "Retry.attempts", -1),
    ("attempts-float", lambda: Retry(attempts=1.5), "Retry.attempts", 1.5),
    ("attempts-bool", lambda: Retry(attempts=True), "Retry.attempts", True),
    ("attempts-str", lambda: Retry(attempts="3"), "Retry.attempts", "3"),
    ("base-negative", lambda: Backoff(base=-1), "Backoff.base", -1),
    ("base-nan", lambda: Backoff(base=NAN), "Backoff.base", NAN),
    ("base-inf", lambda: Backoff(base=INF), "Backoff.base", INF),
    ("base-str", lambda: Backoff(base="x"), "Backoff.base", "x"),
    ("cap-below-base", lambda: Backoff(base=2.0, cap=1.5), "Backoff.cap", 1.5),
    ("cap-nan", lambda: Backoff(cap=NAN), "Backoff.cap", NAN),
    ("jitter-typo", lambda: Backoff(jitter="fulll"), "Backoff.jitter", "fulll"),
    ("jitter-none", lambda: Backoff(jitter=None), "Backoff.jitter", None),
    ("jitter-list", lambda: Backoff(jitter=["full"]), "Backoff.jitter", ["full"]),
    ("on-status-99", lambda: Retry(on_status=[99]), "Retry.on_status", 99),
    ("on-status-600", lambda: Retry(on_status=[600]), "Retry.on_status", 600),
    ("on-status-str", lambda: Retry(on_status="503"), "Retry.on_status", "503"),
    ("on-status-bool", lambda: Retry(on_status=[True]), "Retry.on_status", True),
    ("on-status-none", lambda: Retry(on_status=None), "Retry.on_status", None),
    ("on-status-nested", lambda: Retry(on_status=[[503]]), "Retry.on_status", [503]),
    ("methods-space", lambda: Retry(methods=["G E T"]), "Retry.methods", "G E T"),
    ("methods-str", lambda: Retry(methods="GET"), "Retry.methods", "GET"),
    ("methods-bytes", lambda: Retry(methods=[b"GET"]), "Retry.methods", b"GET"),
    ("retry-after-cap", lambda: Retry(retry_after_cap=-1), "Retry.retry_after_cap", -1),
    ("backoff-type", lambda: Retry(backoff=0.5), "Retry.backoff", 0.5),
    ("budget-type", lambda: Retry(budget=0.2), "Retry.budget", 0.2),
    ("ratio-negative", lambda: Budget(ratio=-0.1), "Budget.ratio", -0.1),
    ("ratio-nan", lambda: Budget(ratio=NAN), "Budget.ratio", NAN),
    ("min-per-second", lambda: Budget(min_per_second=-1), "Budget.min_per_second", -1),
    ("ttl-zero", lambda: Budget(ttl=0), "Budget.ttl", 0),
    ("total-zero", lambda: Timeout(total=0), "Timeout.total", 0),
    ("total-negative", lambda: Timeout(total=-1), "Timeout.total", -1),
    ("total-nan", lambda: Timeout(total=NAN), "Timeout.total", NAN),
    ("total-inf", lambda: Timeout(total=INF), "Timeout.total", INF),
    ("attempt-zero", lambda: Timeout(attempt=0), "Timeout.attempt", 0),
    ("attempt-over-total", lambda: Timeout(total=5.0, attempt=7.5), "Timeout.attempt", 7.5),
    ("policy-retry", lambda: Policy(retry="x"), "Policy.retry", "x"),
    ("policy-timeout", lambda: Policy(timeout=3), "Policy.timeout", 3),
    ("tracer-provider", lambda: Tracing(tracer_provider=1), "Tracing.tracer_provider", 1),
    ("meter-provider", lambda: Tracing(meter_provider="x"), "Tracing.meter_provider", "x"),
    (
        "meter-as-tracer",
        lambda: Tracing(tracer_provider=MeterProvider()),
        "Tracing.tracer_provider",
        "<opentelemetry.sdk.metrics",
    ),
]


@pytest.mark.parametrize(
    ("build", "field", "bad"),
    [pytest.param(build, field, bad, id=name) for name, build, field, bad in BAD_VALUES],
)
def test_bad_value_raises_config_error_naming_field_and_value(
    build: Callable[[], Any], field: str, bad: object
) -> None:
    with pytest.raises(ConfigError) as caught:
        build()
    message = str(caught.value)
    assert field in message
    assert (bad if isinstance(bad, str) and bad.startswith("<") else repr(bad)) in message


def test_config_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=r"Retry\.attempts"):
        Retry(attempts=0)
    assert issubclass(meshlib.ConfigError, ValueError)
