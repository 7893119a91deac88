"""Mesh: which policy a destination gets, and the state it shares per destination."""

from __future__ import annotations

import pathlib

import httpx
import pytest

from meshlib import STANDARD, Budget, ConfigError, Mesh, Policy, Retry, Timeout


def policy(attempts: int) -> Policy:
    """A policy told apart from the others by its attempts."""
    return Policy(retry=Retry(attempts=attempts))


DEFAULT = policy(1)
HOST_PORT = policy(2)
HOST = policy(3)
SHORT_GLOB = policy(4)
LONG_GLOB = policy(5)


@pytest.fixture
def mesh() -> Mesh:
    return Mesh(
        default=DEFAULT,
        destinations={
            "api.internal:8443": HOST_PORT,
            "api.internal": HOST,
            "*.internal": SHORT_GLOB,
            "*.svc.internal": LONG_GLOB,
        },
    )


# --- policy_for ------------------------------------------------------------------------------


def test_host_and_port_beats_host(mesh: Mesh) -> None:
    assert mesh.policy_for("api.internal", 8443) is HOST_PORT


def test_host_beats_glob(mesh: Mesh) -> None:
    assert mesh.policy_for("api.internal", 80) is HOST
    assert mesh.policy_for("api.internal") is HOST


def test_longest_glob_wins(mesh: Mesh) -> None:
    assert mesh.policy_for("orders.svc.internal", 80) is LONG_GLOB
    assert mesh.policy_for("orders.internal", 80) is SHORT_GLOB


def test_longest_glob_wins_whatever_the_order_given() -> None:
    reversed_order = Mesh(
        default=DEFAULT, destinations={"*.svc.internal": LONG_GLOB, "*.internal": SHORT_GLOB}
    )
    assert reversed_order.policy_for("orders.svc.internal") is LONG_GLOB
    given_order = Mesh(
        default=DEFAULT, destinations={"*.internal": SHORT_GLOB, "*.svc.internal": LONG_GLOB}
    )
    assert given_order.policy_for("orders.svc.internal") is LONG_GLOB


def test_unmatched_hosts_get_the_default(mesh: Mesh) -> None:
    assert mesh.policy_for("example.com", 443) is DEFAULT
    assert mesh.policy_for("internal", 80) is DEFAULT


def test_a_mesh_without_arguments_gives_standard() -> None:
    assert Mesh().policy_for("anything.example", 443) == STANDARD


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        ("API.Internal", 8443, HOST_PORT),
        ("api.internal.", 8443, HOST_PORT),
        ("API.INTERNAL.", None, HOST),
        ("Orders.SVC.internal.", 80, LONG_GLOB),
    ],
)
def test_matching_ignores_case_and_a_trailing_dot(
    mesh: Mesh, host: str, port: int | None, expected: Policy
) -> None:
    assert mesh.policy_for(host, port) is expected


def test_patterns_are_case_and_trailing_dot_insensitive() -> None:
    shouting = Mesh(default=DEFAULT, destinations={"API.Internal.": HOST, "*.SVC.Local": LONG_GLOB})
    assert shouting.policy_for("api.internal") is HOST
    assert shouting.policy_for("orders.svc.local") is LONG_GLOB


def test_host_and_port_patterns_ignore_a_trailing_dot_on_the_host() -> None:
    fqdn = Mesh(default=DEFAULT, destinations={"API.internal.:8443": HOST_PORT})
    assert fqdn.policy_for("api.internal", 8443) is HOST_PORT
    assert fqdn.policy_for("api.internal.", 8443) is HOST_PORT


@pytest.mark.parametrize("value", ["strict", None, 3, Retry()])
def test_a_destination_value_that_is_not_a_policy_is_refused(value: object) -> None:
    with pytest.raises(ConfigError, match=r"payments\.internal"):
        Mesh(destinations={"payments.internal": value})  # type: ignore[dict-item]


@pytest.mark.parametrize("pattern", ["", "   "])
def test_an_empty_pattern_is_refused(pattern: str) -> None:
    with pytest.raises(ConfigError, match="pattern"):
        Mesh(destinations={pattern: STANDARD})


def test_a_default_that_is_not_a_policy_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"Mesh\.default"):
        Mesh(default=Retry())  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "100"])
def test_max_destinations_must_be_a_positive_int(bad: object) -> None:
    with pytest.raises(ConfigError, match="max_destinations"):
        Mesh(max_destinations=bad)  # type: ignore[arg-type]


# --- route ---------------------------------------------------------------------------------


def test_the_same_destination_and_policy_give_the_same_route() -> None:
    mesh = Mesh()
    first = mesh._plans.for_url(STANDARD, httpx.URL("http://orders.internal/a"))
    second = mesh._plans.for_url(STANDARD, httpx.URL("http://orders.internal/b?page=2"))
    assert first is second
    assert first.policy is STANDARD


def test_a_route_without_a_policy_takes_the_mesh_policy(mesh: Mesh) -> None:
    route = mesh._plans.for_url(None, httpx.URL("https://api.internal:8443/v1"))
    assert route.policy is HOST_PORT
    assert mesh._plans.for_url(None, httpx.URL("https://example.com/")).policy is DEFAULT


def test_different_hosts_get_different_budgets() -> None:
    mesh = Mesh()
    a = mesh._plans.for_url(STANDARD, httpx.URL("http://a.internal/"))
    b = mesh._plans.for_url(STANDARD, httpx.URL("http://b.internal/"))
    assert a.budget is not None
    assert b.budget is not None
    assert a.budget is not b.budget


def test_different_ports_and_schemes_get_different_budgets() -> None:
    mesh = Mesh()
    budgets = [
        mesh._plans.for_url(STANDARD, httpx.URL(url)).budget
        for url in ("http://a.internal/", "http://a.internal:8080/", "https://a.internal/")
    ]
    assert len({id(budget) for budget in budgets}) == 3


def test_equal_policies_share_a_destination_budget() -> None:
    mesh = Mesh()
    one = Policy(retry=Retry(budget=Budget(ratio=0.1)))
    other = Policy(retry=Retry(budget=Budget(ratio=0.1)), timeout=Timeout(total=5.0))
    assert one is not other
    url = httpx.URL("http://orders.internal/")
    assert mesh._plans.for_url(one, url).budget is mesh._plans.for_url(other, url).budget


def test_different_budget_settings_get_their_own_budget() -> None:
    mesh = Mesh()
    url = httpx.URL("http://orders.internal/")
    loose = Policy(retry=Retry(budget=Budget(ratio=0.5)))
    assert mesh._plans.for_url(STANDARD, url).budget is not mesh._plans.for_url(loose, url).budget


def test_no_budget_when_retries_or_budget_are_off() -> None:
    mesh = Mesh()
    url = httpx.URL("http://orders.internal/")
    assert mesh._plans.for_url(STANDARD.replace(retry=None), url).budget is None
    assert mesh._plans.for_url(Policy(retry=Retry(budget=None)), url).budget is None


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("http://a.internal/", "http://a.internal:80/"),
        ("https://a.internal/", "https://a.internal:443/"),
        ("http://A.Internal/", "http://a.internal/"),
        ("http://a.internal./", "http://a.internal/"),
    ],
)
def test_default_ports_case_and_trailing_dot_share_a_budget(one: str, other: str) -> None:
    mesh = Mesh()
    first = mesh._plans.for_url(STANDARD, httpx.URL(one))
    second = mesh._plans.for_url(STANDARD, httpx.URL(other))
    assert first.budget is not None
    assert first.budget is second.budget
    assert first.destination == second.destination


def test_state_is_bounded_by_max_destinations() -> None:
    mesh = Mesh(max_destinations=100)
    for n in range(10_000):
        mesh._plans.for_url(STANDARD, httpx.URL(f"http://host-{n}.internal/"))
    assert len(mesh._plans) <= 100
    assert len(mesh._budgets) <= 100
    # The newest destinations are the ones kept.
    newest = mesh._plans.for_url(STANDARD, httpx.URL("http://host-9999.internal/"))
    assert mesh._plans.for_url(STANDARD, httpx.URL("http://host-9999.internal/x")) is newest


def test_a_destination_in_constant_use_keeps_its_budget() -> None:
    # Eviction is least recently used first: a busy destination is not forgotten
    # (and its budget not refilled) because many others come and go.
    mesh = Mesh(max_destinations=10)
    busy = httpx.URL("http://busy.internal/")
    budget = mesh._plans.for_url(STANDARD, busy).budget
    for n in range(100):
        mesh._plans.for_url(STANDARD, httpx.URL(f"http://passer-{n}.internal/"))
        assert mesh._plans.for_url(STANDARD, busy).budget is budget


def test_reset_forgets_state() -> None:
    mesh = Mesh()
    url = httpx.URL("http://orders.internal/")
    before = mesh._plans.for_url(STANDARD, url)
    assert before.budget is not None
    before.budget.deposit(0.0)
    mesh.reset()
    assert len(mesh._plans) == 0
    assert len(mesh._budgets) == 0
    after = mesh._plans.for_url(STANDARD, url)
    assert after is not before
    assert after.budget is not None
    assert after.budget is not before.budget
    assert after.budget.snapshot(0.0) == (0, 0)


def test_a_busy_destination_keeps_one_budget_for_every_equal_policy() -> None:
    # A long-lived client keeps a destination busy while many others come and go; a
    # second client with an equal policy must still share that destination's budget,
    # or each gets a fresh reserve and the budget no longer bounds retries.
    mesh = Mesh(max_destinations=10)
    busy = httpx.URL("http://busy.internal/")
    long_lived = Policy()
    budget = mesh._plans.for_url(long_lived, busy).budget
    for n in range(100):
        mesh._plans.for_url(long_lived, httpx.URL(f"http://passer-{n}.internal/"))
        assert mesh._plans.for_url(long_lived, busy).budget is budget
    newcomer = Policy()
    assert newcomer is not long_lived
    assert mesh._plans.for_url(newcomer, busy).budget is budget


def test_a_hundred_thousand_hosts_keep_memory_bounded() -> None:
    import gc
    import sys

    mesh = Mesh(max_destinations=1_000)
    for n in range(5_000):  # fill the map and churn it once: the steady state
        mesh._plans.for_url(STANDARD, httpx.URL(f"http://warm-{n}.internal/"))
    gc.collect()
    before = sys.getallocatedblocks()
    for n in range(100_000):
        mesh._plans.for_url(STANDARD, httpx.URL(f"http://host-{n}.internal/"))
    gc.collect()
    grown = sys.getallocatedblocks() - before
    assert len(mesh._plans) == 1_000
    assert len(mesh._breakers) <= 1_000
    assert len(mesh._bulkheads) <= 1_000
    # 95 000 more hosts than the map holds left no trace: under one block per host.
    assert grown < 10_000


def test_destinations_that_are_not_a_mapping_are_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"Mesh\.destinations: expected a mapping.*got list"):
        Mesh(destinations=[("a.internal", STANDARD)])  # type: ignore[arg-type]


def test_two_patterns_that_mean_the_same_host_are_refused() -> None:
    # Kept both, one would silently win; a file refuses the same (test_config).
    with pytest.raises(ConfigError, match=r"'a\.internal\.'.*the same pattern as 'A\.internal'"):
        Mesh(destinations={"A.internal": STANDARD, "a.internal.": STANDARD.replace(retry=None)})


NEVER_MATCH = [
    ("http://a.internal", "a host, not a URL (write 'a.internal', without 'http://')"),
    ("https://a.internal:8443/x", "a host, not a URL (write 'a.internal:8443', without"),
    ("a.internal/x", "a host, not a path (write 'a.internal')"),
    ("a internal", "a host without spaces"),
    ("a.internal:99999", "a port between 1 and 65535"),
    ("a.internal:0", "a port between 1 and 65535"),
    ("a.internal:abc", "a port between 1 and 65535 after ':'"),
    ("a.internal:", "a port between 1 and 65535 after ':'"),
    (":8080", "a host before the port"),
    ("a:b:c", "one ':' before the port"),
    ("user@a.internal", "a host name"),
    ("a.internal,b.internal", "a host name"),
    ("[::1", "an IPv6 address in brackets"),
    ("[fd00::zz]:80", "an IPv6 address in brackets"),
    ("[::1]8080", "'[IPv6]' or '[IPv6]:port'"),
    ("bücher.example", "an ASCII host (write an internationalised name in its IDNA form"),
]


@pytest.mark.parametrize(("pattern", "problem"), NEVER_MATCH)
def test_a_pattern_that_can_never_match_is_refused_where_it_is_given(
    pattern: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        Mesh(destinations={pattern: STANDARD})
    message = str(caught.value)
    assert message.startswith(f"Mesh.destinations[{pattern!r}]: expected {problem}")
    assert message.endswith(f"got {pattern!r}")


def test_update_refuses_a_pattern_that_can_never_match_and_keeps_the_table() -> None:
    mesh = Mesh(destinations={"a.internal": HOST})
    with pytest.raises(ConfigError, match="not a URL"):
        mesh.update(DEFAULT, {"http://b.internal": HOST})
    assert mesh.policy_for("a.internal") is HOST


@pytest.mark.parametrize(
    ("pattern", "host", "port"),
    [
        ("[::1]", "::1", 80),
        ("[fd00::1]:8080", "fd00::1", 8080),
        ("fd00::1", "fd00::1", 80),
        ("10.0.0.1:8080", "10.0.0.1", 8080),
        ("*.internal:8443", "a.internal", 8443),
        ("a.internal:80*", "a.internal", 8080),
        ("[ab]?.internal", "b1.internal", 80),
        ("svc_1.internal", "svc_1.internal", 80),
        ("xn--bcher-kva.example", "xn--bcher-kva.example", 443),
        ("*", "anything", 80),
    ],
)
def test_patterns_that_can_match_are_kept_and_match(pattern: str, host: str, port: int) -> None:
    mesh = Mesh(destinations={pattern: HOST})
    assert mesh.policy_for(host, port) is HOST


def test_a_mesh_s_repr_says_where_its_policies_come_from_and_its_patterns() -> None:
    assert repr(Mesh()) == "<meshlib.Mesh from code: 0 destinations>"
    assert repr(Mesh(destinations={"A.internal.": HOST})) == (
        "<meshlib.Mesh from code: 1 destination (a.internal)>"
    )
    many = Mesh(destinations={f"h{n}.internal": HOST for n in range(7)})
    assert repr(many) == (
        "<meshlib.Mesh from code: 7 destinations (h0.internal, h1.internal, h2.internal, "
        "h3.internal, h4.internal, ...)>"
    )


def test_the_default_mesh_s_repr_says_it_is_the_default() -> None:
    from meshlib._mesh import default_mesh

    assert repr(default_mesh()).startswith("<meshlib.Mesh (the process-wide default) from ")


def test_a_mesh_from_a_file_names_the_file_in_its_repr(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "mesh.toml"
    path.write_text('[destinations."payments.internal"]\nretry = false\n')
    fixed = Mesh.from_file(path, reload=False)
    assert repr(fixed) == f"<meshlib.Mesh from {path}: 1 destination (payments.internal)>"
    followed = Mesh.from_file(path, interval=60)
    try:
        assert repr(followed).startswith(f"<meshlib.Mesh from {path}, followed: 1 destination")
    finally:
        followed.close()
    assert repr(followed).startswith(f"<meshlib.Mesh from {path}: ")
