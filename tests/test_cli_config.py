"""`meshlib check` and `meshlib explain`: the policy file from the command line."""

from __future__ import annotations

import importlib.metadata
import io
import subprocess
import sys
from pathlib import Path

import pytest

from meshlib._cli import main

FLEET = """\
[default]
retry = { attempts = 3 }
timeout = { total = "30s", attempt = "10s" }
bulkhead = false

[destinations."payments.internal"]
retry = { attempts = 2 }
timeout = { total = "5s" }

[destinations."payments.internal:8443"]
retry = false

[destinations."*.svc.cluster.local"]
timeout = { total = "10s", attempt = "3s" }
"""


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    path = tmp_path / "mesh.toml"
    path.write_text(FLEET)
    return path


@pytest.fixture
def bad(tmp_path: Path) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text('[destinations."payments.internal"]\nretry = { attempts = 0 }\n')
    return path


def test_check_a_good_file(fleet: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(fleet)]) == 0
    captured = capsys.readouterr()
    assert captured.out == f"{fleet}: ok (3 destinations)\n"
    assert captured.err == ""


def test_check_counts_one_destination_in_the_singular(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "one.json"
    path.write_text('{"destinations": {"a.internal": {"retry": false}}}')
    assert main(["check", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}: ok (1 destination)\n"


def test_check_a_bad_file_exits_1_with_the_reason(
    bad: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", str(bad)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f'{bad}: destinations."payments.internal".retry.attempts: '
        "expected an int >= 1 (it counts the first call), got 0\n"
    )


def test_check_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.toml"
    assert main(["check", str(missing)]) == 1
    assert capsys.readouterr().err == (
        f"{missing}: cannot read the policy file: No such file or directory\n"
    )


def test_check_a_syntax_error_names_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[default]\nretry = { attempts = 2\n")
    assert main(["check", str(path)]) == 1
    assert capsys.readouterr().err.startswith(f"{path}, line 2, column 23: invalid TOML: ")


def test_check_several_files_fails_if_any_does(
    fleet: Path, bad: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", str(fleet), str(bad)]) == 1
    captured = capsys.readouterr()
    assert captured.out == f"{fleet}: ok (3 destinations)\n"
    assert captured.err.startswith(f"{bad}: ")


def test_check_needs_a_file(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["check"])
    assert exited.value.code == 2
    assert "FILE" in capsys.readouterr().err


def test_explain_an_exact_host(fleet: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", str(fleet), "payments.internal"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f'{fleet}: payments.internal -> destinations."payments.internal"'
    assert lines[1].startswith("  retry      2 attempts; backoff full jitter 50ms..1s; ")
    assert lines[1].endswith('(from destinations."payments.internal")')
    assert lines[2] == (
        "  timeout    total 5s, no per-attempt bound; header x-envoy-expected-rq-timeout-ms"
        '  (from destinations."payments.internal")'
    )
    assert lines[3].endswith("(from STANDARD)")
    assert lines[4] == "  bulkhead   off  (from default)"
    assert len(lines) == 12  # the header line and one per layer


def test_explain_a_host_and_port(fleet: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", str(fleet), "payments.internal:8443"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith(' payments.internal:8443 -> destinations."payments.internal:8443"')
    assert lines[1] == '  retry      off  (from destinations."payments.internal:8443")'
    assert lines[2].startswith("  timeout    total 30s, attempt 10s;")  # the default's


def test_explain_a_url_fills_in_the_default_port(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["explain", str(fleet), "https://Payments.Internal./pay?x=1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f'{fleet}: payments.internal:443 -> destinations."payments.internal"\n')


def test_explain_a_glob(fleet: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", str(fleet), "ledger.svc.cluster.local"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f'{fleet}: ledger.svc.cluster.local -> destinations."*.svc.cluster.local"'
    assert lines[1].startswith("  retry      3 attempts;")
    assert lines[1].endswith("(from default)")
    assert lines[2] == (
        "  timeout    total 10s, attempt 3s; header x-envoy-expected-rq-timeout-ms"
        '  (from destinations."*.svc.cluster.local")'
    )


def test_explain_the_default(fleet: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", str(fleet), "orders.internal"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{fleet}: orders.internal -> default"
    assert lines[1].endswith("(from default)")
    assert lines[3].endswith("(from STANDARD)")
    assert lines[4] == "  bulkhead   off  (from default)"


def test_explain_an_ipv6_literal(fleet: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", str(fleet), "[::1]:8080"]) == 0
    assert capsys.readouterr().out.startswith(f"{fleet}: [::1]:8080 -> default\n")


def test_explain_a_bad_file_exits_1_with_the_reason(
    bad: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["explain", str(bad), "payments.internal"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f'{bad}: destinations."payments.internal".retry.attempts: ')


@pytest.mark.parametrize(
    "destination",
    [
        "orders.internal:http",
        "orders.internal:99999",
        "orders.internal:0",
        ":80",
        "a:",
        "bad host!",
        "[::1",
        "[::1]8080",
        "[nope]:80",
        "ftp://x.internal/",
        "http://bad host/",
    ],
)
def test_explain_refuses_a_destination_that_is_not_one(
    fleet: Path, destination: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["explain", str(fleet), destination])
    assert exited.value.code == 2
    assert "not a" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("destination", "reason"),
    [
        ("bad host!", "not a host name or IP address: 'bad host!'"),
        ("[::1", "not a host[:port]: '[::1'"),
        ("ftp://x.internal/", "not an http or https URL: 'ftp://x.internal/'"),
    ],
)
def test_explain_says_why_a_destination_is_not_one_without_a_traceback(
    fleet: Path, destination: str, reason: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "meshlib", "explain", str(fleet), destination],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines()[-1] == f"meshlib: error: {reason}"
    assert "Traceback" not in done.stderr


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
def test_check_reports_a_pattern_that_can_never_match(
    tmp_path: Path, pattern: str, problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "mesh.toml"
    path.write_text(f'[destinations."{pattern}"]\nretry = false\n')
    assert main(["check", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f'{path}: destinations."{pattern}": expected {problem}, got {pattern!r}\n'
    )


def test_check_from_the_installed_command(fleet: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "meshlib", "check", str(fleet)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout, done.stderr) == (
        0,
        f"{fleet}: ok (3 destinations)\n",
        "",
    )


def test_the_fleet_example_checks(capsys: pytest.CaptureFixture[str]) -> None:
    example = Path(__file__).resolve().parent.parent / "examples" / "fleet" / "mesh.toml"
    assert main(["check", str(example)]) == 0
    assert capsys.readouterr().out == f"{example}: ok (6 destinations)\n"


def feed_stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))


def test_version_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"meshlib {importlib.metadata.version('meshlib')}\n"


def test_check_dash_reads_toml_from_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    feed_stdin(monkeypatch, FLEET.encode())
    assert main(["check", "-"]) == 0
    assert capsys.readouterr().out == "<stdin>: ok (3 destinations)\n"


@pytest.mark.parametrize("prefix", [b"", b"\xef\xbb\xbf", b"\n  "])
def test_check_dash_takes_a_document_that_starts_with_a_brace_as_json(
    prefix: bytes, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    feed_stdin(monkeypatch, prefix + b'{"destinations": {"a.internal": {"retry": false}}}')
    assert main(["check", "-"]) == 0
    assert capsys.readouterr().out == "<stdin>: ok (1 destination)\n"


def test_check_dash_refuses_a_bad_document_naming_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    feed_stdin(monkeypatch, b"[default]\nretry = { attempts = 0 }\n")
    assert main(["check", "-"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "<stdin>: default.retry.attempts: expected an int >= 1 (it counts the first call), got 0\n"
    )


def test_check_dash_from_the_installed_command(fleet: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "meshlib", "check", "-"],
        input=FLEET,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "<stdin>: ok (3 destinations)\n", "")


def test_explain_dash_reads_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    feed_stdin(monkeypatch, FLEET.encode())
    assert main(["explain", "-", "payments.internal"]) == 0
    out = capsys.readouterr().out
    assert out.startswith('<stdin>: payments.internal -> destinations."payments.internal"\n')


CANARY = """\
[destinations."orders.internal"]
routes = [
  { to = "orders-v2.internal", headers = { "x-canary" = "1" } },
  { to = "orders-v2.internal", weight = 0.05, sticky = "x-user-id" },
  { to = "orders-v3.internal", headers = { "x-beta" = "yes", "x-region" = "eu" }, weight = 0.5 },
  { to = "orders-v1.internal" },
]
tracing = { redact_query = ["token"] }
"""


def test_explain_prints_routes_in_words(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "canary.toml"
    path.write_text(CANARY)
    assert main(["explain", str(path), "orders.internal"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert lines["routes"] == (
        "  routes     x-canary: 1 -> orders-v2.internal; "
        "5% (sticky on x-user-id) -> orders-v2.internal; "
        "x-beta: yes, x-region: eu 50% of those -> orders-v3.internal; "
        "every request -> orders-v1.internal"
        '  (from destinations."orders.internal")'
    )


def test_explain_counts_one_query_name_in_the_singular(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "canary.toml"
    path.write_text(CANARY)
    assert main(["explain", str(path), "orders.internal"]) == 0
    assert "; 1 query name redacted; " in capsys.readouterr().out


def test_check_reads_stdin_only_once(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["check", "-", "-"])
    assert exited.value.code == 2
    assert "- (standard input) may be given only once" in capsys.readouterr().err
