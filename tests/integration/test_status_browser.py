"""The status page in a real headless Chromium: see an event, replay a dead letter, see it work.

Debian's ``chromium`` and ``chromium-driver`` (``python3 dev.py test`` installs them when it
can), driven by Selenium against the session's real stack.
"""

from __future__ import annotations

import base64
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.integration.drive import DEAL, announce, as_held_by, held, person_creates
from worker.sandbox.stack import ADMIN_PASSWORD, ADMIN_USER, Stack, wait_for
from worker.store.deadletters import DeadLetters

pytestmark = [pytest.mark.integration, pytest.mark.browser]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",  # containers give /dev/shm a few MB: Chromium would crash
)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip(
            "needs Debian's chromium and chromium-driver (python3 dev.py test installs them)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        # Basic auth on every request of this browser, the Replay form's POST included.
        token = base64.b64encode(f"{ADMIN_USER}:{ADMIN_PASSWORD}".encode()).decode()
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd(
            "Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}}
        )
        yield driver
    finally:
        driver.quit()


def test_status_page_replays_a_dead_letter_in_a_browser(live: Stack, browser: WebDriver) -> None:
    client = redis.Redis.from_url(live.redis.url, decode_responses=True)
    # given Salescaling refusing creates for now (a permanent 400), and a deal from SIRO
    live.sims["salescaling"].faults.add(
        "error", status=400, times=5, methods=("POST",), path_contains="/opportunities"
    )
    siro_id = person_creates(live, "siro")
    assert announce(live, "siro", siro_id) == 202
    # which reached the others but became a dead letter for Salescaling
    (letter,) = wait_for(lambda: DeadLetters(client).list(), 30, "no dead letter")
    assert (letter.vendor, letter.kind) == ("salescaling", "push")
    assert held(live, "salescaling") == []
    live.sims["salescaling"].faults.clear()  # the vendor is fixed

    # when an operator opens the status page
    browser.get(f"{live.web_url}/status")
    assert browser.title == "oppsync status"
    # then they see the event from SIRO with its outcome, and the dead letter
    events = browser.find_elements(By.CSS_SELECTOR, "tr.event")
    assert any(
        "siro" in row.text and row.find_element(By.CSS_SELECTOR, ".outcome").text == "applied"
        for row in events
    ), [row.text for row in events]
    row = browser.find_element(By.ID, f"letter-{letter.id}")
    assert "salescaling" in row.text and letter.reason in row.text

    # when they press Replay
    row.find_element(By.CSS_SELECTOR, "button[name=replay]").click()
    # then the page says it was put back on its queue
    notice = wait_for(lambda: browser.find_elements(By.ID, "notice"), 10, "no notice after Replay")[
        0
    ]
    assert letter.id in notice.text and "put back" in notice.text
    # and Salescaling now holds the deal, and the letter is gone
    wait_for(
        lambda: len(held(live, "salescaling")) == 1, 30, "the replay did not reach Salescaling"
    )
    (record,) = held(live, "salescaling")
    assert record.name == as_held_by("siro", DEAL).name
    wait_for(lambda: not DeadLetters(client).list(), 10, "the dead letter is still there")
    browser.get(f"{live.web_url}/status")
    assert not browser.find_elements(By.ID, f"letter-{letter.id}")
    assert "No dead letters." in browser.find_element(By.TAG_NAME, "body").text

    # and its last success is the replayed write (push results reach the page within a second)
    def salescaling_row() -> str | None:
        browser.get(f"{live.web_url}/status")
        text = browser.find_element(By.ID, "vendor-salescaling").text
        return text if " s ago" in text else None

    wait_for(salescaling_row, 10, "the replayed write is not shown as a success")
