"""`tokenhub demo` keeps its data in the state folder and its last lines say how
to open the dashboard on it; `tokenhub up` there then starts on that data, on
the demo's clock: the API, the CLI and every dashboard page show the demo's
figures to the last digit."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Final

import httpx

from tests.e2e.test_up import START_TIMEOUT_S, _environment, _start_up, _stop_up, _tokenhub, _wait_for
from tests.integration.test_dashboard import _console_errors, _open, _shot, _table, chromium, chromium_installed

EVENTS: Final = 200
"""A small day: every business unit the demo prints has figures, in a fraction of the default day's time."""
DEMO_TIMEOUT_S: Final = 300
DEMO_MONTH: Final = "2026-03"
PAGES: Final = ("overview", "flows", "bu/cainiao", "month-end", "audit", "operations")


def _demo(cwd: Path) -> str:
    result = subprocess.run([sys.executable, "-m", "tokenhub.cli.main", "demo", "--events", str(EVENTS)], cwd=cwd,
                            env=_environment(), capture_output=True, text=True, timeout=DEMO_TIMEOUT_S)
    assert result.returncode == 0, f"tokenhub demo failed: {result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def _api_ready(url: str) -> int:
    try:
        return httpx.get(f"{url}/readyz", timeout=5).status_code
    except httpx.TransportError:
        return 0


def test_tokenhub_up_after_the_demo_shows_the_demos_figures(tmp_path: Path) -> None:
    printed = _demo(tmp_path)
    assert printed.startswith("the demo keeps its data in .tokenhub, for tokenhub up to start on.\n")
    # cainiao pays only for itself: the demo recomputes its spend and prints the ledger's to 12 places.
    spend = re.search(r"^ledger: +(\d+\.\d{12}) CNY$", printed, re.MULTILINE).group(1)
    invoice_total = re.search(rf"^cainiao +{DEMO_MONTH} .* issued +\d+ +([\d,]+\.\d\d)$", printed, re.MULTILINE).group(1)
    last_lines = printed[printed.index("everything stopped."):]
    assert "The demo's data stays in .tokenhub; to open the dashboard on it:\n  tokenhub up " in last_lines
    assert "/dashboard/" in last_lines
    key = re.search(r"sign in with this finance API key \(\w+, shown once\): (thapi_\S+)$", last_lines, re.MULTILINE).group(1)

    up = _start_up(tmp_path)
    try:
        banner = _wait_for("the banner to name the dashboard", lambda: (tmp_path / "up.log").read_text(),
                           lambda text: "  dashboard http://" in text, START_TIMEOUT_S)
        url = re.search(r"  dashboard (http://127\.0\.0\.1:\d+)/dashboard/", banner).group(1)
        assert "  clock     2026-03-15T00:05:00+08:00, fixed: the data is the demo's" in banner
        _wait_for("the API to be ready", lambda: _api_ready(url), lambda status: status == 200, START_TIMEOUT_S)
        headers = {"authorization": f"Bearer {key}"}
        assert httpx.get(f"{url}/v1/me", headers=headers, timeout=10).json()["period"] == DEMO_MONTH
        balances = httpx.get(f"{url}/v1/balances", params={"limit": 100}, headers=headers, timeout=10).json()["items"]
        assert {row["bu"]: row["spend"] for row in balances}["cainiao"] == spend
        invoices = httpx.get(f"{url}/v1/invoices", params={"payer": "cainiao"}, headers=headers, timeout=10).json()["items"]
        # The demo prints the total to the cent it is rounded to; the API to 12 places.
        assert [(invoice["period"], Decimal(invoice["total"])) for invoice in invoices] == [
            (DEMO_MONTH, Decimal(invoice_total.replace(",", "")))]
        # The commands in another terminal find the stack, and its clock, through stack.env.
        cli = json.loads(_tokenhub(tmp_path, "balance", "--bu", "cainiao", "--json").stdout)
        assert [row["spend"] for row in cli] == [spend]
        if chromium_installed():
            _pages_show_the_demo(url, key, spend, invoices[0]["total"])
    finally:
        assert _stop_up(up) == []


def _pages_show_the_demo(url: str, key: str, spend: str, invoice_total: str) -> None:
    from selenium.webdriver.common.by import By

    with chromium() as browser:
        for page in PAGES:
            _open(browser, url, key, page)
            _shot(browser, f"demo-{page.split('/')[0]}")
            assert _console_errors(browser) == [], page
            text = browser.find_element(By.ID, "page").text
            if page == "overview":
                assert DEMO_MONTH in text
                assert {row[0]: row[2] for row in _table(browser, "balances")}["cainiao"] == spend
            if page == "bu/cainiao":
                assert browser.find_element(By.CSS_SELECTOR, '[data-figure="spend"]').text == spend
            if page == "month-end":
                assert f"{DEMO_MONTH} cainiao 1 issued {invoice_total}" in text
            if page == "audit":
                # The demo's own verify and replay, kept with its data.
                assert "verify all finance-ops" in text and "replay all finance-ops" in text
