"""The status page in a real browser: Debian's headless Chromium, driven by Selenium.

The page is for a person at 3 a.m., so it is tested where that person meets it:
the failing destination on top with its breaker open, and the page following
the upstream's recovery by itself, without a reload. CI installs the browser
(``.ci/run``); without it this test fails, naming what to install.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import meshlib
from meshlib.testing import FaultServer, Respond

pytestmark = pytest.mark.network

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--window-size=1500,520",
)
# Generous for a loaded 2-core machine; the page refreshes every REFRESH seconds.
WAIT = 30.0
REFRESH = 0.25


@pytest.fixture
def browser(tmp_path: pathlib.Path) -> Iterator[Any]:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(path)]
    if missing:
        pytest.fail(
            f"no browser for the status page test: {', '.join(missing)} missing; install "
            "Debian's packages: apt-get update && apt-get install -y chromium chromium-driver",
            pytrace=False,
        )
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail(
            "selenium is missing: pip install -e '.[dev]' (it is in the dev extra)", pytrace=False
        )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    profile = tmp_path / "chromium-profile"  # a fresh user-data-dir: nothing from before
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _rows(driver: Any) -> list[tuple[str, str, str]]:
    """Return (destination, status, breaker) per row of the page's table, top to bottom."""
    rows = driver.execute_script(
        "return Array.from(document.querySelectorAll('#destinations tbody tr[data-destination]'))"
        ".map(r => [r.dataset.destination, r.dataset.status,"
        " r.querySelector('[data-breaker]').dataset.breaker]);"
    )
    return [(str(name), str(status), str(breaker)) for name, status, breaker in rows]


def test_the_page_shows_the_failing_first_and_follows_recovery(
    browser: Any, tmp_path: pathlib.Path
) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    policy = meshlib.Policy(retry=None, breaker=meshlib.Breaker(consecutive=3, open_for=0.5))
    mesh = meshlib.Mesh(default=policy)
    with (
        FaultServer() as healthy,
        FaultServer() as failing,
        meshlib.admin.serve(mesh, port=0, refresh=REFRESH) as server,
        meshlib.wrap(httpx.Client(), mesh) as client,
    ):
        failing.default = Respond(503, b"down")
        for _ in range(5):
            assert client.get(healthy.url + "/orders").status_code == 200
        for _ in range(3):
            assert client.get(failing.url + "/orders").status_code == 503
        with pytest.raises(meshlib.CircuitOpen):
            client.get(failing.url + "/orders")  # the breaker is open: nothing is sent

        browser.get(server.url + "/")
        wait = WebDriverWait(browser, WAIT, poll_frequency=0.05)
        wait.until(lambda d: len(_rows(d)) == 2)
        assert _rows(browser) == [
            (failing.url, "failing", "open"),
            (healthy.url, "healthy", "closed"),
        ]
        # Read in one script: the live part is swapped in place every refresh, so an
        # element found in one call may be gone by the next.
        badge, colour, breaker = browser.execute_script(
            "const row = document.querySelector('#destinations tbody tr');"
            "const badge = row.querySelector('.badge');"
            "return [badge.textContent, getComputedStyle(badge).backgroundColor,"
            " row.querySelector('[data-breaker]').textContent];"
        )
        assert badge == "failing"  # the state in words...
        assert colour in ("rgb(180, 35, 24)", "rgba(180, 35, 24, 1)")  # ...and in colour: red
        assert breaker.startswith("open")
        screenshot = tmp_path / "status-page.png"
        assert browser.save_screenshot(str(screenshot))
        print(f"status page screenshot: {screenshot}")

        # A reload would lose this mark: the page must update itself in place.
        browser.execute_script("window.meshlibMark = 'no reload';")
        failing.default = Respond(200, b"ok")  # the upstream recovers
        # Real requests drive the breaker: once open_for is over, a probe closes it.
        wait.until(lambda d: _probe(client, failing.url) == 200)

        wait.until(lambda d: {r[0]: r[2] for r in _rows(d)}[failing.url] == "closed")
        assert browser.execute_script("return window.meshlibMark;") == "no reload"
        assert {row[2] for row in _rows(browser)} == {"closed"}
        assert browser.execute_script("return document.getElementById('stale').hidden;")
        recovered = tmp_path / "status-page-recovered.png"
        assert browser.save_screenshot(str(recovered))
        print(f"status page screenshot after recovery: {recovered}")


def _probe(client: httpx.Client, url: str) -> int:
    with contextlib.suppress(meshlib.CircuitOpen):
        return client.get(url + "/orders").status_code
    return 0
