"""`tokenhub up` serves the API beside the services and names it in its banner;
a key made with `tokenhub apikey create` reads through it at once."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx

from tests.e2e.test_up import START_TIMEOUT_S, _start_up, _stop_up, _tokenhub, _wait_for


def test_tokenhub_up_serves_the_api_named_in_its_banner(tmp_path: Path) -> None:
    up = _start_up(tmp_path)
    try:
        banner = _wait_for("the banner to name the API", lambda: (tmp_path / "up.log").read_text(),
                           lambda text: "  api       http://" in text, START_TIMEOUT_S)
        url = re.search(r"  api       (http://127\.0\.0\.1:\d+)/docs", banner).group(1)

        def ready() -> int:
            try:
                return httpx.get(f"{url}/readyz", timeout=5).status_code
            except httpx.TransportError:
                return 0
        _wait_for("the API to be ready", ready, lambda status: status == 200, START_TIMEOUT_S)
        created = json.loads(_tokenhub(tmp_path, "apikey", "create", "--role", "finance", "--owner", "ops",
                                       "--reason", "e2e", "--json").stdout)
        response = httpx.get(f"{url}/v1/me", headers={"authorization": f"Bearer {created['key']}"}, timeout=10)
        me = response.json()
        assert {name: me[name] for name in ("key_id", "role", "bu", "owner", "currency")} == {
            "key_id": created["key_id"], "role": "finance", "bu": None, "owner": "ops", "currency": "CNY"}
        assert f"  dashboard {url}/dashboard/" in banner
        listed = json.loads(_tokenhub(tmp_path, "apikey", "list", "--json").stdout)
        assert [(row["key_id"], row["role"], row["owner"], row["revoked_at"]) for row in listed] == [
            (created["key_id"], "finance", "ops", None)]
        assert "thapi_" not in json.dumps(listed)  # keys are shown once, never listed
    finally:
        assert _stop_up(up) == []
