"""Webhooks against a real HTTP receiver started here: a budget set through the
API raises alerts on the real stack, and each subscription gets its own
events, signed, tried again after the receiver failed, recorded with every
attempt's outcome, and sent again on request."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest

from tests.integration.api_support import RunningApi, api  # noqa: F401 - a fixture
from tests.integration.support import World, emit, read_counters, wait_settled
from tokenhub.client.api import ApiClient, verify_signature
from tokenhub.infra.pipeline import wait_until

pytestmark = pytest.mark.asyncio(loop_scope="session")
WAIT_S = 60.0


class Receiver:
    """Answers 500 to the first delivery of each event, 200 after; keeps every request."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the standard library's name
                body = self.rfile.read(int(self.headers["content-length"]))
                with receiver.lock:
                    first = not any(headers["tokenhub-event-id"] == self.headers["tokenhub-event-id"]
                                    for headers, _ in receiver.requests)
                    receiver.requests.append(({name.lower(): value for name, value in self.headers.items()}, body))
                self.send_response(500 if first else 200)
                self.end_headers()
                self.wfile.write(b"not now" if first else b"ok")

            def log_message(self, *arguments: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def of(self, event_id: str) -> list[tuple[dict[str, str], bytes]]:
        with self.lock:
            return [request for request in self.requests if request[0]["tokenhub-event-id"] == event_id]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


async def test_budget_alerts_reach_the_subscribers_they_concern_signed_retried_and_resent(backend, api: RunningApi) -> None:  # noqa: ANN001, F811
    world = World(backend.settings)
    await world.publish(["shop", "maps"])
    shop, maps = world.bu("shop"), world.bu("maps")
    before = await read_counters(backend.settings)
    now = datetime.now(UTC)
    await emit(backend.settings, [world.usage("shop", index, 200_000, 10_000, time=now - timedelta(minutes=5 + index))
                                  for index in range(3)])
    await wait_settled(backend.settings, before, 3)
    receiver = Receiver()
    try:
        async with ApiClient(api.url, await api.key("bu-reader", shop)) as shop_reader, \
                ApiClient(api.url, await api.key("bu-reader", maps)) as maps_reader, \
                ApiClient(api.url, await api.key("admin", owner="budget-admin")) as admin:
            kinds = ["budget.threshold_crossed", "budget.quota_exhausted"]
            shop_hook = await shop_reader.post("/v1/webhooks", {"url": receiver.url, "kinds": kinds})
            maps_hook = await maps_reader.post("/v1/webhooks", {"url": receiver.url, "kinds": kinds})
            assert (shop_hook["bu"], maps_hook["bu"]) == (shop, maps) and shop_hook["secret"].startswith("whsec_")
            assert "secret" not in await shop_reader.get(f"/v1/webhooks/{shop_hook['webhook_id']}")
            # 3 x (200,000 x 2.4 + 10,000 x 9.6) / 1e6 = 1.728 spent: past 50 % of 2 and the hard limit of 1.5.
            await admin.post("/v1/budgets", {"payer_bu": shop, "amount": "2", "hard_limit": "1.5",
                                             "thresholds_percent": ["50", "100"], "reason": "webhook test"})

            deliveries: list[dict[str, Any]] = []

            async def delivered() -> bool:
                nonlocal deliveries
                deliveries = await shop_reader.all(f"/v1/webhooks/{shop_hook['webhook_id']}/deliveries")
                return len(deliveries) == 2 and all(row["status"] == "delivered" for row in deliveries)
            await wait_until(delivered, WAIT_S, "both alerts to be delivered after one failure each")

            assert sorted(row["kind"] for row in deliveries) == sorted(kinds)
            assert [row["attempts"] for row in deliveries] == [2, 2]
            for row in deliveries:
                received = receiver.of(row["event_id"])
                assert len(received) == 2 and received[0][1] == received[1][1]  # the same body, tried again
                for headers, body in received:
                    assert verify_signature(shop_hook["secret"], headers["tokenhub-signature"], body)
                    assert not verify_signature(maps_hook["secret"], headers["tokenhub-signature"], body)
                    assert headers["tokenhub-event-type"] == row["kind"]
                event = orjson.loads(received[0][1])
                assert (event["id"], event["type"], event["data"]["payer_bu"]) == (row["event_id"], row["kind"], shop)
                detail = await shop_reader.get(f"/v1/webhooks/{shop_hook['webhook_id']}/deliveries/{row['delivery_id']}")
                assert [(attempt["attempt"], attempt["status_code"]) for attempt in detail["attempt_log"]] == [(1, 500), (2, 200)]
                assert detail["attempt_log"][0]["error"] == "HTTP 500: not now" and detail["body"] == event
            exhausted = next(orjson.loads(receiver.of(row["event_id"])[0][1]) for row in deliveries
                             if row["kind"] == "budget.quota_exhausted")
            assert (exhausted["data"]["hard_limit"], exhausted["data"]["spent"]) == ("1.500000000000", "1.728000000000")

            # Nothing of shop's reached maps' subscription; maps may not read shop's.
            assert await maps_reader.all(f"/v1/webhooks/{maps_hook['webhook_id']}/deliveries") == []
            with pytest.raises(Exception) as hidden:
                await maps_reader.get(f"/v1/webhooks/{shop_hook['webhook_id']}/deliveries")
            assert getattr(hidden.value, "status", None) == 404

            first = deliveries[0]
            await shop_reader.post(f"/v1/webhooks/{shop_hook['webhook_id']}/deliveries/{first['delivery_id']}/resend", {})

            async def resent() -> bool:
                return len(receiver.of(first["event_id"])) == 3
            await wait_until(resent, WAIT_S, "the delivery to be sent again")
            again = receiver.of(first["event_id"])[2]
            assert again[1] == receiver.of(first["event_id"])[0][1]
            assert verify_signature(shop_hook["secret"], again[0]["tokenhub-signature"], again[1])

            detail = await shop_reader.get(f"/v1/webhooks/{shop_hook['webhook_id']}/deliveries/{first['delivery_id']}")
            assert (detail["status"], detail["attempts"], [a["status_code"] for a in detail["attempt_log"]]) == (
                "delivered", 3, [500, 200, 200])
            await shop_reader.request("DELETE", f"/v1/webhooks/{shop_hook['webhook_id']}")
            assert (await shop_reader.get(f"/v1/webhooks/{shop_hook['webhook_id']}"))["disabled_at"] is not None
    finally:
        receiver.stop()
