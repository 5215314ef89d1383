"""The security console in a real browser (issue #14): headless Debian Chromium driven by
Selenium against `broker run` as a process of its own. An operator signs in, watches a
shared-login flag appear while a scripted rented-account attack runs, freezes the
employee, sees their next request refused (403 identity.suspended), looks the refusal
up by its decision id, and unfreezes them. The screenshots in docs/ (shown in the
README) are taken here.

Chromium and its driver are required, like Redis and PostgreSQL: the test fails, never
skips, without them (`apt-get install -y chromium chromium-driver`; .ci/run installs
them when missing).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from broker.demo.upstream import build_upstream_app
from tests.harness import REPO_ROOT, SECRET, TUESDAY_10_SHANGHAI, free_port, mint_token, start_broker_process

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOTS = REPO_ROOT / "docs" if os.environ.get("BROKER_UPDATE_SCREENSHOTS") == "1" else None
"""The README's console screenshots are refreshed only on request, so a test run leaves the checkout clean."""
CONSOLE_TOKEN = "browser-test-console-token-42"
OWN_LIST = "/api/branches/BR001/waybills?limit=3"
REAL_CLOCK_ENV = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "FAKETIME")}
"""The browser and its driver run on the real clock, as the broker process does."""


class UpstreamThread:
    """The demo's sample API on a loop of its own, so the test can block on the browser."""

    def __init__(self) -> None:
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="upstream", daemon=True)

    def __enter__(self) -> UpstreamThread:
        self._thread.start()
        while not self._ready.is_set():
            time.sleep(0.05)
        return self

    def __exit__(self, *_: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        while self._thread.is_alive():
            time.sleep(0.05)

    def _run(self) -> None:
        runner = web.AppRunner(build_upstream_app(waybill_count=1200))
        self._loop.run_until_complete(runner.setup())
        self._loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())
        self._loop.close()


def request(port: int, path: str, employee: str, address: str = "127.0.0.1") -> tuple[int, dict[str, Any]]:
    """One employee request to the proxy port from a loopback `address` of our choice."""
    token = mint_token(SECRET, employee, now=TUESDAY_10_SHANGHAI, ttl_seconds=3600)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(address, 0))
    try:
        connection.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        answer = connection.getresponse()
        return answer.status, json.loads(answer.read() or b"{}")
    finally:
        connection.close()


def until(check: Callable[[], Any], what: str, within: float = 20.0) -> Any:
    """Poll `check` until it is truthy; a page still loading (element absent or replaced) counts as not yet."""
    deadline = time.monotonic() + within
    while True:
        try:
            found = check()
        except (NoSuchElementException, StaleElementReferenceException):
            found = None
        if found:
            return found
        assert time.monotonic() < deadline, f"waited {within} s for {what}"
        time.sleep(0.1)


@pytest.fixture
def chromium() -> Iterator[WebDriver]:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not shutil.which(path)]
    if missing:
        pytest.fail(f"the browser tests need {', '.join(missing)}: apt-get install -y chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(argument)
    service = Service(CHROMEDRIVER, env=REAL_CLOCK_ENV)
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        try:
            driver.quit()
        finally:
            process = service.process
            if process is not None and process.poll() is None:  # the driver we started, by its pid
                process.kill()
                process.wait()


@pytest.fixture
def broker_process(tmp_path: Path) -> Iterator[tuple[int, int, Path]]:
    """`broker run` with the console on its admin port; shared logins are flagged, not
    frozen, so the freeze is the operator's click."""
    policies = tmp_path / "policies"
    shutil.copytree(REPO_ROOT / "policies", policies)
    signals = (policies / "signals.toml").read_text()
    (policies / "signals.toml").write_text(
        signals.replace('window = "5m"\naction = "freeze"', 'window = "5m"\naction = "flag"')
    )
    (tmp_path / "console.token").write_text(CONSOLE_TOKEN)
    port, admin, audit = free_port(), free_port(), tmp_path / "audit.log"
    with UpstreamThread() as upstream:
        config = tmp_path / "broker.toml"
        config.write_text(
            f"[server]\nport = {port}\nadmin_port = {admin}\ndrain_seconds = 0.0\n"
            f'[upstream]\nurl = "http://127.0.0.1:{upstream.port}"\n'
            f'[policy]\ndirectory = "{policies}"\nwatch = false\n[audit]\npath = "{audit}"\n'
            f'[console]\nenabled = true\ntoken_file = "{tmp_path / "console.token"}"\n'
            '[clock]\nstart = "2026-12-01T10:00:00+08:00"\n'
        )
        log = (tmp_path / "broker.out").open("wb")
        process = start_broker_process(config, {"BROKER_DEV_SECRET": SECRET}, output=log, wait_port=admin)
        try:
            yield port, admin, audit
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.close()


@pytest.mark.timeout(120)
def test_an_operator_sees_a_rented_login_and_freezes_it_in_the_browser(
    chromium: WebDriver, broker_process: tuple[int, int, Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    port, admin, audit = broker_process
    console = f"http://127.0.0.1:{admin}/-/console"
    browser = chromium
    shots = SCREENSHOTS or tmp_path_factory.mktemp("screenshots")

    browser.get(f"{console}/")
    assert browser.current_url == f"{console}/login"
    browser.find_element(By.ID, "credential").send_keys("wrong-token")
    browser.find_element(By.ID, "sign-in").click()
    problem = until(lambda: browser.find_elements(By.ID, "login-problem"), "the login refusal")[0]
    assert "neither the console token" in problem.text
    browser.find_element(By.ID, "credential").send_keys(CONSOLE_TOKEN)
    browser.save_screenshot(str(shots / "console-login.png"))
    browser.find_element(By.ID, "sign-in").click()
    until(lambda: browser.find_element(By.ID, "live-state").text == "live", "the live stream")

    # an honest morning: a courier and a trainee read their own branch, one strays
    for employee in ("e1001", "e1003", "e1001", "e1003"):
        assert request(port, OWN_LIST, employee)[0] == 200
    assert request(port, "/api/branches/BR002/waybills?limit=3", "e1003")[0] == 403
    until(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#live-table tbody tr")) >= 5, "live decisions")

    # the rented login: e1001's token used from two more addresses at once
    started = time.monotonic()
    for address in ("127.0.0.2", "127.0.0.3"):
        assert request(port, OWN_LIST, "e1001", address)[0] == 200  # flagged, not yet frozen
    # the flags panel is re-rendered (innerHTML) on every signal and every 5 s: read the card in one go, afresh
    flag_card = 'article.flag[data-employee="e1001"]'
    card_text, signal = until(
        lambda: [(c.text, c.get_attribute("data-signal")) for c in browser.find_elements(By.CSS_SELECTOR, flag_card)],
        "the flag card",
    )[0]
    flag_seconds = time.monotonic() - started
    assert signal == "shared_login" and "127.0.0.3" in card_text and "not frozen" in card_text, card_text
    until(lambda: "policy.other_branch" in browser.find_element(By.ID, "denials").text, "the denials panel")
    until(lambda: "e1001" in browser.find_element(By.ID, "top").text, "the top employees panel")
    browser.save_screenshot(str(shots / "console-flag.png"))

    def click_freeze() -> bool:
        browser.find_element(By.CSS_SELECTOR, f'{flag_card} button[data-action="freeze"]').click()
        return True

    until(click_freeze, "the freeze button")
    until(
        lambda: browser.find_elements(By.CSS_SELECTOR, 'article.flag[data-employee="e1001"] .state.frozen'),
        "the frozen state",
    )
    status, body = request(port, OWN_LIST, "e1001")
    assert status == 403 and body["reason"] == "identity.suspended", body
    assert request(port, OWN_LIST, "e1003")[0] == 200  # nobody else is affected

    browser.find_element(By.CSS_SELECTOR, 'article.flag[data-employee="e1001"] h3 a').click()
    until(lambda: "identity.suspended" in browser.find_element(By.ID, "timeline").text, "the refusal in the timeline")
    addresses = browser.find_element(By.ID, "address-table").text
    assert all(a in addresses for a in ("127.0.0.1", "127.0.0.2", "127.0.0.3"))
    browser.save_screenshot(str(shots / "console-employee.png"))

    browser.get(f"{console}/lookup")
    browser.find_element(By.ID, "decision-id").send_keys(body["decision_id"])
    browser.find_element(By.ID, "look-up").click()
    explanation = until(lambda: browser.find_elements(By.ID, "explanation"), "the explanation")[0].text
    assert "e1001" in explanation and "the login was frozen at the time" in browser.page_source
    browser.save_screenshot(str(shots / "console-lookup.png"))

    browser.get(f"{console}/employee/e1001")
    browser.find_element(By.CSS_SELECTOR, 'button[data-action="unfreeze"]').click()
    until(lambda: browser.find_elements(By.CSS_SELECTOR, 'button[data-action="freeze"]'), "the freeze button back")
    assert request(port, OWN_LIST, "e1001")[0] == 200

    def console_actions() -> list[tuple[str, str | None]]:
        events = [json.loads(line) for line in audit.read_text().splitlines()]
        return [(e["action"], e.get("employee")) for e in events if e.get("event") == "console"]

    # the audit writer is a background thread: the unfreeze answer can reach the browser before its line is on disk
    until(lambda: len(console_actions()) >= 4, "the console actions in the audit log", within=10.0)
    assert console_actions() == [("login_refused", None), ("login", None), ("freeze", "e1001"), ("unfreeze", "e1001")]
    assert flag_seconds < 10, f"the flag took {flag_seconds:.1f} s to show"
