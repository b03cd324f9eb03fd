"""The dashboard in a real browser (Debian's headless Chromium through Selenium):
each page loads without console errors, shows the API's figures to the last
digit, and a business unit's reader cannot reach another unit's page.
Screenshots of each page go to build/screenshots/."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio

from tests.integration.api_support import RunningApi, api  # noqa: F401 - a fixture
from tests.integration.support import World, emit, read_counters, wait_settled
from tokenhub.client.api import ApiClient, ApiError

pytestmark = pytest.mark.asyncio(loop_scope="session")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "build" / "screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
PAGE_WAIT_S = 30


def chromium_installed() -> bool:
    """Where it is not, CI fails (it installs it) and elsewhere the browser checks are skipped."""
    if Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists():
        return True
    if os.environ.get("CI"):
        raise AssertionError("Debian's chromium and chromium-driver must be installed (.ci/run installs them)")
    return False


def _browser_or_skip() -> None:
    if not chromium_installed():
        pytest.skip("no Chromium here: apt-get install chromium chromium-driver (CI installs them)")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    _browser_or_skip()
    with chromium() as driver:
        yield driver


@contextlib.contextmanager
def chromium() -> Iterator[object]:
    """Headless Chromium driven by Selenium, keeping the pages' console messages."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1800"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(PAGE_WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def world(backend, api: RunningApi) -> World:  # noqa: ANN001, F811
    world = World(backend.settings)
    await world.publish(["shop", "maps"])
    before = await read_counters(backend.settings)
    now = datetime.now(UTC)
    events = [world.usage("shop", index, 90_000 + index, 4_000, time=now - timedelta(minutes=15 + index), app="chat")
              for index in range(4)]
    events += [world.usage("maps", 50 + index, 30_000, 2_000, time=now - timedelta(minutes=10 + index), app="nav")
               for index in range(3)]
    await emit(backend.settings, events)
    await wait_settled(backend.settings, before, len(events))
    return world


def _open(driver, url: str, key: str, page: str) -> None:  # noqa: ANN001
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{url}/dashboard/#{page}")
    if driver.find_element(By.ID, "sign-in").is_displayed():
        driver.find_element(By.ID, "key").send_keys(key)
        driver.find_element(By.CSS_SELECTOR, "#sign-in-form button").click()
    name = page.split("/")[0]
    WebDriverWait(driver, PAGE_WAIT_S).until(expected_conditions.presence_of_element_located(
        (By.CSS_SELECTOR, f'#page[data-loaded="{name}"], #forbidden, #page .error')))
    errors = driver.find_elements(By.CSS_SELECTOR, "#page .error")
    assert not errors or errors[0].get_attribute("id") == "forbidden", (page, errors[0].text, driver.get_log("browser"))


def _shot(driver, name: str) -> None:  # noqa: ANN001
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))


def _console_errors(driver) -> list[str]:  # noqa: ANN001
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def _table(driver, table_id: str) -> list[list[str]]:  # noqa: ANN001
    from selenium.webdriver.common.by import By

    return [[cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
            for row in driver.find_elements(By.CSS_SELECTOR, f"#{table_id} tbody tr")]


async def test_each_page_shows_the_apis_figures_without_console_errors(browser, world: World, api: RunningApi) -> None:  # noqa: ANN001, F811
    key = await api.key("auditor", owner="dashboard-auditor")
    async with ApiClient(api.url, key) as client:
        balances = {row["bu"]: row for row in await client.all("/v1/balances")}
        me = await client.me()
        settlement = await client.settlement(me["period"])
    for page in ("overview", "flows", f"bu/{world.bu('shop')}", "month-end", "audit", "operations"):
        _open(browser, api.url, key, page)
        _shot(browser, page.split("/")[0])
        assert _console_errors(browser) == [], page
        if page == "overview":
            shown = {row[0]: row for row in _table(browser, "balances")}
            for bu in (world.bu("shop"), world.bu("maps"), world.provider):
                expected = balances[bu]
                assert shown[bu][2:5] == [expected["spend"], expected["revenue"], expected["net"]]
        if page == "flows":
            async with ApiClient(api.url, key) as client:
                spend = await client.spend(world.bu("shop"))
            assert [world.bu("shop"), world.bu("shop"), spend["by"]["consumer"][0]["amount"]] in _table(browser, "payer-consumer")
            shown = _table(browser, "matrix")
            assert [row for row in shown if row[0] in (world.bu("shop"), world.bu("maps"))] == [
                [flow["payer_bu"], flow["provider_bu"], flow["amount"]] for flow in settlement["matrix"]
                if flow["payer_bu"] in (world.bu("shop"), world.bu("maps"))]
        if page.startswith("bu/"):
            from selenium.webdriver.common.by import By

            assert browser.find_element(By.CSS_SELECTOR, '[data-figure="spend"]').text == balances[world.bu("shop")]["spend"]


async def test_a_business_units_reader_sees_only_its_own_unit(browser, world: World, api: RunningApi) -> None:  # noqa: ANN001, F811
    from selenium.webdriver.common.by import By

    browser.get(f"{api.url}/dashboard/")
    browser.execute_script("sessionStorage.clear()")  # signed out: the next page asks for a key
    browser.get("about:blank")
    browser.get_log("browser")  # what the previous test's pages logged is theirs
    shop = world.bu("shop")
    key = await api.key("bu-reader", shop)
    async with ApiClient(api.url, key) as client:
        balance = await client.balance(shop)
    _open(browser, api.url, key, f"bu/{shop}")
    assert browser.find_element(By.CSS_SELECTOR, '[data-figure="spend"]').text == balance["spend"]
    assert world.bu("maps") not in browser.find_element(By.ID, "page").text
    _shot(browser, "bu-reader")
    for page in (f"bu/{world.bu('maps')}", "overview", "audit"):
        browser.execute_script(f"location.hash = '{page}'")
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(browser, PAGE_WAIT_S).until(lambda driver: driver.find_elements(By.ID, "forbidden"))
        assert world.bu("maps") not in browser.find_element(By.ID, "page").text
    assert not browser.find_element(By.CSS_SELECTOR, 'nav a[data-page="overview"]').is_displayed()
    assert _console_errors(browser) == []


async def _dead_letters_sent(settings, records: list[tuple[str, str, int]]) -> None:  # noqa: ANN001
    """Dead letters as the services' runtime writes them: the record's bytes,
    its origin and reason in `tokenhub_*` headers."""
    from tokenhub.contracts.topics import DEAD_LETTER
    from tokenhub.services.common.kafka import create_producer

    producer = create_producer(settings.bootstrap_servers, "dashboard-tests", settings)
    await producer.start()
    try:
        for service, topic, offset in records:
            headers = [(f"tokenhub_{name}", str(value).encode()) for name, value in (
                ("service", service), ("topic", topic), ("partition", 0), ("offset", offset),
                ("reason", f"ValueError('poison at {offset}')"), ("dead_lettered_at", "2026-03-14T10:00:00+08:00"))]
            await (await producer.send(DEAD_LETTER.name, b"x" * 7, key=topic.encode(), headers=headers))
    finally:
        await producer.stop()


async def test_operations_shows_dead_letters_and_each_services_lag(browser, backend, world: World, api: RunningApi) -> None:  # noqa: ANN001, F811
    from selenium.webdriver.common.by import By

    from tokenhub.infra.pipeline import wait_until

    key = await api.key("finance", owner="dashboard-operations")
    async with ApiClient(api.url, key) as client:
        before = await client.get("/v1/operations/deadletters")
        await _dead_letters_sent(backend.settings, [("pricing", "usage.metered", 41), ("pricing", "usage.metered", 42),
                                                    ("ledger", "tokens.priced", 7)])
        after = await client.get("/v1/operations/deadletters", limit=2)
        assert after["total"] == before["total"] + 3
        assert after["by_service"]["pricing"] == before["by_service"].get("pricing", 0) + 2
        assert after["by_service"]["ledger"] == before["by_service"].get("ledger", 0) + 1
        assert [(row["service"], row["source_topic"], row["source_offset"], row["value_bytes"]) for row in after["items"]] == [
            ("pricing", "usage.metered", 42, 7), ("ledger", "tokens.priced", 7, 7)]
        assert after["items"][-1]["reason"] == "ValueError('poison at 7')"

        async def caught_up() -> bool:
            lag = await client.get("/v1/operations/lag")
            return lag["problems"] == [] and all(row["records_behind"] == 0 and row["outbox_events"] == 0
                                                 for row in lag["services"])
        await wait_until(caught_up, 60, "every service to have handled every record (lag 0)")
        lag = await client.get("/v1/operations/lag")
        assert [row["service"] for row in lag["services"]] == ["metering", "pricing", "ledger", "invoicing"]
        reader = await api.key("bu-reader", world.bu("shop"))
    async with ApiClient(api.url, reader) as client:
        for path in ("/v1/operations/lag", "/v1/operations/deadletters"):
            with pytest.raises(ApiError) as refused:
                await client.get(path)
            assert refused.value.status == 403, path
    browser.get(f"{api.url}/dashboard/")
    browser.execute_script("sessionStorage.clear()")
    browser.get("about:blank")
    browser.get_log("browser")
    _open(browser, api.url, key, "operations")
    _shot(browser, "operations")
    assert _console_errors(browser) == []
    assert browser.find_element(By.ID, "deadletter-total").text == f"Dead letters: {after['total']}"
    assert _table(browser, "deadletter-counts") == [[service, str(count)] for service, count in after["by_service"].items()]
    assert [row[:2] for row in _table(browser, "lag")] == [[row["service"], "0"] for row in lag["services"]]
