"""The dashboard in headless Chromium against a real `loa api` process: sign in with a key, see
the campaign list, open a campaign, pause it (a sender), read-only for an operator, Vietnamese and
English labels, the vendored chart; screenshots are saved under test-artifacts/."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from accounts.models import Role
from loa.settings import Settings
from loa.stack import free_port, wait_port
from tests.conftest import ROOT, Procs, unavailable, wait_for
from tests.factories import make_key, sms_campaign

pytestmark = pytest.mark.slow

ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


@pytest.fixture
def server(settings: Settings, procs: Procs, redis_client: Any) -> str:
    port = free_port()
    procs.start(settings, "api", "--port", str(port), name="api")
    if not wait_port(port, 90):
        raise AssertionError("the API process did not open its port:\n" + procs.logs())
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    if not CHROMIUM or not DRIVER:
        unavailable("chromium and chromedriver (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,1000",
        f"--user-data-dir={tmp_path / 'chromium'}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def running_campaign(base: str, key: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
        campaign = client.post("/v1/campaigns", json=sms_campaign(name="Tổng điều tra 2026 – đợt 1")).json()
        people = [
            {"to": f"09{6 + i % 3}1{i:06d}", "fields": {"ten": f"Người {i}", "tinh": ["Hà Nội", "Huế"][i % 2]}}
            for i in range(40)
        ]
        assert client.post(f"/v1/campaigns/{campaign['id']}/recipients", json={"recipients": people}).status_code == 200
        assert client.post(f"/v1/campaigns/{campaign['id']}/launch").json()["status"] == "running"
        return campaign


def sign_in(driver: Any, base: str, key: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(base + "/")
    wait_for(lambda: driver.find_element(By.ID, "key").is_displayed(), 20, what="the sign-in form")
    driver.find_element(By.ID, "key").send_keys(key)
    driver.find_element(By.ID, "signin").click()


def text_of(driver: Any, css: str) -> str:
    from selenium.webdriver.common.by import By

    elements = driver.find_elements(By.CSS_SELECTOR, css)
    return str(elements[0].text) if elements else ""


def test_sign_in_list_open_and_pause_a_campaign(server: str, browser: Any, db: Engine) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    sender = make_key(db, Role.SENDER)
    campaign = running_campaign(server, sender)

    # A wrong key is refused.
    sign_in(browser, server, "loa_not-a-key")
    wait_for(lambda: text_of(browser, "#signin-error"), 20, what="the sign-in error")

    sign_in(browser, server, sender)
    row = f"#campaigns tr[data-id='{campaign['id']}']"
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, row), 20, what="the campaign in the list")
    assert "Tổng điều tra 2026 – đợt 1" in text_of(browser, row)
    assert "Đang gửi" in text_of(browser, row)  # Vietnamese labels by default
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "dashboard-list.png"))

    browser.find_element(By.CSS_SELECTOR, row + " a").click()
    wait_for(lambda: text_of(browser, "#campaign-name") == campaign["name"], 20, what="the campaign page")
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#status-table tr[data-status='queued']"), 20)
    assert "40" in text_of(browser, "#status-table tr[data-status='queued']")
    assert "Viettel" in text_of(browser, "#carrier-table")
    assert browser.find_elements(By.CSS_SELECTOR, "#chart .uplot"), "the chart library did not draw"

    browser.find_element(By.ID, "btn-pause").click()
    wait_for(
        lambda: browser.find_element(By.ID, "campaign-status").get_attribute("data-status") == "paused",
        20,
        what="the campaign paused",
    )
    assert browser.find_element(By.ID, "btn-resume").is_displayed()
    with httpx.Client(base_url=server, headers={"Authorization": f"Bearer {sender}"}) as client:
        assert client.get(f"/v1/campaigns/{campaign['id']}").json()["status"] == "paused"

    Select(browser.find_element(By.ID, "lang")).select_by_value("en")
    wait_for(lambda: text_of(browser, "#campaign-status") == "Paused", 20, what="English labels")
    assert text_of(browser, "#btn-resume") == "Resume"
    browser.save_screenshot(str(ARTIFACTS / "dashboard-campaign.png"))
    assert (ARTIFACTS / "dashboard-campaign.png").stat().st_size > 10_000


def test_an_operator_sees_the_campaign_read_only(server: str, browser: Any, db: Engine) -> None:
    from selenium.webdriver.common.by import By

    campaign = running_campaign(server, make_key(db, Role.SENDER))
    sign_in(browser, server, make_key(db, Role.OPERATOR))
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#campaigns tbody tr"), 20, what="the list")
    browser.get(f"{server}/#/campaigns/{campaign['id']}")
    wait_for(lambda: text_of(browser, "#campaign-name") == campaign["name"], 20, what="the campaign page")
    assert browser.find_element(By.ID, "readonly").is_displayed()
    for button in ("btn-pause", "btn-resume", "btn-cancel"):
        assert not browser.find_element(By.ID, button).is_displayed(), button


def test_the_page_needs_no_outside_resources(server: str) -> None:
    page = httpx.get(server + "/").text
    assert "https://" not in page
    assert "http://" not in page
    for asset in ("/static/vendor/uplot/uPlot.iife.min.js", "/static/app.js", "/static/i18n.js", "/static/app.css"):
        assert httpx.get(server + asset).status_code == 200, asset
    csp = httpx.get(server + "/").headers["content-security-policy"]
    assert "script-src 'self'" in csp
